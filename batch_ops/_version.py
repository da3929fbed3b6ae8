"""The project's version and documentation site: one place for both (pyproject.toml reads the version)."""

__version__ = "0.2.0"
#: The documentation site: the distribution's Documentation URL, the Airflow provider's link, the
#: Prefect block's documentation and logo.
DOCS_URL = "https://openai-batch-ops.readthedocs.io/en/latest/"

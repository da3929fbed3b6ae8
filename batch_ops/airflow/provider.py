"""Provider registration: Airflow finds batch_ops through the ``apache_airflow_provider`` entry point.

This module imports nothing from Airflow: the providers manager reads it while Airflow itself
is still starting.
"""

from __future__ import annotations

from typing import Any

from batch_ops._version import DOCS_URL, __version__

__all__ = ["CONN_TYPE", "DOCS_URL", "HOWTO_PAGES", "LEGACY_CONN_TYPE", "get_provider_info"]

#: The connection type. No ``_`` in it: Airflow logs a warning (RFC 3986 schemes have none)
#: every time it turns a connection whose type has one into a URI, which it does on each fetch.
CONN_TYPE = "openaibatch"
#: The type name before 0.2; connections saved with it keep working (and keep that warning).
LEGACY_CONN_TYPE = "openai_batch"

#: ``docs/howto/<page>.md``: one how-to guide per operator.
HOWTO_PAGES = ("operator", "sensor", "job-operator", "orphan-sweep")


def get_provider_info() -> dict[str, Any]:
    """What ``airflow providers list`` and the connection form know about batch_ops.

    Examples:
        >>> info = get_provider_info()
        >>> info["package-name"], info["connection-types"][0]["connection-type"]
        ('openai-batch-ops', 'openaibatch')
    """
    return {
        "package-name": "openai-batch-ops",
        "name": "batch_ops (OpenAI Batch API)",
        "description": "Run the OpenAI Batch API from Airflow: a deferrable operator, a sensor and a trigger "
        "that never block the triggerer, with retries that re-attach instead of billing twice.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "OpenAI Batch API (batch_ops)",
                "external-doc-url": "https://platform.openai.com/docs/guides/batch",
                # Paths in this project's docs site (DOCS_URL); one how-to per operator.
                "how-to-guide": [f"/docs/howto/{page}.md" for page in HOWTO_PAGES],
                "logo": "/docs/img/logo.svg",
                "tags": ["ai", "openai", "batch"],
            }
        ],
        "hooks": [
            {"integration-name": "OpenAI Batch API (batch_ops)", "python-modules": ["batch_ops.airflow.hooks"]}
        ],
        "operators": [
            {
                "integration-name": "OpenAI Batch API (batch_ops)",
                "python-modules": ["batch_ops.airflow.operators", "batch_ops.airflow.jobs"],
            }
        ],
        "sensors": [
            {"integration-name": "OpenAI Batch API (batch_ops)", "python-modules": ["batch_ops.airflow.sensors"]}
        ],
        "triggers": [
            {
                "integration-name": "OpenAI Batch API (batch_ops)",
                "python-modules": [
                    "batch_ops.airflow.triggers", "batch_ops.airflow.jobs", "batch_ops.airflow.event_triggers",
                ],
            }
        ],
        "extra-links": ["batch_ops.airflow.links.OpenAIBatchLink"],
        "connection-types": [
            _connection_type(CONN_TYPE, "OpenAI Batch (batch_ops)"),
            _connection_type(LEGACY_CONN_TYPE, "OpenAI Batch (batch_ops, old type name)",
                             hook="LegacyOpenAIBatchHook"),
        ],
    }


def _connection_type(conn_type: str, hook_name: str, *, hook: str = "OpenAIBatchHook") -> dict[str, Any]:
    return {
        "hook-class-name": f"batch_ops.airflow.hooks.{hook}",
        "hook-name": hook_name,
        "connection-type": conn_type,
        # Declarative form (Airflow >= 3.2); older versions ask the hook's methods.
        "conn-fields": {
            "organization": {"label": "Organization", "schema": {"type": ["string", "null"]}},
            "project": {"label": "Project", "schema": {"type": ["string", "null"]}},
            "api_version": {
                "label": "Azure api_version",
                "description": "Set for Azure OpenAI (e.g. 2024-10-21); leave empty for OpenAI.",
                "schema": {"type": ["string", "null"]},
            },
        },
        "ui-field-behaviour": {
            "hidden-fields": ["schema", "port", "login"],
            "relabeling": {"host": "Base URL", "password": "API Key"},
            "placeholders": {"host": "https://api.openai.com/v1"},
        },
    }

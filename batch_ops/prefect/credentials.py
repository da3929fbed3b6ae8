"""``OpenAIBatchCredentials``: where the Batch API is and how to authenticate, as a Prefect Block.

Register the block type with ``prefect block register -m batch_ops.prefect``; then create a
document in the UI or in code and load it by name in flows.

Tasks take ``credentials=None`` to mean "read the environment" (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``, ``OPENAI_API_VERSION``), exactly
as ``BatchClient()`` does; :func:`resolve_settings` is that one rule.
"""

from collections.abc import Mapping
from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr

from batch_ops import DOCS_URL
from batch_ops.client import AsyncBatchClient, BatchClient
from batch_ops.settings import SECRET_FIELDS, ClientSettings, setting_fields

__all__ = ["OpenAIBatchCredentials", "resolve_settings", "settings_from_parameters"]


def _setting(name: str, **overrides: Any) -> Any:
    """The block field of a ``ClientSettings`` field: its title, help and bounds; empty (``None``) means
    "as the environment or the default says". The annotation stays written out in the class, where
    Prefect and mypy read it; tests/prefect/test_settings_fields.py checks it against ``ClientSettings``."""
    field = setting_fields()[name]
    return Field(**{"default": None, "title": field.title, "description": field.help, **field.limits, **overrides})


class OpenAIBatchCredentials(CredentialsBlock):
    """Credentials and endpoint of an OpenAI-compatible Batch API (OpenAI, Azure OpenAI, local).

    The key is required; the other fields are those of :class:`~batch_ops.ClientSettings`, and when
    left empty they are read from the environment like ``BatchClient()`` does (``OPENAI_BASE_URL``,
    ``OPENAI_ORG_ID``, ...) or keep their defaults. The key and the webhook events token are
    ``SecretStr``: Prefect stores them encrypted, and they are obfuscated in the UI, in flow-run
    parameters, in ``repr`` and in logs. Pass a saved block to a deployment by reference
    (``{"$ref": {"block_document_id": ...}}``, what the UI sends).

    Examples:
        Save once, then load by name in a flow:
        ```python
        from batch_ops.prefect import OpenAIBatchCredentials

        OpenAIBatchCredentials(api_key="sk-your-key", base_url="https://api.openai.com/v1").save("openai")
        credentials = OpenAIBatchCredentials.load("openai")
        with credentials.get_client() as client:
            print(client.batches.list(limit=5))
        ```
    """

    _block_type_name = "OpenAI Batch Credentials"
    # The slug saved blocks are found by: it must never change.
    _block_type_slug = "openai-batch-credentials"
    _logo_url = HttpUrl(f"{DOCS_URL}img/logo.svg")
    _documentation_url = HttpUrl(f"{DOCS_URL}prefect/#credentials")
    _description = (
        "Key and endpoint of an OpenAI-compatible Batch API (OpenAI, Azure OpenAI, a local server). Empty fields "
        "are read from the environment (OPENAI_BASE_URL, OPENAI_ORG_ID, ...) or keep their defaults."
    )

    # One field per ClientSettings field, with its title, help and bounds (``_setting``); the
    # secrets are SecretStr here too. Required: a block whose fields were all optional would match
    # a "$ref" to a saved block as well, and Prefect rejects a deployment parameter that fits two schemas.
    api_key: SecretStr = _setting("api_key", default=...)
    base_url: str | None = _setting("base_url")
    provider: str | None = _setting("provider")
    model: str | None = _setting("model")
    organization: str | None = _setting("organization")
    project: str | None = _setting("project")
    api_version: str | None = _setting("api_version")
    timeout: float | None = _setting("timeout")
    connect_timeout: float | None = _setting("connect_timeout")
    max_retries: int | None = _setting("max_retries")
    retry_max_elapsed: float | None = _setting("retry_max_elapsed")
    backoff_initial: float | None = _setting("backoff_initial")
    backoff_max: float | None = _setting("backoff_max")
    idempotency_lookback: float | None = _setting("idempotency_lookback")
    key_ledger: str | None = _setting("key_ledger")
    events_url: str | None = _setting("events_url")
    events_token: SecretStr | None = _setting("events_token")
    safety_poll_interval: float | None = _setting("safety_poll_interval")

    def get_settings(self) -> ClientSettings:
        """The client settings this block stands for; empty fields come from the environment."""
        values: dict[str, Any] = {}
        for name in ClientSettings.model_fields:
            value = getattr(self, name, None)
            values[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return ClientSettings.from_env(**values)  # from_env leaves out the empty ones

    def get_client(self) -> BatchClient:
        """A new blocking client; close it (or use it in ``with``) when done."""
        return BatchClient(settings=self.get_settings())

    def get_async_client(self) -> AsyncBatchClient:
        """A new async client; close it (or use it in ``async with``) when done.

        Tasks use one pooled client per settings and event loop instead
        (``AsyncBatchClient.shared``); a new client suits code outside Prefect's tasks.
        """
        return AsyncBatchClient(settings=self.get_settings())


def resolve_settings(credentials: OpenAIBatchCredentials | None) -> ClientSettings:
    """Settings from the block when one is given, else from the environment.

    Examples:
        >>> resolve_settings(OpenAIBatchCredentials(api_key="sk-1", base_url="http://h/v1")).base_url
        'http://h/v1'
    """
    if credentials is None:
        return ClientSettings.from_env()
    return credentials.get_settings()


def settings_from_parameters(stored: Mapping[str, Any]) -> ClientSettings:
    """Settings from an unsaved block as a flow run's stored parameters keep it: its secrets are
    obfuscated there, so its other fields are kept and the secrets come from the environment.

    Examples:
        >>> stored = {"api_key": "**********", "base_url": "http://h/v1", "max_retries": 2, "events_token": "****"}
        >>> s = settings_from_parameters(stored)
        >>> s.base_url, s.max_retries, s.events_token
        ('http://h/v1', 2, None)
    """
    plain = {name: value for name, value in stored.items()
             if name in ClientSettings.model_fields and name not in SECRET_FIELDS}
    return ClientSettings.from_env(**plain)

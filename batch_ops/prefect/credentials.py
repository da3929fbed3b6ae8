"""``OpenAIBatchCredentials``: where the Batch API is and how to authenticate, as a Prefect Block.

Register the block type with ``prefect block register -m batch_ops.prefect``; then create a
document in the UI or in code and load it by name in flows.

Tasks take ``credentials=None`` to mean "read the environment" (``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``, ``OPENAI_API_VERSION``), exactly
as ``BatchClient()`` does; :func:`resolve_settings` is that one rule.
"""

from typing import Any

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, HttpUrl, SecretStr

from batch_ops._version import DOCS_URL
from batch_ops.client import AsyncBatchClient, BatchClient
from batch_ops.settings import ClientSettings

__all__ = ["OpenAIBatchCredentials", "resolve_settings"]


class OpenAIBatchCredentials(CredentialsBlock):
    """Credentials and endpoint of an OpenAI-compatible Batch API (OpenAI, Azure OpenAI, local).

    The key is required; the other fields, when left empty, are read from the environment
    like ``BatchClient()`` does (``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ...). The key is a
    ``SecretStr``: Prefect stores it encrypted, and it is obfuscated in the UI, in flow-run
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
    _description = "Key and endpoint of an OpenAI-compatible Batch API (OpenAI, Azure OpenAI, a local server)."

    # Required: a block whose fields were all optional would match a "$ref" to a saved block as
    # well, and Prefect rejects a deployment parameter that fits two schemas.
    api_key: SecretStr = Field(default=..., title="API Key", description="The API key (Azure: the resource key).")
    base_url: str | None = Field(
        default=None,
        title="Base URL",
        description="API root including /v1, e.g. https://api.openai.com/v1; when empty, OPENAI_BASE_URL "
        "or the OpenAI API.",
    )
    organization: str | None = Field(
        default=None, description="Sent as the OpenAI-Organization header (OPENAI_ORG_ID when empty)."
    )
    project: str | None = Field(
        default=None, description="Sent as the OpenAI-Project header (OPENAI_PROJECT_ID when empty)."
    )
    api_version: str | None = Field(
        default=None,
        title="Azure API Version",
        description="Azure OpenAI only: the api-version query parameter; setting it switches to the api-key "
        "header.",
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds for one HTTP exchange (default 60)."
    )
    max_retries: int | None = Field(
        default=None,
        ge=0,
        description="Retries of a retryable failure (408, 409, 429, 5xx, network) per API call (default 6).",
    )

    events_url: str | None = Field(
        default=None,
        title="Webhook events URL",
        description="The webhook receiver's events URL (batch-ops webhooks serve), e.g. http://receiver:8780/events: "
        "waits wake on the batch's webhook instead of polling (docs: webhooks).",
    )
    events_token: SecretStr | None = Field(
        default=None, title="Webhook events token", description="The receiver's --events-token, if it has one."
    )

    def get_settings(self) -> ClientSettings:
        """The client settings this block stands for; empty fields come from the environment."""
        overrides: dict[str, Any] = {
            "events_url": self.events_url,
            "events_token": self.events_token.get_secret_value() if self.events_token else None,
            "api_key": self.api_key.get_secret_value(),
            "base_url": self.base_url,
            "organization": self.organization,
            "project": self.project,
            "api_version": self.api_version,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }
        return ClientSettings.from_env(**{k: v for k, v in overrides.items() if v is not None})

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

"""Azure OpenAI global batch: OpenAI's Batch API with Azure's addressing and spelling.

What differs from OpenAI, as data:

* credentials in an ``api-key`` header; an ``api-version`` query parameter on every call (the
  ``/openai/v1/`` surface is reached with the base URL alone, and then takes no api-version);
* batch endpoints spelled without ``/v1`` (``/chat/completions``), as Azure's documentation writes
  them; the ``/v1`` spelling is accepted too;
* a line's ``model`` is the *deployment* name (one deployment per file);
* no 24 h expiry: "we do not expire the jobs that take longer", so a wait must not treat the
  window as a deadline (:attr:`Limits.expires`).

Statuses may arrive capitalised and timestamps as ISO strings; the tolerant models read both.

Examples:
    >>> from batch_ops.settings import ClientSettings
    >>> s = ClientSettings(api_key="k", base_url="https://r.openai.azure.com/openai", api_version="2024-10-21")
    >>> d = AzureDialect()
    >>> d.auth_headers(s), d.default_params(s), d.endpoint("/v1/chat/completions")
    ({'api-key': 'k'}, {'api-version': '2024-10-21'}, '/chat/completions')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batch_ops.dialects.base import Dialect, Limits
from batch_ops.models import azure_endpoint

if TYPE_CHECKING:
    from batch_ops.settings import ClientSettings

__all__ = ["AzureDialect"]


class AzureDialect(Dialect):
    """Azure OpenAI global (and data zone) batch deployments."""

    name = "azure"
    title = "Azure OpenAI global batch"
    price_provider = "azure"
    #: Every resource has its own: ``https://<resource>.openai.azure.com/openai`` (with an api-version) or
    #: ``.../openai/v1`` (without).
    default_base_url = None
    short_endpoints = True
    limits = Limits(completion_windows=("24h",), expires=False, max_requests=50_000,
                    max_file_bytes=200 * 1024 * 1024)

    def auth_headers(self, settings: ClientSettings) -> dict[str, str]:
        return {"api-key": settings.require_key()}

    def default_params(self, settings: ClientSettings) -> dict[str, str]:
        return {"api-version": settings.api_version} if settings.api_version else {}

    def endpoint(self, endpoint: str) -> str:
        return azure_endpoint(endpoint)

"""Client settings: where the API is, how to authenticate, and how hard to retry.

OpenAI and compatible servers take ``Authorization: Bearer <key>`` plus optional
``OpenAI-Organization`` / ``OpenAI-Project`` headers. Azure OpenAI (``api_version`` set) takes an
``api-key`` header and an ``api-version`` query parameter instead.

Examples:
    >>> s = ClientSettings(api_key="sk-test", base_url="http://127.0.0.1:8765/v1/", project="p1")
    >>> s.base_url, s.auth_headers()["OpenAI-Project"], "sk-test" in repr(s)
    ('http://127.0.0.1:8765/v1', 'p1', False)
    >>> ClientSettings(api_key="k", base_url="https://x.openai.azure.com/openai",
    ...                api_version="2024-10-21").auth_headers()
    {'api-key': 'k'}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator

from batch_ops.errors import ConfigurationError

if TYPE_CHECKING:
    from batch_ops.dialects import Dialect

__all__ = ["DEFAULT_BASE_URL", "ClientSettings", "settings_error"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The fields of ``ClientSettings`` that are secrets: never pickled, never shown.
_SECRET_FIELDS = ("api_key", "events_token")


def settings_error(exc: ValidationError) -> ConfigurationError:
    """A ConfigurationError naming each wrong field and its rule, never the value given.

    pydantic's own text repeats the input, and a key pasted into the wrong field must not end up
    in a log.
    """
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
                       for e in exc.errors())
    return ConfigurationError(f"Invalid client settings: {detail}")


class ClientSettings(BaseModel):
    """Everything a client needs to reach the Batch API. Frozen; the key is a ``SecretStr``.

    Attributes:
        api_key: the API key (``OPENAI_API_KEY``; Azure: ``AZURE_OPENAI_API_KEY``).
        base_url: API root including ``/v1`` (``OPENAI_BASE_URL``).
        organization / project: optional ``OpenAI-Organization`` / ``OpenAI-Project`` headers.
        provider: the batch API spoken (``BATCH_OPS_PROVIDER``): ``openai`` or ``azure`` (see
            :mod:`batch_ops.dialects`); unset, Azure OpenAI when ``api_version`` is set, else OpenAI.
        api_version: set for Azure OpenAI (``OPENAI_API_VERSION``); switches auth to ``api-key``.
        timeout: seconds for one HTTP exchange; connect_timeout for opening the connection.
        max_retries: retries after the first try for retryable failures (408/409/429/5xx, network).
        retry_max_elapsed: total seconds one call may spend retrying, whatever ``max_retries`` says.
        backoff_initial / backoff_max: exponential back-off bounds (full jitter).
        idempotency_lookback: seconds of batch history searched for an idempotency key.
        events_url: a webhook receiver's events URL (``BATCH_OPS_EVENTS_URL``, e.g.
            ``http://receiver:8780/events``): async waits wake on the batch's webhook event and
            poll only every ``safety_poll_interval`` seconds (default 1800) in case one is lost.
        events_token: the receiver's ``events_token`` (``BATCH_OPS_EVENTS_TOKEN``), if it has one.

    Examples:
        >>> ClientSettings.from_env({"OPENAI_API_KEY": "sk-1", "OPENAI_BASE_URL": "http://h/v1"}).base_url
        'http://h/v1'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr | None = None
    base_url: str = DEFAULT_BASE_URL
    provider: str | None = None
    organization: str | None = None
    project: str | None = None
    api_version: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 10.0
    max_retries: int = Field(default=6, ge=0, le=100)
    retry_max_elapsed: float = Field(default=300.0, gt=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    idempotency_lookback: float = Field(default=7 * 86400, gt=0)
    events_url: str | None = None
    events_token: SecretStr | None = None
    safety_poll_interval: float = Field(default=1800.0, gt=0)

    #: Set on a copy that came out of a pickle, whose secrets stayed behind (see ``__reduce__``).
    _secrets_left_behind: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise settings_error(exc) from None

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], bool]]:
        """Pickle without the key and the events token: no secret is ever inside a pickle.

        Pickles travel and stay: Prefect pickles batch_ops by value into work-pool bundles,
        persists task results with cloudpickle, and ships a distributed task runner's arguments
        to other machines. The copy keeps where and how to call; a client built from it fails
        with a ConfigurationError saying the key stayed behind and how to give it one (build the
        settings where they are used: from the environment, an Airflow connection or a Prefect
        credentials block). Copies within a process (``copy``, ``model_copy``) keep the key.

        Examples:
            >>> import pickle
            >>> s = ClientSettings(api_key="sk-secret", base_url="http://127.0.0.1:8765/v1")
            >>> copy = pickle.loads(pickle.dumps(s))
            >>> b"sk-secret" in pickle.dumps(s), copy.base_url, copy.api_key
            (False, 'http://127.0.0.1:8765/v1', None)
        """
        fields = {name: getattr(self, name) for name in type(self).model_fields if name not in _SECRET_FIELDS}
        return _unpickled_settings, (fields, any(getattr(self, name) is not None for name in _SECRET_FIELDS))

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            # The value itself is not repeated: a key pasted here by mistake must not reach a log.
            hint = " (the value looks like an API key: pass it as api_key)" if value.startswith("sk-") else ""
            raise ValueError(f"base_url must start with http:// or https://, e.g. 'https://api.openai.com/v1'{hint}")
        return value

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from batch_ops.dialects import dialect_named

        return dialect_named(value).name

    @field_validator("events_url")
    @classmethod
    def _events_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("events_url must start with http:// or https://, e.g. 'http://receiver:8780/events'")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def dialect(self) -> Dialect:
        """The batch API these settings speak (see :func:`batch_ops.dialects.dialect_for`)."""
        from batch_ops.dialects import dialect_for

        return dialect_for(self)

    @property
    def is_azure(self) -> bool:
        return self.dialect.name == "azure"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        """Read ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``,
        ``OPENAI_API_VERSION`` (and the ``AZURE_OPENAI_*`` equivalents); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        key = env.get("OPENAI_API_KEY") or env.get("AZURE_OPENAI_API_KEY")
        if key:
            values["api_key"] = key
        base = env.get("OPENAI_BASE_URL")
        if not base and env.get("AZURE_OPENAI_ENDPOINT"):
            base = env["AZURE_OPENAI_ENDPOINT"].rstrip("/") + "/openai"
        if base:
            values["base_url"] = base
        for field, names in (
            ("organization", ("OPENAI_ORG_ID", "OPENAI_ORGANIZATION")),
            ("project", ("OPENAI_PROJECT_ID",)),
            ("api_version", ("OPENAI_API_VERSION", "AZURE_OPENAI_API_VERSION")),
            ("provider", ("BATCH_OPS_PROVIDER",)),
            ("events_url", ("BATCH_OPS_EVENTS_URL",)),
            ("events_token", ("BATCH_OPS_EVENTS_TOKEN",)),
        ):
            for name in names:
                if env.get(name):
                    values[field] = env[name]
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def require_key(self) -> str:
        """Return the key, or raise ConfigurationError naming the ways to provide one."""
        if self.api_key is None and self._secrets_left_behind:
            raise ConfigurationError(
                "No API key: these client settings were unpickled, and batch_ops never puts a key in a "
                "pickle. Build the settings in the process that uses them (ClientSettings.from_env(), an "
                "Airflow connection, a Prefect OpenAIBatchCredentials block), or pass the credentials block "
                "instead of the settings."
            )
        if self.api_key is None:
            raise ConfigurationError(
                "No API key: set OPENAI_API_KEY (Azure: AZURE_OPENAI_API_KEY) or pass api_key=... "
                "(the local server accepts any key unless started with --api-key)."
            )
        return self.api_key.get_secret_value()

    def auth_headers(self) -> dict[str, str]:
        """Headers carrying the credentials, as this provider's dialect writes them. Never log these."""
        return self.dialect.auth_headers(self)

    def default_params(self) -> dict[str, str]:
        """Query parameters sent on every call (Azure's ``api-version``)."""
        return self.dialect.default_params(self)

    def url(self, path: str) -> str:
        """Join the base URL and an API path such as ``/batches``."""
        return self.base_url + "/" + path.lstrip("/")


def _unpickled_settings(fields: dict[str, Any], had_secrets: bool) -> ClientSettings:
    """A ``ClientSettings`` from its pickle (see ``ClientSettings.__reduce__``): no secrets in it."""
    settings = ClientSettings(**fields)
    settings._secrets_left_behind = had_secrets
    return settings

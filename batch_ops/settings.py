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

import dataclasses
import enum
import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from batch_ops.errors import ConfigurationError

if TYPE_CHECKING:
    from batch_ops.dialects import Dialect

__all__ = [
    "DEFAULT_BASE_URL",
    "RETRY_PRESETS",
    "SECRET_FIELDS",
    "ClientSettings",
    "SettingField",
    "setting_fields",
    "settings_error",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

#: Shorter budgets for a caller with a person waiting for the answer, by name; each value is a
#: ceiling (``ClientSettings.with_retries``): a preset never lengthens what the settings say.
#: ``interactive``: a command at a prompt (``batch-ops status``, ``submit`` without ``--wait``)
#: gives up on an unreachable server after 8 s of retrying, not the half minute or more of the full
#: budget (each retry is logged as it happens).
#: ``probe``: a connection check (Airflow's Test button) gets one retry within 5 s.
RETRY_PRESETS: Mapping[str, Mapping[str, float]] = types.MappingProxyType({
    "interactive": types.MappingProxyType({"retry_max_elapsed": 8.0, "connect_timeout": 5.0}),
    "probe": types.MappingProxyType(
        {"max_retries": 1, "retry_max_elapsed": 5.0, "connect_timeout": 5.0, "timeout": 15.0}),
})


def settings_error(exc: ValidationError) -> ConfigurationError:
    """A ConfigurationError naming each wrong field and its rule, never the value given.

    pydantic's own text repeats the input, and a key pasted into the wrong field must not end up
    in a log.
    """
    detail = "; ".join(("{}: ".format(".".join(map(str, e["loc"]))) if e["loc"] else "")
                       + str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return ConfigurationError(f"Invalid client settings: {detail}")


def _provider_names(schema: dict[str, Any]) -> None:
    """The ``provider`` field's choices, the dialects' names: looked up when a schema or a form asks
    (:func:`setting_fields`), not when the settings load (the dialects sit above them)."""
    from batch_ops.dialects import DIALECTS

    schema["enum"] = sorted(DIALECTS)


class ClientSettings(BaseModel):
    """Everything a client needs to reach the Batch API. Frozen; the key is a ``SecretStr``.

    Attributes:
        api_key: the API key (``OPENAI_API_KEY``; Azure: ``AZURE_OPENAI_API_KEY``).
        base_url: API root including ``/v1`` (``OPENAI_BASE_URL``).
        organization / project: optional ``OpenAI-Organization`` / ``OpenAI-Project`` headers.
        provider: the batch API spoken (``BATCH_OPS_PROVIDER``): ``openai``, ``azure``, ``anthropic``,
            ``gemini``, … (see :mod:`batch_ops.dialects`); unset, Azure OpenAI when ``api_version`` is
            set, else OpenAI.
        model: the model of provider-neutral chat requests that name none (``BATCH_OPS_MODEL``).
        api_version: set for Azure OpenAI (``OPENAI_API_VERSION``); switches auth to ``api-key``.
        timeout: seconds for one HTTP exchange; connect_timeout for opening the connection.
        max_retries: retries after the first try for retryable failures (408/409/429/5xx, network).
        retry_max_elapsed: total seconds one call may spend retrying, whatever ``max_retries`` says.
        backoff_initial / backoff_max: exponential back-off bounds (full jitter).
        idempotency_lookback: seconds of batch history searched for an idempotency key.
        key_ledger: a folder (or ``s3://`` URL) every try of a piece of work can reach (``BATCH_OPS_KEY_LEDGER``).
            Set, tries of one key take turns under the key's lease on every provider, so tries racing at
            the same moment make one batch; a provider whose batches cannot carry the key (Anthropic)
            records key -> batch there too, and needs it (unset: ``~/.batch_ops/key-ledger``). See
            :mod:`batch_ops.identity.ledger`.
        events_url: a webhook receiver's events URL (``BATCH_OPS_EVENTS_URL``, e.g.
            ``http://receiver:8780/events``): async waits wake on the batch's webhook event and
            poll only every ``safety_poll_interval`` seconds (default 1800) in case one is lost.
        events_token: the receiver's ``events_token`` (``BATCH_OPS_EVENTS_TOKEN``), if it has one.

    Examples:
        >>> ClientSettings.from_env({"OPENAI_API_KEY": "sk-1", "OPENAI_BASE_URL": "http://h/v1"}).base_url
        'http://h/v1'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field's title and description are what the Prefect block and the Airflow connection
    # form show (``setting_fields``): say what the setting does, not where this caller reads it.
    api_key: SecretStr | None = Field(default=None, title="API Key",
                                      description="The API key (Azure OpenAI: the resource key).")
    base_url: str = Field(default=DEFAULT_BASE_URL, title="Base URL",
                          description="API root including its version, e.g. https://api.openai.com/v1; empty: the "
                          "provider's own.")
    provider: str | None = Field(
        default=None, title="Provider", json_schema_extra=_provider_names,
        description="The batch API spoken (a dialect of batch_ops.dialects); empty: Azure OpenAI when an Azure API "
        "version is set, else OpenAI.")
    model: str | None = Field(
        default=None, title="Model",
        description="The model of provider-neutral chat requests that name none, e.g. claude-sonnet-4-5 (Gemini: "
        "the batch's model): one eval set runs on several vendors, a model per connection.")
    organization: str | None = Field(default=None, title="Organization",
                                     description="Sent as the OpenAI-Organization header.")
    project: str | None = Field(default=None, title="Project", description="Sent as the OpenAI-Project header.")
    api_version: str | None = Field(
        default=None, title="Azure API version",
        description="Azure OpenAI only (e.g. 2024-10-21): the api-version query parameter; setting it switches "
        "to the api-key header. Leave empty for OpenAI.")
    timeout: float = Field(default=60.0, gt=0, title="Timeout", description="Seconds for one HTTP exchange.")
    connect_timeout: float = Field(default=10.0, gt=0, title="Connect timeout",
                                   description="Seconds to open a connection.")
    max_retries: int = Field(default=6, ge=0, le=100, title="Max retries",
                             description="Retries of a retryable failure (408, 409, 429, 5xx, network) per API call.")
    retry_max_elapsed: float = Field(default=300.0, gt=0, title="Retry budget",
                                     description="Seconds one API call may spend retrying, whatever Max retries says.")
    backoff_initial: float = Field(
        default=0.5, gt=0, title="Initial back-off",
        description="Seconds before the first retry; the pauses grow exponentially, with full jitter.")
    backoff_max: float = Field(default=30.0, gt=0, title="Longest back-off",
                               description="The longest pause between two retries, in seconds.")
    idempotency_lookback: float = Field(default=7 * 86400, gt=0, title="Idempotency lookback",
                                        description="Seconds of batch history searched for a run's earlier batches.")
    key_ledger: str | None = Field(
        default=None, title="Key ledger",
        description="A folder every worker that may run the same work can reach (a local folder on one machine, a "
        "shared volume, or an s3:// URL for workers on several machines). Set: tries of one idempotency key take "
        "turns (a lease), so tries racing at the same moment make one batch and pay once, on every provider; empty: "
        "racing tries each create and all but one cancel themselves. Anthropic also records key -> batch there "
        "and needs one (empty: ~/.batch_ops/key-ledger, this machine only).")
    events_url: str | None = Field(
        default=None, title="Webhook events URL",
        description="The webhook receiver's events URL (batch-ops webhooks serve), e.g. http://receiver:8780/events: "
        "waits wake on the batch's webhook instead of polling (docs: webhooks).")
    events_token: SecretStr | None = Field(default=None, title="Webhook events token",
                                           description="The receiver's --events-token, if it has one.")
    safety_poll_interval: float = Field(
        default=1800.0, gt=0, title="Safety poll interval",
        description="With a webhook events URL: seconds between the polls that catch a lost webhook.")

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
        fields = {name: getattr(self, name) for name in type(self).model_fields if name not in SECRET_FIELDS}
        return _unpickled_settings, (fields, any(getattr(self, name) is not None for name in SECRET_FIELDS))

    @model_validator(mode="before")
    @classmethod
    def _provider_base_url(cls, data: Any) -> Any:
        """No base URL given: the provider's own (an Anthropic key must never be sent to OpenAI)."""
        if isinstance(data, Mapping) and not (data.get("base_url") or "").strip() and data.get("provider"):
            from batch_ops.dialects import DIALECTS

            dialect = DIALECTS.get(str(data["provider"]).strip().lower())
            if dialect is not None and dialect.default_base_url is None:
                # Azure OpenAI (a root per resource), any OpenAI-compatible server: no root to guess.
                raise ValueError(f"provider {dialect.name!r} ({dialect.title}) has no base URL of its own: give "
                                 "base_url, the API root including its version (e.g. https://llm.example.com/v1)")
            if dialect is not None:
                return {**data, "base_url": dialect.default_base_url}
        if isinstance(data, Mapping) and "base_url" in data and not (data.get("base_url") or "").strip():
            return {k: v for k, v in data.items() if k != "base_url"}
        return data

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
        from batch_ops.dialects import AZURE, OPENAI, dialect_named

        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, names in (
            ("organization", ("OPENAI_ORG_ID", "OPENAI_ORGANIZATION")),
            ("project", ("OPENAI_PROJECT_ID",)),
            ("api_version", ("OPENAI_API_VERSION", "AZURE_OPENAI_API_VERSION")),
            ("provider", ("BATCH_OPS_PROVIDER",)),
            ("model", ("BATCH_OPS_MODEL",)),
            ("events_url", ("BATCH_OPS_EVENTS_URL",)),
            ("key_ledger", ("BATCH_OPS_KEY_LEDGER",)),
            ("events_token", ("BATCH_OPS_EVENTS_TOKEN",)),
        ):
            for name in names:
                if env.get(name):
                    values[field] = env[name]
                    break
        values.update({k: v for k, v in overrides.items() if v is not None and k in ("provider", "api_version")})
        # The provider decides which variables hold the key and the API root: an Anthropic run reads
        # ANTHROPIC_API_KEY, never OPENAI_API_KEY (a key must only ever reach its own vendor).
        try:
            dialect = dialect_named(values["provider"]) if values.get("provider") else (
                AZURE if values.get("api_version") else OPENAI)
        except ValueError as exc:
            raise ConfigurationError(f"Invalid client settings: provider: {exc}") from None
        key = next((env[name] for name in dialect.key_env if env.get(name)), None)
        if key:
            values["api_key"] = key
        base = next((env[name].rstrip("/") + suffix for name, suffix in dialect.base_url_env if env.get(name)), None)
        if base:
            values["base_url"] = base
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
            names = " or ".join(self.dialect.key_env)
            raise ConfigurationError(
                f"No API key for {self.dialect.title}: set {names} or pass api_key=... "
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

    def with_retries(self, preset: str) -> ClientSettings:
        """A copy whose retry and timeout budgets are at most those of a :data:`RETRY_PRESETS` entry.

        Raises:
            ConfigurationError: no preset of that name.

        Examples:
            >>> s = ClientSettings(api_key="k").with_retries("probe")
            >>> s.max_retries, s.retry_max_elapsed, s.timeout
            (1, 5.0, 15.0)
            >>> ClientSettings(api_key="k", max_retries=0).with_retries("probe").max_retries  # never more
            0
        """
        try:
            ceilings = RETRY_PRESETS[preset]
        except KeyError:
            raise ConfigurationError(
                f"No retry preset {preset!r}; the presets are {', '.join(sorted(RETRY_PRESETS))}."
            ) from None
        return self.model_copy(update={name: min(getattr(self, name), limit) for name, limit in ceilings.items()})


def _unpickled_settings(fields: dict[str, Any], had_secrets: bool) -> ClientSettings:
    """A ``ClientSettings`` from its pickle (see ``ClientSettings.__reduce__``): no secrets in it."""
    settings = ClientSettings(**fields)
    settings._secrets_left_behind = had_secrets
    return settings


def _holds_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _declared_choices(info: Any) -> tuple[str, ...]:
    """The choices a field's ``json_schema_extra`` declares (``enum``), if any."""
    extra = info.json_schema_extra
    if callable(extra):
        extra = {}
        info.json_schema_extra(extra)
    return tuple(map(str, (extra or {}).get("enum") or ()))


def _value_type(annotation: Any) -> tuple[type, tuple[str, ...]]:
    """The type a form field holds (``None`` and ``SecretStr`` taken off) and its choices, if fixed."""
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return type(values[0]), tuple(map(str, values))
    if annotation is SecretStr:
        return str, ()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str, tuple(str(member.value) for member in annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return _value_type(args[0]) if args else (annotation, ())


#: The fields of ``ClientSettings`` that are secrets (its ``SecretStr`` fields): never pickled, never
#: shown. The adapters keep them secret too: a Prefect ``SecretStr`` field, an Airflow connection's
#: password or a password field of its form.
SECRET_FIELDS: tuple[str, ...] = tuple(
    name for name, info in ClientSettings.model_fields.items() if _holds_secret(info.annotation)
)


@dataclasses.dataclass(frozen=True)
class SettingField:
    """One ``ClientSettings`` field as a form shows it: the Prefect block and the Airflow connection
    form are built from these, so a new setting reaches both.

    Attributes:
        name: the ``ClientSettings`` field.
        title: its label (the field's ``title``).
        help: what it does (the field's ``description``), with its default when that is a number.
        type: what the form holds: ``str``, ``int`` or ``float`` (a secret is a ``str``).
        secret: a ``SecretStr``: masked in every form, never shown.
        choices: the only values allowed (a ``Literal``, an enum, or the ``enum`` of the field's
            ``json_schema_extra``), else empty; the help names them.
        limits: pydantic's bounds (``gt``, ``ge``, ``le``), for a form to check before saving.
    """

    name: str
    title: str
    help: str
    type: type
    secret: bool
    choices: tuple[str, ...]
    limits: Mapping[str, float]


@functools.cache
def setting_fields() -> Mapping[str, SettingField]:
    """Every ``ClientSettings`` field as a form shows it, by name, in declaration order.

    Examples:
        >>> f = setting_fields()["timeout"]
        >>> f.title, f.help, f.type.__name__, dict(f.limits)
        ('Timeout', 'Seconds for one HTTP exchange (default 60).', 'float', {'gt': 0})
        >>> setting_fields()["events_token"].secret, setting_fields()["organization"].help
        (True, 'Sent as the OpenAI-Organization header.')
    """
    fields: dict[str, SettingField] = {}
    for name, info in ClientSettings.model_fields.items():
        kind, choices = _value_type(info.annotation)
        choices = _declared_choices(info) or choices
        help_text = info.description or ""
        if isinstance(info.default, (int, float)) and not isinstance(info.default, bool):
            help_text = f"{help_text.removesuffix('.')} (default {info.default:g})."
        if choices:
            help_text = f"{help_text} One of: {', '.join(choices)}.".strip()
        limits = {key: value for meta in info.metadata if dataclasses.is_dataclass(meta) and not isinstance(meta, type)
                  for key, value in dataclasses.asdict(meta).items()}
        fields[name] = SettingField(
            name=name, title=info.title or name.replace("_", " ").capitalize(), help=help_text, type=kind,
            secret=_holds_secret(info.annotation), choices=choices, limits=types.MappingProxyType(limits))
    return types.MappingProxyType(fields)

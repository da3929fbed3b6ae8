"""``OpenAIBatchHook``: an Airflow connection turned into batch_ops client settings and clients.

Connection type ``openaibatch`` (default id ``openai_batch_default``): host = base URL with
``/v1``, password = API key, extra = any other :class:`~batch_ops.ClientSettings` field
(``organization``, ``project``, ``api_version`` for Azure, timeouts, retries, webhooks); the form
shows each of them (:func:`~batch_ops.airflow.provider.connection_form_fields`).
Connections saved with the type's old name ``openai_batch`` keep working
(:class:`LegacyOpenAIBatchHook` keeps that name registered for the connection form).
A connection of the official provider's type ``openai`` works too: its host or
``openai_client_kwargs.base_url`` is the base URL and its password the key; batch webhooks
(``events_url``, ``events_token``, ``safety_poll_interval``) go in its extra as in ours.

The API key only ever lives in a ``SecretStr`` inside :class:`~batch_ops.ClientSettings`: it is
not logged, not put into XCom and not serialized into trigger arguments (triggers carry the
connection id and look the connection up again in the triggerer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0: the Task SDK does not export it yet
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]
from pydantic import ValidationError

from batch_ops.airflow.provider import (
    CONN_TYPE,
    EXTRA_FIELDS,
    LEGACY_CONN_TYPE,
    connection_form_fields,
    ui_field_behaviour,
)
from batch_ops.chain import Attempt, AttemptChain
from batch_ops.client import AsyncBatchClient, BatchClient
from batch_ops.dialects import DIALECTS, OPENAI
from batch_ops.errors import ConfigurationError
from batch_ops.results import DEFAULT_MAX_RECORDS, result_records
from batch_ops.settings import ClientSettings
from batch_ops.structured import ResponseSchema

__all__ = ["LegacyOpenAIBatchHook", "OpenAIBatchHook", "settings_from_connection"]

#: Batch webhooks (docs/webhooks.md): the receiver's events URL, its token, the safety poll. The
#: official ``openai`` type reads these from its extra (its other extra keys are its own); ours
#: reads every setting (``EXTRA_FIELDS``).
_WEBHOOK_FIELDS = ("events_url", "events_token", "safety_poll_interval")


def _base_url(host: str | None, *, schema: str | None = None, port: int | None = None,
              provider: str | None = None) -> str | None:
    """The API root from a connection's host, which may be a full URL or a bare host name; None when
    the host is empty (the provider's own root, ``Dialect.default_base_url``)."""
    host = (host or "").strip()
    if not host:
        return None
    if "://" not in host:
        scheme = (schema or "").strip() or "https"
        host = f"{scheme}://{host}" + (f":{port}" if port else "")
    parts = urlsplit(host)
    if parts.path in ("", "/"):
        # A bare host ("api.openai.com") means the API root, under the provider's version path (/v1).
        default = DIALECTS.get((provider or "").strip().lower(), OPENAI).default_base_url
        host = host.rstrip("/") + (urlsplit(default).path if default else "/v1")
    return host


def _extra_dict(extra: Any) -> dict[str, Any]:
    if extra is None or extra == "":
        return {}
    if isinstance(extra, Mapping):
        return dict(extra)
    try:
        value = json.loads(extra)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError("The connection's extra is not valid JSON; it must be a JSON object.") from exc
    if not isinstance(value, dict):
        raise ConfigurationError("The connection's extra must be a JSON object.")
    return value


def settings_from_connection(conn: Any, extra: Mapping[str, Any] | None = None) -> ClientSettings:
    """Build :class:`ClientSettings` from an Airflow connection (``openaibatch``, its old name
    ``openai_batch``, or ``openai``).

    Args:
        conn: an Airflow ``Connection`` (anything with ``conn_id``, ``conn_type``, ``host``,
            ``schema``, ``port``, ``password`` and ``extra``).
        extra: the already-decoded extra; read from ``conn.extra`` when not given.

    Raises:
        ConfigurationError: the connection cannot be used (no key, bad URL, unknown extra key);
            the message names the connection and the field, never the key.

    Examples:
        >>> from types import SimpleNamespace
        >>> conn = SimpleNamespace(conn_id="c", conn_type="openaibatch", host="http://127.0.0.1:8765/v1",
        ...                        schema=None, port=None, password="sk-local", extra='{"project": "p1"}')
        >>> s = settings_from_connection(conn)
        >>> s.base_url, s.project, "sk-local" in repr(s)
        ('http://127.0.0.1:8765/v1', 'p1', False)
        >>> official = SimpleNamespace(conn_id="openai_default", conn_type="openai", host=None, schema=None,
        ...                            port=None, password="sk-local", extra='{"events_url": "http://rx:8780/events"}')
        >>> settings_from_connection(official).events_url
        'http://rx:8780/events'
    """
    conn_id = getattr(conn, "conn_id", None) or "?"
    extras = _extra_dict(conn.extra) if extra is None else dict(extra)
    # Empty form fields arrive as "" or None; they mean "not set". Older forms stored them
    # as extra__<conn_type>__<field>.
    prefix = f"extra__{getattr(conn, 'conn_type', None)}__"
    extras = {k.removeprefix(prefix): v for k, v in extras.items() if v not in ("", None)}
    values: dict[str, Any] = {}
    if getattr(conn, "conn_type", None) == "openai":
        # The official provider keeps client options in extra.openai_client_kwargs.
        if extras.get("auth_type", "api_key") != "api_key":
            raise ConfigurationError(
                f"Connection {conn_id!r}: auth_type {extras['auth_type']!r} is not supported by batch_ops; "
                "use an API key (the connection's password)."
            )
        client_kwargs = dict(extras.get("openai_client_kwargs") or {})
        values["base_url"] = client_kwargs.get("base_url") or _base_url(conn.host, schema=conn.schema, port=conn.port)
        values["api_key"] = client_kwargs.get("api_key") or conn.password
        for name in ("organization", "project"):
            if client_kwargs.get(name):
                values[name] = client_kwargs[name]
        # The official type has no webhooks of its own: ours are read from its extra as they are
        # from an openaibatch connection's (they were once dropped there without a word).
        values.update({name: extras[name] for name in _WEBHOOK_FIELDS if name in extras})
    else:
        unknown = sorted(set(extras) - set(EXTRA_FIELDS))
        if unknown:
            raise ConfigurationError(
                f"Connection {conn_id!r}: unknown extra field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(EXTRA_FIELDS))}."
            )
        values.update(extras)
        values["base_url"] = _base_url(conn.host, schema=conn.schema, port=conn.port, provider=extras.get("provider"))
        values["api_key"] = conn.password
    try:
        settings = ClientSettings(**values)
    except ValidationError as exc:
        # Name the fields, not the values: a value could be the key pasted in the wrong box.
        fields = ", ".join(sorted({str(err["loc"][0]) for err in exc.errors() if err.get("loc")}))
        raise ConfigurationError(f"Connection {conn_id!r}: invalid value for {fields}.") from None
    if settings.api_key is None:
        raise ConfigurationError(
            f"Connection {conn_id!r} has no API key: put it in the connection's password "
            "(the local server accepts any non-empty key)."
        )
    return settings


class OpenAIBatchHook(BaseHook):
    """Reach the Batch API through an Airflow connection.

    Args:
        conn_id: an ``openaibatch`` connection (or an ``openai`` one of the official provider).

    Examples:
        >>> hook = OpenAIBatchHook(conn_id="openai_batch_default")
        >>> hook.conn_id
        'openai_batch_default'
        >>> # client = hook.get_client(); client.batches.list(limit=5)
        >>> # async: client = await hook.get_async_client()
    """

    conn_name_attr = "conn_id"
    default_conn_name = "openai_batch_default"
    conn_type = CONN_TYPE
    hook_name = "OpenAI Batch (batch_ops)"

    def __init__(self, conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    # -- settings ---------------------------------------------------------------------------
    def get_settings(self) -> ClientSettings:
        """Client settings from the connection (blocking lookup: use in tasks, not triggers)."""
        conn = self.get_connection(self.conn_id)
        return settings_from_connection(conn, conn.extra_dejson)

    async def aget_settings(self) -> ClientSettings:
        """Client settings from the connection without blocking the event loop (triggers)."""
        conn, extra = await _aget_connection_and_extra(self)
        return settings_from_connection(conn, extra)

    # -- clients ----------------------------------------------------------------------------
    def get_client(self) -> BatchClient:
        """A new :class:`~batch_ops.BatchClient`; close it (or use ``with``) when done."""
        return BatchClient(settings=self.get_settings())

    def get_conn(self) -> BatchClient:
        """Airflow's generic accessor; same as :meth:`get_client`."""
        return self.get_client()

    async def get_async_client(self, *, shared: bool = False) -> AsyncBatchClient:
        """An :class:`~batch_ops.AsyncBatchClient` built from the connection.

        Args:
            shared: return the pooled client of this event loop for these settings
                (``AsyncBatchClient.shared``), which must not be closed; otherwise a new client
                that the caller closes (``async with``).
        """
        settings = await self.aget_settings()
        return AsyncBatchClient.shared(settings) if shared else AsyncBatchClient(settings=settings)

    # -- results ----------------------------------------------------------------------------
    def get_results(
        self,
        batch: str | Mapping[str, Any],
        *,
        input_path: Any = None,
        max_results: int = DEFAULT_MAX_RECORDS,
        raw: bool = True,
        response_schema: Any = None,
    ) -> list[dict[str, Any]]:
        """The results of an ended batch, one dict per request in input order, the same shape whatever the
        provider (``custom_id``, ``ok``, ``text``, ``body``, ``usage``, ``error``, ``raw``): return it from a
        task and it is the XCom. ``batch`` is a batch id, or the operator's XCom (``batch_ids``: every
        attempt, joined). More than ``max_results`` requests fail (XComs live in the metadata database):
        download the output file instead. With a response schema (``response_schema``: a pydantic model or a
        JSON Schema; by default the one the operator's XCom carries under ``structured``) each record also
        has ``parsed`` (the answer as JSON) and ``invalid`` (``{reason, message}``, or None).

        Example:
            ```python
            @task
            def answers(summary):
                return OpenAIBatchHook("openai_batch_default").get_results(summary)
            ```
        """
        ids = [batch] if isinstance(batch, str) else list(batch.get("batch_ids") or [batch["batch_id"]])
        carried = (batch.get("structured") or {}).get("response_schema") if isinstance(batch, Mapping) else None
        if response_schema is None and carried:
            response_schema = ResponseSchema.from_json(carried)
        with self.get_client() as client:
            batches = [client.batches.retrieve(i) for i in ids]
            chain = AttemptChain("results", tuple(Attempt(n, b) for n, b in enumerate(batches)))
            lines = client.results(chain, input_path=input_path, response_schema=response_schema)
            return result_records(lines, limit=max_results, raw=raw,
                                  what=f"batch {ids[-1]}")

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's "Test" button: list one batch, giving up within seconds (a person is
        waiting for the answer; a task would retry for minutes)."""
        try:
            settings = self.get_settings().with_retries("probe")
            with BatchClient(settings=settings) as client:
                client.batches.list(limit=1)
        except Exception as exc:  # the UI shows the message; it never contains the key
            return False, f"{type(exc).__name__}: {exc}"
        return True, "Connection works: the Batch API answered."

    # -- UI (Airflow 3.0/3.1; 3.2+ reads the declarative form from get_provider_info) ----
    # Both are built from provider.connection_form_fields / ui_field_behaviour, so the two forms are one.
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import IntegerField, PasswordField, StringField
        from wtforms.validators import Optional, any_of

        widgets: dict[str, Any] = {}
        for name, spec in connection_form_fields().items():
            schema, label = spec["schema"], lazy_gettext(spec["label"])
            # Airflow turns only string, integer, password and boolean fields into its form: a float
            # goes in a text field, and ClientSettings reads "2.5" as 2.5 (or names the field).
            validators = [Optional()] + ([any_of([v for v in schema["enum"] if v is not None])]
                                         if schema.get("enum") else [])
            if schema.get("format") == "password":
                widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget(), description=spec["description"])
            elif "integer" in schema["type"]:
                widgets[name] = IntegerField(label, widget=BS3TextFieldWidget(), validators=validators,
                                             description=spec["description"])
            else:
                widgets[name] = StringField(label, widget=BS3TextFieldWidget(), validators=validators,
                                            description=spec["description"])
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {key.replace("-", "_"): value for key, value in ui_field_behaviour().items()}


class LegacyOpenAIBatchHook(OpenAIBatchHook):
    """The connection type's name before 0.2 (``openai_batch``), kept so saved connections still
    open in the connection form and pass its Test button. Any hook reads either type; edit the
    connection's type to ``openaibatch`` to silence Airflow's RFC 3986 warning about the ``_``."""

    conn_type = LEGACY_CONN_TYPE
    hook_name = "OpenAI Batch (batch_ops, old type name)"


async def _aget_connection_and_extra(hook: BaseHook) -> tuple[Any, dict[str, Any]]:
    """The connection and its decoded extra, without a blocking call on the event loop.

    Airflow >= 3.3.2 resolves and masks connections asynchronously (``aget_connection`` +
    ``Connection.aextra_dejson``). Before that, masking the secrets is a synchronous call to the
    supervisor, which deadlocks when another coroutine talks to it at the same moment; there,
    the synchronous lookup runs in a worker thread instead (what the triggerer allows).
    """
    from airflow.sdk import Connection

    conn_id = hook.conn_id  # type: ignore[attr-defined]
    if hasattr(Connection, "aextra_dejson") and hasattr(type(hook), "aget_connection"):
        conn = await type(hook).aget_connection(conn_id)
        return conn, await conn.aextra_dejson()

    from asgiref.sync import sync_to_async

    conn = await sync_to_async(hook.get_connection)(conn_id)
    extra = await sync_to_async(lambda: conn.extra_dejson)()
    return conn, extra

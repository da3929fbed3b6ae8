"""Provider registration: Airflow finds batch_ops through the ``apache_airflow_provider`` entry point.

This module imports nothing from Airflow: the providers manager reads it while Airflow itself
is still starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch_ops import DOCS_URL, __version__
from batch_ops.settings import DEFAULT_BASE_URL, SettingField, setting_fields

__all__ = [
    "CONNECTION_FIELDS",
    "CONN_TYPE",
    "DOCS_URL",
    "EXTRA_FIELDS",
    "HOWTO_PAGES",
    "LEGACY_CONN_TYPE",
    "connection_form_fields",
    "get_provider_info",
    "ui_field_behaviour",
]

#: The connection type. No ``_`` in it: Airflow logs a warning (RFC 3986 schemes have none)
#: every time it turns a connection whose type has one into a URI, which it does on each fetch.
CONN_TYPE = "openaibatch"
#: The type name before 0.2; connections saved with it keep working (and keep that warning).
LEGACY_CONN_TYPE = "openai_batch"

#: ``docs/howto/<page>.md``: one how-to guide per operator.
HOWTO_PAGES = ("operator", "sensor", "job-operator", "orphan-sweep")

#: ``ClientSettings`` fields that a connection's standard fields hold (the key in the password,
#: which Airflow masks); every other field is an extra (:data:`EXTRA_FIELDS`).
CONNECTION_FIELDS: Mapping[str, str] = {"base_url": "host", "api_key": "password"}
#: The connection's extra keys: every ``ClientSettings`` field that no standard field holds.
EXTRA_FIELDS: tuple[str, ...] = tuple(name for name in setting_fields() if name not in CONNECTION_FIELDS)

#: A setting's type as the form's JSON schema spells it.
_SCHEMA_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
#: pydantic's bounds as JSON schema keywords.
_SCHEMA_LIMITS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


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
        "extra-links": ["batch_ops.airflow.links.OpenAIBatchLink", "batch_ops.airflow.evals.EvalReportLink"],
        "connection-types": [
            _connection_type(CONN_TYPE, "OpenAI Batch (batch_ops)"),
            _connection_type(LEGACY_CONN_TYPE, "OpenAI Batch (batch_ops, old type name)",
                             hook="LegacyOpenAIBatchHook"),
        ],
    }


def connection_form_fields() -> dict[str, dict[str, Any]]:
    """The connection form's extra fields, one per :data:`EXTRA_FIELDS` entry, from ``ClientSettings``'
    titles, help and bounds; secrets are password fields (masked). Airflow >= 3.2 reads them
    declaratively (``conn-fields``); older versions get the same fields from the hook.

    Examples:
        >>> fields = connection_form_fields()
        >>> fields["api_version"]["label"], fields["max_retries"]["schema"]
        ('Azure API version', {'type': ['integer', 'null'], 'minimum': 0, 'maximum': 100})
        >>> fields["events_token"]["schema"]["format"]
        'password'
    """
    return {name: _form_field(setting_fields()[name]) for name in EXTRA_FIELDS}


def _form_field(field: SettingField) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": [_SCHEMA_TYPES.get(field.type, "string"), "null"]}
    if field.secret:
        schema["format"] = "password"
    if field.choices:
        schema["enum"] = [*field.choices, None]
    schema.update({_SCHEMA_LIMITS[key]: value for key, value in field.limits.items() if key in _SCHEMA_LIMITS})
    return {"label": field.title, "description": field.help, "schema": schema}


def ui_field_behaviour() -> dict[str, Any]:
    """The standard fields: which are hidden, and the labels of the two that hold settings."""
    return {
        "hidden-fields": ["schema", "port", "login"],
        "relabeling": {field: setting_fields()[name].title for name, field in CONNECTION_FIELDS.items()},
        "placeholders": {"host": DEFAULT_BASE_URL},
    }


def _connection_type(conn_type: str, hook_name: str, *, hook: str = "OpenAIBatchHook") -> dict[str, Any]:
    return {
        "hook-class-name": f"batch_ops.airflow.hooks.{hook}",
        "hook-name": hook_name,
        "connection-type": conn_type,
        # Declarative form (Airflow >= 3.2); older versions ask the hook's methods, which return the same.
        "conn-fields": connection_form_fields(),
        "ui-field-behaviour": ui_field_behaviour(),
    }

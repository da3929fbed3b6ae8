"""The schema an answer must follow: from a pydantic model or a JSON Schema, checked and validated here.

A :class:`ResponseSchema` is what every path takes (``response_model=`` / ``response_schema=``): a name,
the JSON Schema, and the pydantic model when there is one (answers then parse into instances of it).
A pydantic model's schema is written in the strict form every provider takes (each object closed
with ``additionalProperties: false`` and every property required, as OpenAI's strict mode needs);
a JSON Schema given by hand is taken as it is and checked against the provider's subset before
upload (:mod:`batch_ops.structured.subsets`).

Examples:
    >>> from pydantic import BaseModel
    >>> class City(BaseModel):
    ...     name: str
    ...     population: int | None = None
    >>> s = ResponseSchema.of(City)
    >>> s.name, s.schema["required"], s.schema["additionalProperties"]
    ('City', ['name', 'population'], False)
    >>> s.validate({"name": "Paris", "population": 2})
    (City(name='Paris', population=2), None)
    >>> s.validate({"name": 3})[1]
    'name: Input should be a valid string (got 3)'
    >>> ResponseSchema.of({"type": "object", "properties": {"n": {"type": "integer"}}}).name
    'response'
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from batch_ops.errors import InputValidationError, Problem

__all__ = ["ResponseSchema", "strict_schema"]

#: OpenAI's rule for a schema's name (``json_schema.name``), also a valid tool name for Anthropic.
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _problem(message: str, fix: str, param: str = "response_schema") -> InputValidationError:
    return InputValidationError([Problem(rule="invalid_response_schema", param=param, message=message, fix=fix)],
                                source="response schema")


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with every object closed (``additionalProperties: false``) and all its properties required,
    and ``default: null`` dropped: the form OpenAI's strict mode takes, and one every provider accepts.

    Used for pydantic models, whose optional fields pydantic leaves out of ``required``: the model still
    fills in a default when it validates.

    Examples:
        >>> strict_schema({"type": "object", "properties": {"a": {"type": "string", "default": None}}})
        {'type': 'object', 'properties': {'a': {'type': 'string'}}, 'additionalProperties': False, 'required': ['a']}
    """
    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        if "default" in out and out["default"] is None:
            del out["default"]
        if out.get("type") == "object" and isinstance(out.get("properties"), dict):
            out["additionalProperties"] = False
            out["required"] = list(out["properties"])
        return out

    return walk(copy.deepcopy(dict(schema)))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ResponseSchema:
    """What an answer must be: ``name`` (letters, digits, ``_``, ``-``; at most 64), the JSON ``schema``,
    the pydantic ``model`` answers parse into (None: they parse into plain dicts), ``strict`` (OpenAI's
    strict mode)."""

    name: str
    schema: dict[str, Any]
    model: type[BaseModel] | None = field(default=None, compare=False)
    strict: bool = True
    #: ``module:qualname`` of ``model``, so a schema carried through JSON (a deferred task) finds it again.
    model_path: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise _problem(f"the schema's name {self.name!r} is not 1-64 letters, digits, '_' or '-'",
                           "name it e.g. 'answer' (ResponseSchema.of(schema, name='answer'))", "response_schema.name")
        if not isinstance(self.schema, dict) or not self.schema:
            raise _problem("the schema is empty or not a JSON object", "give a JSON Schema object, or a pydantic model")

    @classmethod
    def of(cls, value: Any, *, name: str | None = None, strict: bool = True) -> ResponseSchema:
        """A schema from a pydantic model class (or ``"module:Class"`` naming one), a JSON Schema (a dict, or the
        path of a ``.json`` file), or a :class:`ResponseSchema` (returned as it is).

        Examples:
            >>> ResponseSchema.of("batch_ops.models:Usage").model.__name__
            'Usage'
        """
        if isinstance(value, ResponseSchema):
            return value
        if isinstance(value, type) and issubclass(value, BaseModel):
            path = f"{value.__module__}:{value.__qualname__}"
            return cls(name or _clean(value.__name__), strict_schema(value.model_json_schema()), value, strict,
                       path if "<locals>" not in path else None)
        if isinstance(value, str) and _MODEL_PATH.fullmatch(value) and not Path(value).exists():
            model = _import_model(value)
            if model is None:
                raise _problem(f"{value!r} names no pydantic model that can be imported here",
                               "give module:Class of a pydantic BaseModel importable by this Python (its folder "
                               "on PYTHONPATH), or the path of a JSON Schema file")
            return cls.of(model, name=name, strict=strict)
        if isinstance(value, (str, Path)):
            try:
                text = Path(value).read_text(encoding="utf-8")
            except OSError as exc:
                raise _problem(f"the schema file {str(value)!r} cannot be read ({exc.strerror})",
                               "give the path of a JSON Schema file") from None
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise _problem(f"the schema file {str(value)!r} is not JSON ({exc})",
                               "give the path of a JSON Schema file") from None
        if isinstance(value, Mapping):
            schema = dict(value)
            return cls(name or _clean(str(schema.get("title") or "response")), schema, None, strict)
        raise _problem(f"a response schema cannot be made from a {type(value).__name__}",
                       "give a pydantic model class, a JSON Schema dict or the path of a JSON Schema file")

    # -- carried through JSON (Airflow's deferral, Prefect results, the CLI) --------------------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the name, the schema, strict, and where the model lives (``module:qualname``)."""
        return {"name": self.name, "schema": self.schema, "strict": self.strict, "model": self.model_path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResponseSchema:
        """The schema :meth:`to_json` wrote; its model is imported again when it can be (else answers are dicts)."""
        path = data.get("model")
        model = _import_model(path) if isinstance(path, str) else None
        return cls(str(data["name"]), dict(data["schema"]), model, bool(data.get("strict", True)),
                   path if model is not None else None)

    @property
    def digest(self) -> str:
        """A short hash of the schema (what the answers were checked against)."""
        return hashlib.sha256(json.dumps(self.schema, sort_keys=True).encode()).hexdigest()[:12]

    # -- checking one answer ---------------------------------------------------------------------------
    def validate(self, data: Any) -> tuple[Any, str | None]:
        """``(parsed, None)``: a model instance (or the data, for a JSON Schema); ``(None, why)`` when it does
        not follow the schema, ``why`` naming the first field at fault."""
        if self.model is not None:
            try:
                return self.model.model_validate(data), None
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
                return None, f"{loc}: {first['msg']} (got {_short(first.get('input'))})"
        return _validate_json_schema(self.schema, data)


#: ``module:Qualname`` of a model (a file path has a slash or a suffix a dotted module path lacks: checked on disk too).
_MODEL_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _clean(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "response"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_model(path: str) -> type[BaseModel] | None:
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseModel) else None


def _validate_json_schema(schema: Mapping[str, Any], data: Any) -> tuple[Any, str | None]:
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - installed with every extra that runs batches
        from batch_ops.errors import ConfigurationError

        raise ConfigurationError("checking answers against a JSON Schema needs the jsonschema package; fix: "
                                 "pip install jsonschema, or give a pydantic model") from None
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(data))
    if error is None:
        return data, None
    loc = ".".join(str(x) for x in error.absolute_path) or "(root)"
    return None, f"{loc}: {error.message[:200]}"

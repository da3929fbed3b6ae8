"""Each provider's JSON Schema subset, checked before anything is uploaded.

A schema a provider refuses fails the whole batch at create time (OpenAI, Anthropic) or every request
in it (Gemini): money and a day lost. So the schema is checked here first, against the subset of the
dialect's form (``Dialect.structured_form``), and each problem names the keyword, where it is
(a JSON pointer into the schema) and the fix.

===========  ================================================================================
form         what the provider takes (documented subsets; see docs/structured-outputs.md)
===========  ================================================================================
``openai``   strict ``json_schema``: the root an object; every object ``additionalProperties:
             false`` and all its properties in ``required``; no ``allOf``, ``not``,
             ``if``/``then``/``else``, ``dependentRequired``/``dependentSchemas``,
             ``patternProperties``, ``unevaluatedProperties``, ``propertyNames``,
             ``minProperties``/``maxProperties``, ``contains``; at most 10 levels of nesting,
             5,000 properties, 1,000 enum values
``anthropic``  a tool's ``input_schema``: the root ``type: object``
``gemini``   ``responseJsonSchema``: no ``allOf``, ``not``, ``if``/``then``/``else``,
             ``patternProperties``, ``dependentSchemas``, ``unevaluatedProperties``
===========  ================================================================================

Examples:
    >>> [p.message for p in schema_problems({"type": "object", "properties": {"a": {"type": "string"}}},
    ...                                     "openai")]  # doctest: +NORMALIZE_WHITESPACE
    ["at /: an object needs additionalProperties: false in OpenAI's strict mode",
     "at /: property 'a' is not in required (OpenAI's strict mode requires every property)"]
    >>> schema_problems({"type": "array"}, "anthropic")[0].fix
    "wrap it: {'type': 'object', 'properties': {'items': <your schema>}, 'required': ['items']}"
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from batch_ops.errors import Problem

__all__ = ["FORMS", "schema_problems"]

_OPENAI_UNSUPPORTED = ("allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
                       "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
                       "maxProperties", "contains")
_GEMINI_UNSUPPORTED = ("allOf", "not", "if", "then", "else", "patternProperties", "dependentSchemas",
                       "unevaluatedProperties")
#: Keywords whose value is a schema, a list of schemas, or a map of schemas: where the walk goes.
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
        "unevaluatedProperties")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")

#: The forms a dialect may name (``Dialect.structured_form``) and who uses them.
FORMS = {"openai": "OpenAI, Azure OpenAI and the OpenAI-shaped APIs", "anthropic": "Anthropic",
         "gemini": "Gemini"}
_TITLES = {"openai": "OpenAI's strict mode", "anthropic": "Anthropic's tool input_schema",
           "gemini": "Gemini's responseJsonSchema"}
_MAX_DEPTH = 10
_MAX_PROPERTIES = 5000
_MAX_ENUM = 1000


def _walk(node: Any, path: str, depth: int = 0) -> Iterator[tuple[dict[str, Any], str, int]]:
    if not isinstance(node, dict):
        return
    yield node, path or "/", depth
    for key in _ONE:
        if isinstance(node.get(key), dict):
            yield from _walk(node[key], f"{path}/{key}", depth + (key == "items"))
    for key in _MANY:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                yield from _walk(sub, f"{path}/{key}/{i}", depth)
    for key in _MAP:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield from _walk(sub, f"{path}/{key}/{name}", depth + (key == "properties"))


def _p(form: str, message: str, fix: str, where: str) -> Problem:
    return Problem(rule="unsupported_schema", param=f"response_schema{where if where != '/' else ''}",
                   message=f"at {where}: {message}", fix=fix)


def schema_problems(schema: Mapping[str, Any], form: str) -> list[Problem]:
    """What ``form``'s provider would refuse in ``schema`` (empty: it takes it). ``form``: see :data:`FORMS`."""
    title = _TITLES.get(form, form)
    root = dict(schema)
    problems: list[Problem] = []
    if form in ("openai", "anthropic") and root.get("type") != "object":
        problems.append(_p(form, f"the root is {root.get('type') or 'not typed'}, and {title} needs an object",
                           "wrap it: {'type': 'object', 'properties': {'items': <your schema>}, 'required': "
                           "['items']}", "/"))
    if form == "anthropic":
        return problems
    unsupported = _OPENAI_UNSUPPORTED if form == "openai" else _GEMINI_UNSUPPORTED
    properties = 0
    for node, where, depth in _walk(root, ""):
        for key in unsupported:
            if key in node:
                problems.append(_p(form, f"{key!r} is not supported by {title}",
                                   f"remove {key!r} (say it in the prompt, or restructure the schema)", where))
        if form != "openai":
            continue
        if depth > _MAX_DEPTH:
            problems.append(_p(form, f"nested {depth} levels deep; {title} allows {_MAX_DEPTH}",
                               "flatten the schema", where))
        props = node.get("properties")
        if node.get("type") == "object" or isinstance(props, dict):
            if node.get("additionalProperties") is not False:
                problems.append(_p(form, f"an object needs additionalProperties: false in {title}",
                                   "add \"additionalProperties\": false to this object (ResponseSchema.of(model) "
                                   "does it for a pydantic model)", where))
            if isinstance(props, dict):
                properties += len(props)
                required = set(node.get("required") or ())
                problems.extend(
                    _p(form, f"property {name!r} is not in required ({title} requires every property)",
                       f"add {name!r} to required; for an optional field make its type nullable, e.g. "
                       "{\"type\": [\"string\", \"null\"]}", where)
                    for name in props if name not in required)
        enum = node.get("enum")
        if isinstance(enum, list) and len(enum) > _MAX_ENUM:
            problems.append(_p(form, f"an enum of {len(enum)} values; {title} allows {_MAX_ENUM}",
                               "shorten the enum", where))
    if properties > _MAX_PROPERTIES:
        problems.append(_p(form, f"{properties} properties in all; {title} allows {_MAX_PROPERTIES}",
                           "split the work into smaller schemas", "/"))
    return problems

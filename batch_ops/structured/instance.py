"""The smallest JSON value a schema accepts: what the local server answers a request with a schema.

Examples:
    >>> minimal_instance({"type": "object", "properties": {"name": {"type": "string", "minLength": 2},
    ...     "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1},
    ...     "n": {"type": ["integer", "null"], "minimum": 3}}, "required": ["name", "tags", "n"]})
    {'name': 'xx', 'tags': ['a'], 'n': 3}
    >>> minimal_instance({"$defs": {"P": {"type": "number"}}, "type": "object",
    ...                   "properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"]})
    {'p': 0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["minimal_instance"]

_ORDER = ("object", "string", "integer", "number", "boolean", "array", "null")


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ():
        node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}


def minimal_instance(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A small value ``schema`` accepts: required properties only, the fewest items, the lowest numbers."""
    root = schema if root is None else root
    if depth > 32:
        return None
    if "$ref" in schema:
        return minimal_instance(_resolve(root, str(schema["$ref"])), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            if key == "allOf":
                merged: dict[str, Any] = {}
                for sub in schema[key]:
                    merged.update(sub if isinstance(sub, Mapping) else {})
                return minimal_instance(merged, root, depth + 1)
            return minimal_instance(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in _ORDER if k in kind), None)
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = _map(schema.get("properties"))
        return {name: minimal_instance(props[name] if isinstance(props.get(name), Mapping) else {}, root, depth + 1)
                for name in schema.get("required") or () if name in props or not props}
    if kind == "array":
        items = _map(schema.get("items"))
        return [minimal_instance(items, root, depth + 1) for _ in range(int(schema.get("minItems") or 0))]
    if kind == "string":
        return "x" * int(schema.get("minLength") or 0) if "format" not in schema else _formatted(schema["format"])
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = 0 if low is None else (low + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else low)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _formatted(fmt: str) -> str:
    return {"date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "time": "00:00:00", "email": "a@b.example",
            "uri": "https://example.com", "uuid": "00000000-0000-4000-8000-000000000000"}.get(fmt, "x")

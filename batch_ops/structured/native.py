"""A schema in each provider's own words, written into a request line (by the dialect's ``structured_form``).

=============  ==================================================================================
form           where the schema goes in a request line
=============  ==================================================================================
``openai``     chat: ``body.response_format = {"type": "json_schema", "json_schema": {"name",
               "schema", "strict": true}}``; responses: ``body.text.format = {"type":
               "json_schema", "name", "schema", "strict": true}``
``anthropic``  a forced tool: ``params.tools += [{"name", "description", "input_schema"}]``,
               ``params.tool_choice = {"type": "tool", "name"}``: the answer is the tool's input
``gemini``     ``request.generation_config.response_mime_type = "application/json"`` and
               ``response_json_schema`` (camelCase when the request writes ``generationConfig``)
=============  ==================================================================================

A line that already carries a schema of its own (a ``response_format``, a ``tool_choice``, a
``response_schema``/``response_json_schema``) is left as it is: the user said what they want.

Examples:
    >>> s = ResponseSchema.of({"type": "object", "properties": {}, "additionalProperties": False}, name="a")
    >>> with_schema({"custom_id": "1", "body": {"model": "m", "messages": []}}, s, form="openai",
    ...             body_field="body")["body"]["response_format"]["json_schema"]["name"]
    'a'
    >>> with_schema({"custom_id": "1", "params": {"model": "m", "messages": []}}, s, form="anthropic",
    ...             body_field="params")["params"]["tool_choice"]
    {'type': 'tool', 'name': 'a'}
    >>> with_schema({"key": "1", "request": {"contents": []}}, s, form="gemini",
    ...             body_field="request")["request"]["generation_config"]["response_mime_type"]
    'application/json'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batch_ops.structured.schema import ResponseSchema

__all__ = ["carries_schema", "with_schema"]

_DESCRIPTION = "Give the answer by calling this tool with arguments that follow its input schema."


def _openai(body: dict[str, Any], schema: ResponseSchema) -> None:
    if "messages" not in body and "input" in body:  # the Responses API
        text = dict(body.get("text") or {})
        text["format"] = {"type": "json_schema", "name": schema.name, "schema": schema.schema,
                          "strict": schema.strict}
        body["text"] = text
        return
    body["response_format"] = {"type": "json_schema", "json_schema": {
        "name": schema.name, "schema": schema.schema, "strict": schema.strict}}


def _anthropic(params: dict[str, Any], schema: ResponseSchema) -> None:
    tools = [t for t in params.get("tools") or () if not (isinstance(t, Mapping) and t.get("name") == schema.name)]
    tools.append({"name": schema.name, "description": _DESCRIPTION, "input_schema": schema.schema})
    params["tools"] = tools
    params["tool_choice"] = {"type": "tool", "name": schema.name}


def _gemini(request: dict[str, Any], schema: ResponseSchema) -> None:
    camel = "generationConfig" in request
    key = "generationConfig" if camel else "generation_config"
    config = dict(request.get(key) or {})
    config["responseMimeType" if camel else "response_mime_type"] = "application/json"
    config["responseJsonSchema" if camel else "response_json_schema"] = schema.schema
    request[key] = config


_WRITERS = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}


def carries_schema(body: Mapping[str, Any], form: str) -> bool:
    """Whether a line's body already asks for a structured answer of its own.

    Examples:
        >>> carries_schema({"response_format": {"type": "json_object"}}, "openai")
        True
        >>> carries_schema({"generationConfig": {"responseSchema": {}}}, "gemini")
        True
    """
    if form == "openai":
        return "response_format" in body or isinstance((body.get("text") or {}).get("format"), Mapping)
    if form == "anthropic":
        return "tool_choice" in body or "output_format" in body
    config = body.get("generationConfig") or body.get("generation_config") or {}
    return any(k in config for k in ("responseSchema", "response_schema", "responseJsonSchema",
                                     "response_json_schema"))


def with_schema(line: dict[str, Any], schema: ResponseSchema, *, form: str, body_field: str) -> dict[str, Any]:
    """``line`` with ``schema`` in ``form``'s words (changed in place and returned); unchanged when it
    carries a schema of its own (:func:`carries_schema`) or has no body."""
    body = line.get(body_field)
    if not isinstance(body, dict) or carries_schema(body, form):
        return line
    _WRITERS[form](body, schema)
    return line

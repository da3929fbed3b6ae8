"""Structured answers on the local server: JSON that follows the request's schema, and invalid ones on demand.

A chat request that asks for a schema — ``response_format: {type: json_schema}``, or a forced function
tool (``tool_choice`` naming one; Anthropic's forced tool arrives as one) — is answered with the
smallest value the schema accepts (:func:`batch_ops.structured.minimal_instance`): as the message's
content, or as the forced tool's call. The dialect routes render it in their own words (Anthropic: a
``tool_use`` block; Gemini: the text part).

The fault flags ``--invalid-share RATE --invalid-kind KIND`` spoil a repeatable share of those answers
(chosen by ``seed``, ``custom_id`` and ``model``): ``bad_json`` (not JSON), ``wrong_type`` (JSON the schema
refuses), ``truncated`` (cut, ``finish_reason: length``: Anthropic's ``max_tokens``, Gemini's
``MAX_TOKENS``), ``refusal`` (``message.refusal``: Anthropic's ``stop_reason: refusal``, Gemini's
``SAFETY``) or ``mixed`` (one of them per request). A request (its ``custom_id`` and ``model``: the same
eval set sent to several providers is drawn for each) is spoiled at most ``--invalid-rounds`` times
(default 1): the repair round that asks again gets a valid answer, so repair is testable offline.

Examples:
    >>> body = {"model": "m", "messages": [], "response_format": {"type": "json_schema", "json_schema": {
    ...     "name": "a", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}}
    >>> wanted(body).schema, wanted(body).tool
    ({'type': 'object', 'properties': {'n': {'type': 'integer'}}, 'required': ['n']}, None)
    >>> spoil_content('{"n": 0}', {"type": "object", "properties": {"n": {"type": "integer"}}}, "wrong_type")
    '{"n": "not a integer"}'
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batch_ops.structured import minimal_instance

__all__ = ["INVALID_KINDS", "InvalidAnswers", "Wanted", "spoil_content", "structured_answer", "wanted"]

#: What ``--invalid-kind`` takes.
INVALID_KINDS = ("bad_json", "wrong_type", "truncated", "refusal", "mixed")
_KINDS = INVALID_KINDS[:-1]
REFUSAL = "I'm sorry, but I can't help with that request."
#: Requests remembered as spoiled, at most (a long-running server forgets the oldest: memory stays bounded).
_REMEMBERED = 1_000_000


@dataclass(frozen=True)
class Wanted:
    """The schema a chat request asks its answer to follow, and the forced tool's name (None: the content)."""

    schema: Mapping[str, Any]
    tool: str | None = None


def wanted(body: Mapping[str, Any]) -> Wanted | None:
    """The schema a chat request asks for, if any (see the module)."""
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return Wanted(schema if isinstance(schema, Mapping) else {})
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        for tool in body.get("tools") or ():
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if isinstance(fn, Mapping) and fn.get("name") == name:
                params = fn.get("parameters")
                return Wanted(params if isinstance(params, Mapping) else {}, str(name))
    return None


def structured_answer(want: Wanted) -> str:
    """The JSON text of the smallest answer the schema accepts."""
    return json.dumps(minimal_instance(want.schema), separators=(", ", ": "))


def spoil_content(content: str, schema: Mapping[str, Any], kind: str) -> str:
    """``content`` (valid JSON) made invalid in the way ``kind`` says (``bad_json``, ``wrong_type``, ``truncated``)."""
    if kind == "bad_json":
        return "Here is the answer: " + content.rstrip("}") + ","
    if kind == "truncated":
        return content[: max(1, len(content) // 2)]
    value = json.loads(content)
    if isinstance(value, dict) and value:
        name = next(iter(value))
        prop = (schema.get("properties") or {}).get(name) or {}
        kind_of = prop.get("type") if isinstance(prop, Mapping) else None
        value[name] = 12345 if kind_of == "string" else f"not a {kind_of or 'value'}"
        return json.dumps(value)
    return json.dumps(["not", "an", "object"])


def _draw(seed: int, custom_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}:invalid:{custom_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class InvalidAnswers:
    """The ``--invalid-share`` fault: which structured answers to spoil, and how (see the module).

    Examples:
        >>> faults = InvalidAnswers(share=1.0, kind="refusal", rounds=1, seed=1)
        >>> body = {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]}
        >>> want = Wanted({"type": "object"})
        >>> faults.spoil("a", want, body)["choices"][0]["message"]["refusal"] == REFUSAL
        True
        >>> faults.spoil("a", want, body) is body  # spoiled once: the second answer is valid
        True
    """

    def __init__(self, *, share: float, kind: str, rounds: int, seed: int) -> None:
        self.share, self.kind, self.rounds, self.seed = share, kind, rounds, seed
        self._spoiled: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.share > 0

    def _take(self, custom_id: str) -> bool:
        if _draw(self.seed, custom_id) >= self.share:
            return False
        with self._lock:
            times = self._spoiled.get(custom_id, 0)
            if times >= self.rounds:
                return False
            if len(self._spoiled) >= _REMEMBERED:
                self._spoiled.pop(next(iter(self._spoiled)))
            self._spoiled[custom_id] = times + 1
        return True

    def kind_for(self, custom_id: str) -> str:
        if self.kind != "mixed":
            return self.kind
        return _KINDS[int(_draw(self.seed + 1, custom_id) * len(_KINDS))]

    def spoil(self, custom_id: Any, want: Wanted, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` (a chat completion answering a structured request) spoiled when this request's draw says so."""
        if not (self.active and isinstance(custom_id, str)):
            return body
        request = f"{custom_id}\x00{body.get('model')}"
        if not self._take(request):
            return body
        kind = self.kind_for(request)
        choice = dict(body["choices"][0])
        message = dict(choice.get("message") or {})
        calls = message.get("tool_calls")
        if kind == "refusal":
            message.update(content=None, refusal=REFUSAL)
            message.pop("tool_calls", None)
            choice["finish_reason"] = "stop"
        elif calls and kind == "bad_json":  # a model that answered in words instead of calling the tool
            message.update(content=spoil_content(calls[0]["function"]["arguments"], want.schema, kind))
            message.pop("tool_calls", None)
            choice["finish_reason"] = "stop"
        elif calls:
            call = dict(calls[0])
            call["function"] = {**call["function"], "arguments": spoil_content(
                call["function"]["arguments"], want.schema, kind)}
            message["tool_calls"] = [call]
        else:
            message["content"] = spoil_content(str(message.get("content") or "{}"), want.schema, kind)
        if kind == "truncated":
            choice["finish_reason"] = "length"
        choice["message"] = message
        return {**body, "choices": [choice, *body["choices"][1:]]}


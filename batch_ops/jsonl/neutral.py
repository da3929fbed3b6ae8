"""Provider-neutral chat requests, and their translation into each batch API's own request line.

One eval set, written once as neutral requests (``custom_id``, ``model``, ``messages``, ``system``,
``max_tokens``, ``temperature``, ``stop``), runs on several vendors unchanged: the request file is
written for the connection's provider, each request translated by the vocabulary its
:class:`~batch_ops.jsonl.LineShape` names (``LineShape.name``):

=============  ==================================================================================
``openai``     ``{custom_id, method, url: /v1/chat/completions, body: {model, messages (the system
               first), max_tokens, temperature, stop}}``; lines without ``method``/``url`` for APIs
               whose lines carry none (Together, Novita)
``anthropic``  ``{custom_id, params: {model, max_tokens, system, messages, temperature,
               stop_sequences}}``
``gemini``     ``{key, request: {contents: [{role: user|model, parts: [{text}]}], system_instruction,
               generation_config: {max_output_tokens, temperature, stop_sequences}}}``; the model
               is the batch's, not the line's: the translation says which model the lines want
=============  ==================================================================================

A request is neutral when it is a :class:`ChatRequest`, or a mapping with top-level ``messages``
and none of a native line's body fields (``body``, ``params``, ``request``): a native line passes
through unchanged. What a provider cannot take (a role it does not know, no ``max_tokens`` for
Anthropic, which requires it) is a :class:`~batch_ops.errors.Problem` naming the request and the fix,
raised before anything is written or paid for.

Examples:
    >>> req = ChatRequest(custom_id="q-1", model="m", system="Be brief.", max_tokens=64,
    ...                   messages=[{"role": "user", "content": "2+2?"}])
    >>> translate(req, "openai").line["body"]["messages"][0]
    {'role': 'system', 'content': 'Be brief.'}
    >>> translate(req, "anthropic").line
    {'custom_id': 'q-1', 'params': {'model': 'm', 'max_tokens': 64, 'system': 'Be brief.', \
'messages': [{'role': 'user', 'content': '2+2?'}]}}
    >>> done = translate(req, "gemini")
    >>> done.line["request"]["contents"], done.model
    ([{'role': 'user', 'parts': [{'text': '2+2?'}]}], 'm')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from batch_ops.errors import InputValidationError, Problem
from batch_ops.models import canonical_endpoint

__all__ = ["CHAT_ENDPOINT", "NATIVE_BODY_FIELDS", "TRANSLATIONS", "ChatRequest", "Translated", "is_neutral",
           "translate"]

#: The endpoint a neutral chat request goes to on an OpenAI-shaped API.
CHAT_ENDPOINT = "/v1/chat/completions"
#: A mapping holding one of these is a native request line, never translated.
NATIVE_BODY_FIELDS = ("body", "params", "request")
#: The roles a neutral message may have (``system`` only before the conversation: it becomes the system prompt).
ROLES = ("system", "user", "assistant")
_FIELDS = ("custom_id", "model", "messages", "system", "max_tokens", "temperature", "stop")


@dataclass(frozen=True, kw_only=True)
class ChatRequest:
    """One chat request, said the same way for every provider.

    Attributes:
        custom_id: Names the request; its result comes back under it (Gemini's ``key``).
        model: The model (OpenAI-shaped and Anthropic: per line; Gemini: per batch, so every
            request of a batch must name the same one, or none).
        messages: ``{"role": "user" | "assistant", "content": str}`` in order; leading ``system``
            messages are the system prompt. ``content`` may also be a list of text parts
            (``{"type": "text", "text": ...}``).
        system: The system prompt (joined after leading ``system`` messages).
        max_tokens: Most tokens to generate (required by Anthropic).
        temperature: Sampling temperature.
        stop: One stop sequence or several.

    Examples:
        >>> ChatRequest(custom_id="a", model="m", messages=[{"role": "user", "content": "hi"}]).as_dict()
        {'custom_id': 'a', 'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}
    """

    custom_id: str
    model: str | None = None
    messages: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: str | Sequence[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The request as a plain dict (the fields that are set), as written to a neutral JSONL file."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = [dict(m) for m in value] if name == "messages" else (
                    list(value) if name == "stop" and not isinstance(value, str) else value)
        return out


@dataclass(frozen=True)
class Translated:
    """A neutral request in a provider's words: its native ``line``, and the ``model`` it wants (per batch
    for APIs whose lines name none)."""

    line: dict[str, Any]
    model: str | None


def is_neutral(item: Any) -> bool:
    """Whether ``item`` is a neutral chat request (translated) rather than a native line (passed through).

    Examples:
        >>> is_neutral({"custom_id": "a", "messages": []}), is_neutral({"custom_id": "a", "body": {"messages": []}})
        (True, False)
    """
    if isinstance(item, ChatRequest):
        return True
    return isinstance(item, Mapping) and "messages" in item and not any(k in item for k in NATIVE_BODY_FIELDS)


# ---------------------------------------------------------------------------------------------
# reading a neutral request
# ---------------------------------------------------------------------------------------------
@dataclass
class _Chat:
    """A neutral request, checked: the system prompt split out, the conversation as ``(role, [texts])``."""

    custom_id: Any
    model: str | None
    system: str | None
    turns: list[tuple[str, list[dict[str, Any]]]]
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    problems: list[Problem]


def _problem(rule: str, message: str, fix: str, param: str) -> Problem:
    return Problem(rule=rule, message=message, fix=fix, param=param)


def _parts(content: Any) -> list[dict[str, Any]] | None:
    """A message's content as text parts, or None when it holds something other than text."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append({"type": "text", "text": part})
            elif isinstance(part, Mapping) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            else:
                return None
        return parts
    return None


def _read(item: ChatRequest | Mapping[str, Any]) -> _Chat:
    raw = item.as_dict() if isinstance(item, ChatRequest) else dict(item)
    problems: list[Problem] = []
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        problems.append(_problem("unknown_field", f"a neutral request has no field {', '.join(map(repr, unknown))}",
                                 f"use only {', '.join(_FIELDS)}; for a provider's own parameters write its "
                                 "native line instead (it passes through unchanged)", unknown[0]))
    model = raw.get("model")
    if model is not None and not (isinstance(model, str) and model):
        problems.append(_problem("invalid_model", f"model is {model!r}, not a non-empty string",
                                 "name the model as a string, e.g. \"gpt-4o-mini\"", "model"))
        model = None
    systems: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    messages = raw.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        problems.append(_problem("missing_messages", "messages is missing or empty",
                                 'give at least one message, e.g. [{"role": "user", "content": "..."}]', "messages"))
        messages = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, Mapping) else None
        if role not in ROLES:
            problems.append(_problem("unknown_role", f"{where}.role is {role!r}, a role a neutral request cannot "
                                     "carry to every provider",
                                     f"use one of {', '.join(ROLES)} (tool calls and other roles: write the "
                                     "provider's native line)", f"{where}.role"))
            continue
        assert isinstance(message, Mapping)
        parts = _parts(message.get("content"))
        if parts is None:
            problems.append(_problem("unsupported_content", f"{where}.content is not text",
                                     "give content as a string or a list of text parts; images and files: write "
                                     "the provider's native line", f"{where}.content"))
            continue
        if role == "system":
            if turns:
                problems.append(_problem("unknown_role", f"{where} is a system message after the conversation "
                                         "began", "put system messages first (or use the system field): not every "
                                         "provider takes them mid-conversation", f"{where}.role"))
                continue
            systems.append("\n".join(p["text"] for p in parts))
            continue
        turns.append((role, parts))
    system = raw.get("system")
    if system is not None:
        if isinstance(system, str):
            systems.append(system)
        else:
            problems.append(_problem("invalid_system", f"system is {type(system).__name__}, not a string",
                                     "give the system prompt as one string", "system"))
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        problems.append(_problem("invalid_max_tokens", f"max_tokens is {max_tokens!r}",
                                 "give a positive whole number of tokens", "max_tokens"))
        max_tokens = None
    temperature = raw.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)):
        problems.append(_problem("invalid_temperature", f"temperature is {temperature!r}, not a number",
                                 "give a number, e.g. 0 or 0.7", "temperature"))
        temperature = None
    stop = raw.get("stop")
    stops: list[str] | None = None
    if isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop):
        stops = list(stop) or None
    elif stop is not None:
        problems.append(_problem("invalid_stop", f"stop is {stop!r}", "give a string or a list of strings", "stop"))
    return _Chat(raw.get("custom_id"), model, "\n\n".join(systems) or None, turns, max_tokens, temperature, stops,
                 problems)


def _texts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (the common case, and the smallest line); several as parts."""
    return parts[0]["text"] if len(parts) == 1 else parts


# ---------------------------------------------------------------------------------------------
# the translations, one small function per vocabulary
# ---------------------------------------------------------------------------------------------
def _openai(chat: _Chat, *, id_field: str, body_field: str, method_url: bool, endpoint: str | None) -> Translated:
    if chat.model is None:
        chat.problems.append(_problem("missing_model", "model is missing", "name the model of every request, e.g. "
                                      "\"gpt-4o-mini\" (on Azure OpenAI: the deployment's name)", "model"))
    if endpoint is not None and canonical_endpoint(endpoint) != CHAT_ENDPOINT:
        chat.problems.append(_problem("unsupported_endpoint", f"a chat request cannot go to {endpoint!r}",
                                      f"submit neutral chat requests to {CHAT_ENDPOINT}, or write native lines for "
                                      f"{endpoint}", "endpoint"))
    messages: list[dict[str, Any]] = []
    if chat.system:
        messages.append({"role": "system", "content": chat.system})
    messages.extend({"role": role, "content": _texts(parts)} for role, parts in chat.turns)
    body: dict[str, Any] = {"model": chat.model, "messages": messages}
    _put(body, max_tokens=chat.max_tokens, temperature=chat.temperature, stop=chat.stop)
    line: dict[str, Any] = {id_field: chat.custom_id}
    if method_url:
        line.update(method="POST", url=endpoint or CHAT_ENDPOINT)
    line[body_field] = body
    return Translated(line, chat.model)


def _anthropic(chat: _Chat, *, id_field: str, body_field: str, method_url: bool, endpoint: str | None) -> Translated:
    if chat.model is None:
        chat.problems.append(_problem("missing_model", "model is missing", "name the model of every request, e.g. "
                                      "\"claude-haiku-4-5\"", "model"))
    if chat.max_tokens is None:
        chat.problems.append(_problem("missing_max_tokens", "max_tokens is missing, and Anthropic requires it",
                                      "give every request a max_tokens (e.g. 1024)", "max_tokens"))
    params: dict[str, Any] = {"model": chat.model, "max_tokens": chat.max_tokens}
    _put(params, system=chat.system)
    params["messages"] = [{"role": role, "content": _texts(parts)} for role, parts in chat.turns]
    _put(params, temperature=chat.temperature, stop_sequences=chat.stop)
    return Translated({id_field: chat.custom_id, body_field: params}, chat.model)


_GEMINI_ROLES = {"user": "user", "assistant": "model"}


def _gemini(chat: _Chat, *, id_field: str, body_field: str, method_url: bool, endpoint: str | None) -> Translated:
    request: dict[str, Any] = {"contents": [
        {"role": _GEMINI_ROLES[role], "parts": [{"text": p["text"]} for p in parts]} for role, parts in chat.turns]}
    if chat.system:
        request["system_instruction"] = {"parts": [{"text": chat.system}]}
    config: dict[str, Any] = {}
    _put(config, max_output_tokens=chat.max_tokens, temperature=chat.temperature, stop_sequences=chat.stop)
    if config:
        request["generation_config"] = config
    return Translated({id_field: chat.custom_id, body_field: request}, chat.model)


def _put(target: dict[str, Any], **values: Any) -> None:
    target.update((k, v) for k, v in values.items() if v is not None)


#: How a neutral request becomes a native line, by :attr:`LineShape.name <batch_ops.jsonl.LineShape.name>`.
TRANSLATIONS: dict[str, Callable[..., Translated]] = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}


def translate(item: ChatRequest | Mapping[str, Any], vocabulary: str, *, id_field: str | None = None,
              body_field: str | None = None, method_url: bool = True, endpoint: str | None = None,
              model: str | None = None) -> Translated:
    """``item``, a neutral chat request, as a native line in ``vocabulary`` (a ``LineShape.name``).

    ``id_field``/``body_field``/``method_url`` are the line shape's (defaults: the vocabulary's own);
    ``endpoint`` the batch's, for OpenAI-shaped lines; ``model`` the model of a request that names none
    (the connection's: one eval set, a model per provider).

    Raises:
        InputValidationError: The request is not one a neutral request can say, or not one this provider
            can take (every finding named, with its fix).

    Examples:
        >>> translate({"custom_id": "a", "model": "m", "messages": [{"role": "tool", "content": "x"}]},
        ...           "gemini")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: request 'a': 1 problem:
          messages[0].role: unknown_role: messages[0].role is 'tool', a role ... (fix: use one of system, user, ...)
    """
    translation = TRANSLATIONS.get(vocabulary)
    if model and isinstance(item, Mapping) and not item.get("model"):
        item = {**item, "model": model}
    elif model and isinstance(item, ChatRequest) and not item.model:
        item = replace(item, model=model)
    chat = _read(item)
    if translation is None:
        raise InputValidationError([_problem(
            "untranslatable", f"there is no translation of neutral requests for {vocabulary!r} lines",
            f"write the provider's native lines (translations exist for {', '.join(sorted(TRANSLATIONS))})",
            "requests")], source=f"request {chat.custom_id!r}")
    defaults = {"openai": ("custom_id", "body"), "anthropic": ("custom_id", "params"), "gemini": ("key", "request")}
    own_id, own_body = defaults.get(vocabulary, ("custom_id", "body"))
    done = translation(chat, id_field=id_field or own_id, body_field=body_field or own_body, method_url=method_url,
                       endpoint=endpoint)
    if chat.problems:
        raise InputValidationError(chat.problems, source=f"request {chat.custom_id!r}")
    return done

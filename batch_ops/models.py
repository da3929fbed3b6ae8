"""Wire models of the OpenAI Files and Batches API (pydantic v2, frozen, unknown fields kept).

The models are tolerant readers: the API adds fields over time (kept in ``model_extra``),
Azure OpenAI may send capitalised statuses (``"Validating"``) and ISO-8601 timestamps, and
the published list example carries batches as JSON *strings*. All of these parse.

Examples:
    >>> b = Batch.model_validate({"id": "batch_1", "object": "batch", "endpoint": "/v1/embeddings",
    ...     "input_file_id": "file-1", "completion_window": "24h", "status": "In_Progress",
    ...     "created_at": "2024-03-26T16:45:33Z", "request_counts": {"total": 3, "completed": 1,
    ...     "failed": 0}, "shiny_new_field": 1})
    >>> b.status, b.status.is_terminal, b.created_at, b.model_extra["shiny_new_field"]
    (<BatchStatus.IN_PROGRESS: 'in_progress'>, False, 1711471533, 1)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batch_ops.process_state import STATE

__all__ = [
    "BATCH_ENDPOINTS",
    "ECHO_FINGERPRINT",
    "COMPLETION_WINDOWS",
    "METADATA_KEY_MAX",
    "METADATA_MAX_PAIRS",
    "METADATA_VALUE_MAX",
    "OUTPUT_EXPIRES_MAX_SECONDS",
    "OUTPUT_EXPIRES_MIN_SECONDS",
    "Batch",
    "BatchError",
    "InvalidAnswer",
    "BatchErrors",
    "BatchList",
    "BatchStatus",
    "CreateBatchRequest",
    "FileList",
    "FileObject",
    "InputTokensDetails",
    "OutputExpiresAfter",
    "OutputTokensDetails",
    "RequestCounts",
    "RequestLine",
    "ResultError",
    "ResultLine",
    "TEXT_READERS",
    "USAGE_READERS",
    "answer_text",
    "answer_usage",
    "ResultResponse",
    "Usage",
    "azure_endpoint",
    "canonical_endpoint",
    "check_create_params",
]

#: The endpoints a batch may target (POST /batches ``endpoint``).
#: The ``system_fingerprint`` of every answer from the local server's ``echo`` engine, which repeats
#: prompts instead of answering them: the eval report says so when it scores such answers.
ECHO_FINGERPRINT = "fp_batch_ops_echo"

BATCH_ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
COMPLETION_WINDOWS: tuple[str, ...] = ("24h",)


def canonical_endpoint(endpoint: Any) -> Any:
    """Azure OpenAI documents batch endpoints without the ``/v1`` prefix (``/chat/completions``):
    the OpenAI spelling of the same endpoint, or the value unchanged.

    Examples:
        >>> canonical_endpoint("/chat/completions"), canonical_endpoint("/v1/embeddings"), canonical_endpoint("/x")
        ('/v1/chat/completions', '/v1/embeddings', '/x')
    """
    if isinstance(endpoint, str) and not endpoint.startswith("/v1/") and "/v1" + endpoint in BATCH_ENDPOINTS:
        return "/v1" + endpoint
    return endpoint


def azure_endpoint(endpoint: str) -> str:
    """The spelling Azure OpenAI documents for a batch endpoint (no ``/v1``).

    Examples:
        >>> azure_endpoint("/v1/chat/completions")
        '/chat/completions'
    """
    canonical = canonical_endpoint(endpoint)
    return canonical.removeprefix("/v1") if canonical in BATCH_ENDPOINTS else endpoint
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
OUTPUT_EXPIRES_MIN_SECONDS = 3600
OUTPUT_EXPIRES_MAX_SECONDS = 2_592_000

_WIRE = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class BatchStatus(str, Enum):
    """Lifecycle status of a batch.

    Examples:
        >>> BatchStatus("completed").is_terminal, BatchStatus.FINALIZING.is_terminal
        (True, False)
    """

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True when the batch will not change status again."""
        return self in _TERMINAL

    @property
    def is_known(self) -> bool:
        """False for a status this version of batch_ops has never heard of (see :meth:`_missing_`)."""
        return self._name_ in type(self).__members__

    @classmethod
    def _missing_(cls, value: object) -> BatchStatus | None:
        """A status the API added after this release (``"queued"``, ``"paused"``) is accepted, not
        refused, as the official SDK accepts it: a new status of its own, never terminal, so a wait
        keeps polling until a status it knows ends the batch.

        Examples:
            >>> s = BatchStatus("queued")
            >>> s.value, s.is_terminal, s.is_known, BatchStatus("queued") is s
            ('queued', False, False, True)
        """
        if not isinstance(value, str) or not value or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", value):
            return None
        # One member per unknown value for the life of the process (``is`` compares as it should);
        # kept in the process state, never in a module global: see batch_ops.process_state.
        unknown: dict[str, BatchStatus] = STATE.slot("models.unknown_statuses", dict)
        with STATE.lock("models.unknown_statuses"):
            member = unknown.get(value)
            if member is None:
                member = str.__new__(cls, value)
                member._name_ = value.upper()
                member._value_ = value
                unknown[value] = member
        return member

    @classmethod
    def parse(cls, value: Any) -> BatchStatus:
        """Normalise ``"Validating"``, ``"in progress"`` or ``"InProgress"`` to a member."""
        if isinstance(value, cls):
            return value
        text = str(value).strip()
        text = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", text)  # InProgress -> In_Progress
        text = text.lower().replace(" ", "_").replace("-", "_")
        if text == "canceled":  # American spelling seen from some gateways
            text = "cancelled"
        if text == "canceling":
            text = "cancelling"
        return cls(text)




_TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})


def _to_epoch(value: Any) -> Any:
    """Timestamps arrive as epoch seconds (OpenAI) or ISO-8601 strings (some Azure versions)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return int(float(text))
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            from datetime import timezone

            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp())
    return value


class RequestCounts(BaseModel):
    """How many requests the batch holds, and how many finished or failed so far.

    Examples:
        >>> RequestCounts.model_validate({"total": None, "completed": None, "failed": None})  # Azure, validating
        RequestCounts(total=0, completed=0, failed=0)
    """

    model_config = _WIRE
    total: int = 0
    completed: int = 0
    failed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _null_counts(cls, data: Any) -> Any:
        # Azure OpenAI sends every count as null until the batch is validated.
        if isinstance(data, dict):
            data = {k: (0 if v is None and k in ("total", "completed", "failed") else v) for k, v in data.items()}
        return data

    @property
    def done(self) -> int:
        """Requests that reached an end, successful or not."""
        return self.completed + self.failed


class InputTokensDetails(BaseModel):
    model_config = _WIRE
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    model_config = _WIRE
    reasoning_tokens: int = 0


class Usage(BaseModel):
    """Token usage of a batch (batches created after 2025-09-07), or summed over several.

    Examples:
        >>> (Usage(input_tokens=3, output_tokens=2, total_tokens=5)
        ...  + Usage(input_tokens=1, total_tokens=1)).total_tokens
        6
    """

    model_config = _WIRE
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    @model_validator(mode="before")
    @classmethod
    def _null_details(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if v is not None}
        return data

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=self.input_tokens_details.cached_tokens + other.input_tokens_details.cached_tokens
            ),
            output_tokens=self.output_tokens + other.output_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=self.output_tokens_details.reasoning_tokens
                + other.output_tokens_details.reasoning_tokens
            ),
            total_tokens=self.total_tokens + other.total_tokens,
        )


class BatchError(BaseModel):
    """One entry of ``Batch.errors.data``: why a batch failed validation."""

    model_config = _WIRE
    code: str | None = None
    message: str | None = None
    line: int | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    model_config = _WIRE
    object: str = "list"
    data: list[BatchError] = Field(default_factory=list)


class Batch(BaseModel):
    """A batch as the API returns it. Every documented field; unknown ones are kept."""

    model_config = _WIRE
    id: str
    object: str = "batch"
    #: None only from servers that leave it out (Azure OpenAI's documented answers do).
    endpoint: str | None = None
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage | None = None
    metadata: dict[str, str] | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> BatchStatus:
        return BatchStatus.parse(value)

    @field_validator(
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        mode="before",
    )
    @classmethod
    def _timestamps(cls, value: Any) -> Any:
        return _to_epoch(value)

    @field_validator("output_file_id", "error_file_id", mode="before")
    @classmethod
    def _empty_file_id(cls, value: Any) -> Any:
        # A clean batch may report error_file_id "" : treat it as absent.
        return value or None

    @field_validator("request_counts", mode="before")
    @classmethod
    def _null_counts(cls, value: Any) -> Any:
        return value if value is not None else {}

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def summary(self) -> dict[str, Any]:
        """The XCom / task-result contract: ids, status, counts and usage as plain JSON.

        Examples:
            >>> sorted(Batch(id="b", endpoint="/v1/embeddings", input_file_id="f",
            ...     status="completed", created_at=0).summary())
            ['batch_id', 'error_file_id', 'input_file_id', 'output_file_id', 'request_counts', 'status', 'usage']
        """
        return {
            "batch_id": self.id,
            "status": self.status.value,
            "input_file_id": self.input_file_id,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "request_counts": self.request_counts.model_dump(include={"total", "completed", "failed"}),
            "usage": self.usage.model_dump() if self.usage is not None else None,
        }


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _loads_lenient(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # The published list example has a trailing comma inside ``metadata``.
        return json.loads(_TRAILING_COMMA.sub(r"\1", text))


class BatchList(BaseModel):
    """One page of ``GET /batches``; ``last_id`` is the cursor for the next page; iterating the
    page yields its batches."""

    model_config = _WIRE
    object: str = "list"
    data: list[Batch] = Field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @field_validator("data", mode="before")
    @classmethod
    def _string_items(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_loads_lenient(v) if isinstance(v, str) else v for v in value]
        return value

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        """The page's batches, as the official SDK's page yields them (auto-paging: ``iter_all``)."""
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class FileObject(BaseModel):
    """A file as the Files API returns it."""

    model_config = _WIRE
    id: str
    object: str = "file"
    bytes: int | None = None
    created_at: int | None = None
    filename: str | None = None
    purpose: str | None = None
    expires_at: int | None = None
    status: str | None = None

    @field_validator("created_at", "expires_at", mode="before")
    @classmethod
    def _timestamps(cls, value: Any) -> Any:
        return _to_epoch(value)


class FileList(BaseModel):
    """One page of files; iterating it yields the files, as the official SDK's page does."""

    model_config = _WIRE
    object: str = "list"
    data: list[FileObject] = Field(default_factory=list)
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    def __iter__(self) -> Iterator[FileObject]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class OutputExpiresAfter(BaseModel):
    """When the output and error files expire: ``seconds`` after ``created_at`` (1 h .. 30 days)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    anchor: Literal["created_at"] = "created_at"
    seconds: int


def check_create_params(
    *,
    endpoint: Any,
    completion_window: Any = "24h",
    metadata: Any = None,
    output_expires_after: Any = None,
    azure: bool = False,
    completion_windows: tuple[str, ...] = COMPLETION_WINDOWS,
    endpoints: tuple[str, ...] = BATCH_ENDPOINTS,
) -> list[tuple[str, str, str]]:
    """Check the POST /batches parameters; return ``(param, problem, fix)`` for each violation.

    Shared by the client (raises before uploading) and the local server (answers 400), so the
    two cannot disagree. ``azure`` also accepts Azure OpenAI's spelling (``/chat/completions``);
    ``completion_windows`` are the windows the API accepts, ``endpoints`` the endpoints it takes (a
    dialect's limits).

    Examples:
        >>> [p for p, _, _ in check_create_params(endpoint="/v1/chat", completion_window="48h")]
        ['endpoint', 'completion_window']
    """
    found: list[tuple[str, str, str]] = []
    if (canonical_endpoint(endpoint) if azure else endpoint) not in endpoints:
        found.append(
            ("endpoint", f"unsupported endpoint {endpoint!r}", "use one of " + ", ".join(endpoints))
        )
    if completion_window not in completion_windows:
        if len(completion_windows) == 1:
            fix = f"use {completion_windows[0]!r}, the only window"
        elif len(completion_windows) > 8:  # a range (Groq: 24h to 7d)
            fix = f"use a window from {completion_windows[0]!r} to {completion_windows[-1]!r}, e.g. '48h'"
        else:
            fix = "use one of " + ", ".join(repr(w) for w in completion_windows)
        found.append(("completion_window", f"unsupported completion_window {completion_window!r}", fix))
    if metadata is not None:
        if not isinstance(metadata, dict):
            found.append(("metadata", "metadata must be an object of string pairs", "pass a dict[str, str]"))
        else:
            if len(metadata) > METADATA_MAX_PAIRS:
                found.append(
                    (
                        "metadata",
                        f"{len(metadata)} metadata pairs, the limit is {METADATA_MAX_PAIRS}",
                        f"keep at most {METADATA_MAX_PAIRS} keys",
                    )
                )
            for key, value in metadata.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    found.append(
                        (f"metadata.{key}", "metadata keys and values must be strings", "convert the value with str()")
                    )
                    continue
                if len(key) > METADATA_KEY_MAX:
                    found.append(
                        (
                            "metadata",
                            f"metadata key {key[:20]!r}... is {len(key)} characters, the limit is {METADATA_KEY_MAX}",
                            f"shorten the key to {METADATA_KEY_MAX} characters",
                        )
                    )
                if len(value) > METADATA_VALUE_MAX:
                    found.append(
                        (
                            f"metadata.{key}",
                            f"value is {len(value)} characters, the limit is {METADATA_VALUE_MAX}",
                            f"shorten the value to {METADATA_VALUE_MAX} characters",
                        )
                    )
    if output_expires_after is not None:
        oea = output_expires_after
        if isinstance(oea, OutputExpiresAfter):
            oea = oea.model_dump()
        if not isinstance(oea, dict) or set(oea) != {"anchor", "seconds"}:
            found.append(
                (
                    "output_expires_after",
                    "output_expires_after must be {'anchor': 'created_at', 'seconds': N}",
                    "pass exactly those two keys (the API requires the anchor)",
                )
            )
        else:
            if oea.get("anchor") != "created_at":
                found.append(
                    (
                        "output_expires_after.anchor",
                        f"unsupported anchor {oea.get('anchor')!r}",
                        "use anchor 'created_at'",
                    )
                )
            seconds = oea.get("seconds")
            if (
                not isinstance(seconds, int)
                or isinstance(seconds, bool)
                or not OUTPUT_EXPIRES_MIN_SECONDS <= seconds <= OUTPUT_EXPIRES_MAX_SECONDS
            ):
                found.append(
                    (
                        "output_expires_after.seconds",
                        f"seconds={seconds!r} is outside {OUTPUT_EXPIRES_MIN_SECONDS}..{OUTPUT_EXPIRES_MAX_SECONDS}",
                        "choose between 3600 (1 hour) and 2592000 (30 days)",
                    )
                )
    return found


class CreateBatchRequest(BaseModel):
    """The body of POST /batches, validated on construction.

    Examples:
        >>> CreateBatchRequest(input_file_id="file-1", endpoint="/v1/chat/completions").completion_window
        '24h'
        >>> CreateBatchRequest(input_file_id="file-1", endpoint="/v1/chat/completions",
        ...                    completion_window="48h")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for CreateBatchRequest
        ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = None

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problems = check_create_params(
                endpoint=data.get("endpoint"),
                completion_window=data.get("completion_window", "24h"),
                metadata=data.get("metadata"),
                output_expires_after=data.get("output_expires_after"),
            )
            if problems:
                raise ValueError("; ".join(f"{param}: {msg} (fix: {fix})" for param, msg, fix in problems))
        return data

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class RequestLine(BaseModel):
    """One line of a batch input file.

    Examples:
        >>> RequestLine(custom_id="q-1", url="/v1/chat/completions",
        ...             body={"model": "m", "messages": []}).method
        'POST'
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    custom_id: str
    method: Literal["POST"] = "POST"
    url: str
    body: dict[str, Any]


class ResultResponse(BaseModel):
    model_config = _WIRE
    status_code: int
    request_id: str | None = None
    body: Any = None


class ResultError(BaseModel):
    model_config = _WIRE
    code: str | None = None
    message: str | None = None


class InvalidAnswer(BaseModel):
    """Why an answer does not give the structured result asked for: ``reason`` is ``bad_json`` (not JSON),
    ``schema`` (JSON the schema refuses), ``refusal`` (the model declined) or ``truncated`` (cut by the
    token limit); ``message`` says what was wrong, for a person and for a repair round's prompt."""

    model_config = _WIRE
    reason: str
    message: str = ""


class ResultLine(BaseModel):
    """One line of an output or error file, or a joined result: the same shape whatever the provider.

    ``ok`` is True for an HTTP 2xx response without a top-level error. A request missing from
    both files is yielded by ``results()`` with ``error.code == "missing_result"`` rather than
    silently dropped. What users read is here whichever batch API answered: :attr:`text` (the
    answer), :attr:`usage` (tokens), :attr:`body` (the parsed answer), :attr:`error_code` /
    :attr:`error_message`, and :attr:`raw` (the provider's own line, kept by dialects that rewrite
    theirs into this shape). :meth:`record` is all of it as a plain dict, as XCom and task results carry it.

    Examples:
        >>> r = ResultLine.model_validate({"id": "batch_req_1", "custom_id": "q-1",
        ...     "response": {"status_code": 200, "request_id": "req_1", "body": {"x": 1}}, "error": None})
        >>> r.ok, r.body
        (True, {'x': 1})
        >>> claude = ResultLine(custom_id="q-2", response={"status_code": 200, "body": {"type": "message",
        ...     "content": [{"type": "text", "text": "Paris"}], "usage": {"input_tokens": 9, "output_tokens": 2}}})
        >>> claude.text, claude.usage.total_tokens
        ('Paris', 11)
    """

    model_config = _WIRE
    id: str | None = None
    custom_id: str
    response: ResultResponse | None = None
    error: ResultError | None = None
    #: The provider's own result line, when a dialect rewrote it into this shape (else None).
    raw: dict[str, Any] | None = None
    #: The structured answer (a pydantic model instance, or the JSON for a JSON Schema), when the line was
    #: read against a response schema (:func:`batch_ops.structured.parse_line`) and it follows it.
    #: (These three are never part of the line's own JSON, ``model_dump``: :meth:`record` carries them.)
    parsed: Any = Field(default=None, exclude=True)
    #: Why the answer is not the structured result asked for (set when ``parsed`` is not).
    invalid: InvalidAnswer | None = Field(default=None, exclude=True)
    #: The line was read against a response schema: :meth:`record` then carries ``parsed`` and ``invalid``.
    structured: bool = Field(default=False, exclude=True)

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None and 200 <= self.response.status_code < 300

    @property
    def body(self) -> Any:
        return self.response.body if self.response is not None else None

    @property
    def text(self) -> str | None:
        """The answer's text, whichever API wrote the body (see :data:`TEXT_READERS`); None when it holds none
        (an embedding, a failure)."""
        return answer_text(self.body) if self.ok else None

    @property
    def usage(self) -> Usage | None:
        """The tokens the request used, whichever API wrote the body (see :data:`USAGE_READERS`); None when
        the body says nothing of them."""
        return answer_usage(self.body)

    @property
    def error_code(self) -> str | None:
        """The failure code, from the top-level error or the response body's ``error``."""
        if self.error is not None:
            return self.error.code
        if self.response is not None and self.response.status_code >= 400:
            body = self.response.body
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                return body["error"].get("code") or body["error"].get("type") or str(self.response.status_code)
            return str(self.response.status_code)
        return None

    @property
    def error_message(self) -> str | None:
        """Why the request failed: the top-level error's message, else the response body's ``error``; None if ok."""
        if self.ok:
            return None
        if self.error is not None:
            return self.error.message or self.error.code or "error"
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
            if isinstance(message, str) and message:
                return message
        status = self.response.status_code if self.response is not None else None
        return f"HTTP {status}" if status is not None else "no response"

    def record(self, *, raw: bool = True) -> dict[str, Any]:
        """The result as users read it, a plain JSON dict the same for every provider: ``custom_id``, ``ok``,
        ``text``, ``body``, ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``, or None),
        ``error`` (``code``, ``message``, or None), and ``raw`` (the provider's line, when rewritten; left
        out with ``raw=False``). What the Airflow hook and the Prefect results task hand on.

        Examples:
            >>> ResultLine(custom_id="a", error={"code": "batch_expired", "message": "x"}).record()
            {'custom_id': 'a', 'ok': False, 'text': None, 'body': None, 'usage': None, \
'error': {'code': 'batch_expired', 'message': 'x'}, 'raw': None}
        """
        usage = self.usage
        out: dict[str, Any] = {
            "custom_id": self.custom_id,
            "ok": self.ok,
            "text": self.text,
            "body": self.body,
            "usage": None if usage is None else {"input_tokens": usage.input_tokens,
                                                 "output_tokens": usage.output_tokens,
                                                 "total_tokens": usage.total_tokens},
            "error": None if self.ok else {"code": self.error_code, "message": self.error_message},
        }
        if self.structured:
            parsed = self.parsed
            out["parsed"] = parsed.model_dump(mode="json") if isinstance(parsed, BaseModel) else parsed
            out["invalid"] = None if self.invalid is None else self.invalid.model_dump()
        if raw:
            out["raw"] = self.raw
        return out


# ---------------------------------------------------------------------------------------------
# Reading an answer, whichever API wrote it: a small table of readers, each recognising its body by shape
# ---------------------------------------------------------------------------------------------
def _joined(texts: list[str]) -> str | None:
    return "".join(texts) if texts else None


def _chat_text(body: dict[str, Any]) -> str | None:
    """OpenAI chat completions (``choices[0].message.content``, a string or text parts) and completions."""
    choices = body.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return None
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return _joined([p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)])
        return None
    return first["text"] if isinstance(first.get("text"), str) else None


def _responses_text(body: dict[str, Any]) -> str | None:
    """OpenAI Responses API (``output_text``, else ``output[].content[]`` of type ``output_text``)."""
    if isinstance(body.get("output_text"), str):
        return str(body["output_text"])
    output = body.get("output")
    if not isinstance(output, list):
        return None
    return _joined([part["text"] for item in output if isinstance(item, dict)
                    for part in item.get("content") or () if isinstance(part, dict)
                    and part.get("type", "output_text") == "output_text" and isinstance(part.get("text"), str)])


def _anthropic_text(body: dict[str, Any]) -> str | None:
    """Anthropic Messages (``content[]`` blocks of type ``text``; tool use and thinking blocks are not the answer)."""
    content = body.get("content")
    if not isinstance(content, list):
        return None
    return _joined([b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"
                    and isinstance(b.get("text"), str)])


def _gemini_text(body: dict[str, Any]) -> str | None:
    """Gemini ``generateContent`` (``candidates[0].content.parts[].text``, thought parts left out)."""
    candidates = body.get("candidates")
    if not (isinstance(candidates, list) and candidates and isinstance(candidates[0], dict)):
        return None
    content = candidates[0].get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return None
    return _joined([p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
                    and not p.get("thought")])


#: How an answer's text is found: ``(the key that tells the shape, reader)``, tried in order.
TEXT_READERS: tuple[tuple[str, Any], ...] = (
    ("choices", _chat_text),
    ("output", _responses_text),
    ("output_text", _responses_text),
    ("candidates", _gemini_text),
    ("content", _anthropic_text),
)


def answer_text(body: Any) -> str | None:
    """The text of an answer body of any batch API we speak (None when it holds no text).

    Examples:
        >>> answer_text({"choices": [{"message": {"role": "assistant", "content": "4"}}]})
        '4'
        >>> answer_text({"candidates": [{"content": {"role": "model", "parts": [{"text": "Par"}, {"text": "is"}]}}]})
        'Paris'
        >>> answer_text({"data": [{"embedding": [0.1]}]}) is None
        True
    """
    if not isinstance(body, dict):
        return None
    for key, reader in TEXT_READERS:
        if key in body:
            text = reader(body)
            if text is not None:
                return str(text)
    return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _openai_usage(usage: dict[str, Any]) -> Usage:
    """``usage`` of chat completions (``prompt_tokens``/``completion_tokens``), of the Responses API and of
    Anthropic (``input_tokens``/``output_tokens``; Anthropic's cache reads and writes are input too)."""
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        inp, out = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    else:
        inp = (_count(usage.get("input_tokens")) + _count(usage.get("cache_creation_input_tokens"))
               + _count(usage.get("cache_read_input_tokens")))
        out = _count(usage.get("output_tokens"))
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=_count(usage.get("total_tokens")) or inp + out)


def _gemini_usage(meta: dict[str, Any]) -> Usage:
    """Gemini's ``usageMetadata`` (thinking tokens are billed as output)."""
    inp = _count(meta.get("promptTokenCount", meta.get("prompt_token_count")))
    out = (_count(meta.get("candidatesTokenCount", meta.get("candidates_token_count")))
           + _count(meta.get("thoughtsTokenCount", meta.get("thoughts_token_count"))))
    total = _count(meta.get("totalTokenCount", meta.get("total_token_count")))
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=total or inp + out)


#: Where an answer's token counts are: ``(key, reader of the object under it)``, tried in order.
USAGE_READERS: tuple[tuple[str, Any], ...] = (
    ("usage", _openai_usage),
    ("usageMetadata", _gemini_usage),
    ("usage_metadata", _gemini_usage),
)


def answer_usage(body: Any) -> Usage | None:
    """The tokens an answer body of any batch API we speak reports (None when it reports none).

    Examples:
        >>> answer_usage({"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}).output_tokens
        2
        >>> answer_usage({"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3,
        ...                                 "totalTokenCount": 7}}).input_tokens
        4
    """
    if not isinstance(body, dict):
        return None
    for key, reader in USAGE_READERS:
        found = body.get(key)
        if isinstance(found, dict):
            return reader(found)  # type: ignore[no-any-return]
    return None

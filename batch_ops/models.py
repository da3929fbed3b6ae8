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
) -> list[tuple[str, str, str]]:
    """Check the POST /batches parameters; return ``(param, problem, fix)`` for each violation.

    Shared by the client (raises before uploading) and the local server (answers 400), so the
    two cannot disagree. ``azure`` also accepts Azure OpenAI's spelling (``/chat/completions``);
    ``completion_windows`` are the windows the API accepts (a dialect's limits).

    Examples:
        >>> [p for p, _, _ in check_create_params(endpoint="/v1/chat", completion_window="48h")]
        ['endpoint', 'completion_window']
    """
    found: list[tuple[str, str, str]] = []
    if (canonical_endpoint(endpoint) if azure else endpoint) not in BATCH_ENDPOINTS:
        found.append(
            ("endpoint", f"unsupported endpoint {endpoint!r}", "use one of " + ", ".join(BATCH_ENDPOINTS))
        )
    if completion_window not in completion_windows:
        fix = (f"use {completion_windows[0]!r}, the only window" if len(completion_windows) == 1
               else "use one of " + ", ".join(repr(w) for w in completion_windows))
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


class ResultLine(BaseModel):
    """One line of an output or error file, or a joined result.

    ``ok`` is True for an HTTP 2xx response without a top-level error. A request missing from
    both files is yielded by ``results()`` with ``error.code == "missing_result"`` rather than
    silently dropped.

    Examples:
        >>> r = ResultLine.model_validate({"id": "batch_req_1", "custom_id": "q-1",
        ...     "response": {"status_code": 200, "request_id": "req_1", "body": {"x": 1}}, "error": None})
        >>> r.ok, r.body
        (True, {'x': 1})
    """

    model_config = _WIRE
    id: str | None = None
    custom_id: str
    response: ResultResponse | None = None
    error: ResultError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None and 200 <= self.response.status_code < 300

    @property
    def body(self) -> Any:
        return self.response.body if self.response is not None else None

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

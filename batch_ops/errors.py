"""The one exception tree of batch_ops.

Every error raised by the core, the Airflow provider and the Prefect collection is a
:class:`BatchOpsError`, so ``except BatchOpsError`` catches them all::

    BatchOpsError
    ├── ConfigurationError            settings missing or wrong (no API key, bad base URL)
    ├── InputValidationError          bad request file or parameters, caught before any upload
    ├── ResultFileError               an output or error file has a line that is not a result
    ├── AttemptsExhaustedError        a key made its last allowed attempt, and it was rejected too
    ├── UnknownPriceError             a model has no batch price (pass an override), or a bad override
    ├── BudgetExceededError           the chain's spend plus this attempt's upper bound would pass max_cost_usd
    ├── JobBusyError                  another worker is stepping the same job right now (try again later)
    ├── WebhookVerificationError      a webhook's signature, timestamp or id does not check out
    ├── APIError                      the API could not be used
    │   ├── APIConnectionError        no HTTP response (refused, reset, dropped, too many redirects)
    │   │   └── APITimeoutError       the request timed out, or the caller's deadline came first
    │   ├── APIResponseValidationError  a 2xx whose body is not what the call returns (HTML, cut off)
    │   └── APIStatusError            an HTTP error response (carries the server's message)
    │       ├── BadRequestError             400
    │       ├── AuthenticationError         401
    │       ├── PermissionDeniedError       403
    │       ├── NotFoundError               404
    │       ├── ConflictError               409
    │       ├── UnprocessableEntityError    422
    │       ├── RateLimitError              429
    │       └── InternalServerError         5xx
    └── BatchOutcomeError             a batch ended in a way the caller asked to treat as failure
        ├── BatchFailedError          status ``failed`` (e.g. validation, token_limit_exceeded)
        ├── BatchExpiredError         status ``expired`` (partial output may exist)
        ├── BatchCancelledError       status ``cancelled`` (partial output may exist)
        ├── BatchTimeoutError         our own wait ran out of time; the batch goes on
        └── RequestFailuresError      the batch completed but some requests failed

Examples:
    >>> from batch_ops.errors import BatchOpsError, RateLimitError
    >>> issubclass(RateLimitError, BatchOpsError)
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch_ops.models import Batch

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AttemptsExhaustedError",
    "AuthenticationError",
    "BadRequestError",
    "BatchCancelledError",
    "BatchExpiredError",
    "BatchFailedError",
    "BatchOpsError",
    "BatchOutcomeError",
    "BatchTimeoutError",
    "BudgetExceededError",
    "ConfigurationError",
    "ConflictError",
    "InputValidationError",
    "InternalServerError",
    "JobBusyError",
    "NotFoundError",
    "PermissionDeniedError",
    "Problem",
    "RateLimitError",
    "RequestFailuresError",
    "ResultFileError",
    "StorageError",
    "UnknownPriceError",
    "UnprocessableEntityError",
    "WebhookVerificationError",
    "RETRYABLE_STATUSES",
    "is_permanent",
    "is_retryable_status",
    "redact",
    "status_error_class",
]

#: HTTP statuses worth another try besides every 5xx: timeout, conflict, rate limit.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable_status(status_code: int) -> bool:
    """408, 409, 429 and every 5xx are worth another try; other 4xx are permanent.

    Examples:
        >>> [is_retryable_status(s) for s in (400, 404, 409, 429, 503)]
        [False, False, True, True, True]
    """
    return status_code in RETRYABLE_STATUSES or status_code >= 500


def _restore(cls: type[BatchOpsError], args: tuple[Any, ...], state: dict[str, Any]) -> BatchOpsError:
    exc = cls.__new__(cls, *args)  # BaseException.__new__ keeps args; __init__ is not called again
    exc.__dict__.update(state)
    return exc


REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``[redacted]``.

    Examples:
        >>> redact("Incorrect API key provided: Bearer sk-abc123", ["sk-abc123"])
        'Incorrect API key provided: Bearer [redacted]'
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


class BatchOpsError(Exception):
    """Raised for any batch_ops failure; the root of the tree."""

    def redact(self, secrets: Iterable[str]) -> BatchOpsError:
        """Remove the secrets from this error's message and text attributes, in place; returns it.

        The clients call this on every error they raise with their own key: a server (or a proxy)
        that repeats the key in its error message must not put it into a log or a task's state.
        """
        keep = [s for s in secrets if s]
        if not keep:
            return self
        self.args = tuple(redact(a, keep) if isinstance(a, str) else a for a in self.args)
        for name, value in list(self.__dict__.items()):
            if isinstance(value, str):
                self.__dict__[name] = redact(value, keep)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle rebuilds an exception as cls(*args), which fails for the keyword-only constructors
        # below (APIStatusError needs status_code) and would lose their attributes. Prefect pickles a
        # failed run's exception as its result, and process-based runners ship exceptions between
        # processes: rebuild from the message and the attributes instead.
        return (_restore, (type(self), self.args, self.__dict__))


class ConfigurationError(BatchOpsError):
    """Raised when client settings are missing or invalid (no API key, malformed base URL)."""


@dataclass(frozen=True)
class Problem:
    """One finding of input validation: where, which rule, and how to fix it.

    Examples:
        >>> str(Problem(rule="duplicate_custom_id", message="custom_id 'q-1' repeats line 1",
        ...             fix="make every custom_id unique", line=2))
        "line 2: duplicate_custom_id: custom_id 'q-1' repeats line 1 (fix: make every custom_id unique)"
    """

    rule: str
    message: str
    fix: str
    line: int | None = None
    param: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        if self.param and self.line is None:
            where = f"{self.param}: "
        return f"{where}{self.rule}: {self.message} (fix: {self.fix})"


class InputValidationError(BatchOpsError, ValueError):
    """Raised when a request file or batch parameter is invalid, before anything is uploaded.

    ``problems`` lists every finding (capped), each naming the line or parameter, the rule
    broken and the fix.
    """

    def __init__(self, problems: list[Problem], *, source: str | None = None, truncated: bool = False):
        self.problems = list(problems)
        self.source = source
        self.truncated = truncated
        head = f"{source}: " if source else ""
        lines = [str(p) for p in self.problems[:10]]
        more = len(self.problems) - len(lines)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        if truncated:
            tail += "\n  (stopped after the first problems; fix these and validate again)"
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{head}{len(self.problems)} {noun}:\n  " + "\n  ".join(lines) + tail)


class ResultFileError(BatchOpsError, ValueError):
    """Raised when a line of an output or error file is not a valid result object.

    ``path`` and ``line`` (1-based) name the line; ``reason`` says what is wrong with it.
    """

    def __init__(self, reason: str, *, path: str, line: int | None = None):
        self.reason = reason
        self.path = path
        self.line = line
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class StorageError(BatchOpsError):
    """Raised when a file on object storage (``s3://``, ``gs://``, …) cannot be read or written.

    Not permanent: a network failure or a brief outage of the store passes, so a retried task
    tries again. A missing input file is an ``InputValidationError`` (``file_not_found``) instead.
    """


class AttemptsExhaustedError(BatchOpsError):
    """Raised when a key made its last allowed attempt and that one was rejected too."""


class UnknownPriceError(BatchOpsError):
    """Raised when a model has no batch price in the table (the fix: a price override), or an override is malformed."""


class BudgetExceededError(BatchOpsError):
    """Raised before an upload when the chain's spend so far plus this attempt's upper bound passes ``max_cost_usd``.

    Nothing of this attempt was uploaded or created. ``limit``, ``spent`` (the chain's earlier attempts:
    actual where their usage is known, else their upper bound), ``upper`` (this attempt's upper bound),
    ``lower``, and ``contributors`` (``(model, upper bound USD)``, dearest first) say why.
    """

    def __init__(self, message: str, *, limit: float, spent: float, upper: float, lower: float = 0.0,
                 contributors: tuple[tuple[str, float], ...] = ()) -> None:
        super().__init__(message)
        self.limit, self.spent, self.upper, self.lower = limit, spent, upper, lower
        self.contributors = contributors


class JobBusyError(BatchOpsError):
    """Raised when another worker holds a job's lease (it is stepping the job), or this worker lost it.

    Not permanent: the other step ends (or its lease expires), so a retried task tries again.
    ``retry_after`` is a hint in seconds.
    """

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WebhookVerificationError(BatchOpsError):
    """Raised when a webhook delivery cannot be trusted: a missing header, a signature that does
    not match the secret, a timestamp outside the tolerance, or an id already seen (a replay).
    ``reason`` names which; the receiver answers such a delivery 400 and hands nothing on."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class APIError(BatchOpsError):
    """Raised when the Batch API could not be used; see the subclasses."""


class APIConnectionError(APIError):
    """Raised when no HTTP response arrived: connection refused, reset or dropped."""


class APITimeoutError(APIConnectionError):
    """Raised when an HTTP request timed out, or the caller's deadline came before the answer."""


class APIResponseValidationError(APIError):
    """Raised when the API answered 2xx with a body that is not what the call returns.

    A captive portal's HTML page, JSON cut off by a proxy, an object missing required fields:
    ``status_code``, ``method`` and ``url`` name the call, ``reason`` what was wrong.
    """

    def __init__(self, message: str, *, status_code: int | None = None, method: str | None = None,
                 url: str | None = None, reason: str | None = None):
        self.status_code = status_code
        self.method = method
        self.url = url
        self.reason = reason
        super().__init__(message)


class APIStatusError(APIError):
    """Raised when the API answered with an HTTP error status; carries the server's message."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ):
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.param = param
        self.code = code
        self.request_id = request_id
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method and url else ""
        rid = f" [request_id={request_id}]" if request_id else ""
        super().__init__(f"HTTP {status_code}{where}: {message}{rid}")


class BadRequestError(APIStatusError):
    """Raised on HTTP 400: the request body or parameters were rejected."""


class AuthenticationError(APIStatusError):
    """Raised on HTTP 401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """Raised on HTTP 403: the key may not use this resource."""


class NotFoundError(APIStatusError):
    """Raised on HTTP 404: no file or batch with that id."""


class ConflictError(APIStatusError):
    """Raised on HTTP 409 once retries are used up."""


class UnprocessableEntityError(APIStatusError):
    """Raised on HTTP 422: the request was well-formed but not acceptable."""


class RateLimitError(APIStatusError):
    """Raised on HTTP 429 once retries are used up."""


class InternalServerError(APIStatusError):
    """Raised on HTTP 5xx once retries are used up."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """Return the exception class for an HTTP error status.

    Examples:
        >>> status_error_class(404).__name__, status_error_class(503).__name__
        ('NotFoundError', 'InternalServerError')
    """
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


class BatchOutcomeError(BatchOpsError):
    """Raised when a batch ended in an outcome the caller treats as failure; carries the batch."""

    def __init__(self, message: str, *, batch: Batch | None = None, **details: Any):
        self.batch = batch
        self.details = details
        super().__init__(message)


class BatchFailedError(BatchOutcomeError):
    """Raised when a batch ended ``failed`` (validation errors, token_limit_exceeded, ...)."""


class BatchExpiredError(BatchOutcomeError):
    """Raised when a batch ended ``expired``; completed work is still in its output file."""


class BatchCancelledError(BatchOutcomeError):
    """Raised when a batch ended ``cancelled``; completed work is still in its output file."""


class BatchTimeoutError(BatchOutcomeError):
    """Raised when waiting for a batch ran past its deadline; the batch itself keeps running."""


class RequestFailuresError(BatchOutcomeError):
    """Raised when a batch completed but some of its requests failed, and the policy forbids it."""


def is_permanent(exc: BaseException) -> bool:
    """True when doing the same thing again cannot succeed: the one answer to "retry this?".

    Bad input and settings, a 4xx other than 408/409/429, a result file that is not one, a
    chain out of attempts, a budget the next attempt would pass and a model without a price are
    permanent. Network failures, 408/409/429/5xx, timeouts and batch outcomes are not: a batch that
    failed or expired gets a new attempt when retried.

    Examples:
        >>> is_permanent(InputValidationError([])), is_permanent(status_error_class(503)("x", status_code=503))
        (True, False)
    """
    if isinstance(exc, (InputValidationError, ConfigurationError, ResultFileError, AttemptsExhaustedError,
                        BudgetExceededError, UnknownPriceError)):
        return True
    return isinstance(exc, APIStatusError) and not is_retryable_status(exc.status_code)

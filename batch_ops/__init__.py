"""batch_ops: run the OpenAI Batch API from Airflow and Prefect — and from plain Python.

The core (this package) speaks the Files and Batches API; ``batch_ops.airflow`` and
``batch_ops.prefect`` are thin adapters; ``batch_ops.server`` is a local Batch API server.
Importing ``batch_ops`` loads neither Airflow nor Prefect.

Examples:
    >>> from batch_ops import BatchClient, BatchStatus
    >>> BatchStatus.COMPLETED.is_terminal
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch_ops._repair import RepairRound
from batch_ops._submit import Source, Submission, SubmitSpec
from batch_ops._version import DOCS_URL, __version__
from batch_ops.chain import AttemptChain
from batch_ops.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AttemptsExhaustedError,
    AuthenticationError,
    BadRequestError,
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    BatchOpsError,
    BatchOutcomeError,
    BatchTimeoutError,
    BudgetExceededError,
    ConfigurationError,
    InputValidationError,
    NotFoundError,
    RateLimitError,
    RequestFailuresError,
    UnknownPriceError,
    is_permanent,
)
from batch_ops.jsonl.neutral import ChatRequest
from batch_ops.models import (
    Batch,
    BatchList,
    BatchStatus,
    CreateBatchRequest,
    FileObject,
    InvalidAnswer,
    RequestCounts,
    RequestLine,
    ResultLine,
    Usage,
)
from batch_ops.outcomes import OutcomePolicy, outcome_error, raise_for_outcome
from batch_ops.polling import BatchPoller
from batch_ops.settings import ClientSettings
from batch_ops.structured import ResponseSchema

if TYPE_CHECKING:
    from batch_ops.client import AsyncBatchClient, BatchClient


def __getattr__(name: str) -> Any:
    # The clients (and httpx) load on first use, so ``batch_ops.server`` and ``batch-ops serve``
    # start without them; ``from batch_ops import BatchClient`` works as usual.
    if name in ("BatchClient", "AsyncBatchClient"):
        from batch_ops import client

        return getattr(client, name)
    raise AttributeError(f"module 'batch_ops' has no attribute {name!r}")

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncBatchClient",
    "AttemptChain",
    "AttemptsExhaustedError",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchCancelledError",
    "BatchClient",
    "BatchExpiredError",
    "BatchFailedError",
    "BatchList",
    "BatchOpsError",
    "BatchOutcomeError",
    "BatchPoller",
    "BatchStatus",
    "BatchTimeoutError",
    "BudgetExceededError",
    "ChatRequest",
    "ClientSettings",
    "ConfigurationError",
    "CreateBatchRequest",
    "DOCS_URL",
    "FileObject",
    "InputValidationError",
    "InvalidAnswer",
    "NotFoundError",
    "OutcomePolicy",
    "RateLimitError",
    "RepairRound",
    "RequestCounts",
    "RequestFailuresError",
    "RequestLine",
    "ResponseSchema",
    "ResultLine",
    "Source",
    "Submission",
    "SubmitSpec",
    "UnknownPriceError",
    "Usage",
    "__version__",
    "is_permanent",
    "outcome_error",
    "raise_for_outcome",
]

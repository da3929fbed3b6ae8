"""Every batch_ops exception survives pickling with its type, message and attributes.

Prefect persists a failed run's exception as the run's result (pickled), and process-based task
runners ship exceptions between processes. Found by the security drill (drills/prefect_drills.py):
reading back the result of a flow run that failed with ``AuthenticationError`` raised
``TypeError: APIStatusError.__init__() missing 1 required keyword-only argument: 'status_code'``.
"""

from __future__ import annotations

import pickle

import pytest

from batch_ops.errors import (
    AuthenticationError,
    BatchExpiredError,
    BatchOpsError,
    BatchTimeoutError,
    InputValidationError,
    InternalServerError,
    Problem,
    ResultFileError,
)
from batch_ops.models import Batch

BATCH = Batch(id="batch_1", endpoint="/v1/embeddings", input_file_id="file-in", status="expired", created_at=0,
              output_file_id="file-out", request_counts={"total": 4, "completed": 3})

CASES = [
    AuthenticationError("Incorrect API key", status_code=401, request_id="req_1", method="GET",
                        url="http://127.0.0.1:8765/v1/batches"),
    InternalServerError("boom", status_code=503),
    InputValidationError([Problem(rule="duplicate_custom_id", message="repeats line 1", fix="make it unique", line=2)],
                         source="in.jsonl"),
    ResultFileError("not a result object", path="out.jsonl", line=3),
    BatchExpiredError("Batch batch_1 expired", batch=BATCH),
    BatchTimeoutError("Timed out", batch=None, batch_id="batch_1", deadline=1_900_000_000.0),
    BatchOpsError("plain"),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_exceptions_round_trip_through_pickle(exc: BatchOpsError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args
    assert back.__dict__ == exc.__dict__


def test_status_error_keeps_its_fields() -> None:
    back = pickle.loads(pickle.dumps(CASES[0]))
    assert isinstance(back, AuthenticationError)
    assert (back.status_code, back.message, back.request_id) == (401, "Incorrect API key", "req_1")


def test_input_validation_error_keeps_its_problems() -> None:
    back = pickle.loads(pickle.dumps(CASES[2]))
    assert isinstance(back, InputValidationError)
    assert [(p.line, p.rule) for p in back.problems] == [(2, "duplicate_custom_id")]
    assert back.source == "in.jsonl"

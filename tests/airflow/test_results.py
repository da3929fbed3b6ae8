"""How the operator and the sensor turn trigger events into results or distinct exceptions."""

from __future__ import annotations

from typing import Any

import pytest

try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]

from batch_ops import (
    APIConnectionError,
    Batch,
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    BatchOpsError,
    BatchTimeoutError,
    NotFoundError,
    RequestFailuresError,
)
from batch_ops.airflow import OpenAIBatchOperator, OpenAIBatchSensor
from batch_ops.airflow.triggers import batch_event, error_event, timeout_event

CHAT = "/v1/chat/completions"


class TaskInstance:
    """The one thing the result path uses from Airflow's context: ``ti.xcom_push``."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def context() -> dict[str, Any]:
    return {"ti": TaskInstance()}


def batch(status: str, **fields: Any) -> Batch:
    data: dict[str, Any] = {
        "id": "batch_1", "endpoint": CHAT, "input_file_id": "file-in", "status": status, "created_at": 1,
        "request_counts": {"total": 4, "completed": 3, "failed": 1},
        "output_file_id": "file-out", "error_file_id": "file-err",
    }
    data.update(fields)
    return Batch.model_validate(data)


def operator(**kwargs: Any) -> OpenAIBatchOperator:
    return OpenAIBatchOperator(task_id="t", endpoint=CHAT, input_file_id="file-in", **kwargs)


def test_completed_batch_returns_the_result_dict() -> None:
    ctx = context()
    result = operator().execute_complete(ctx, batch_event(batch("completed")))
    assert result == {**batch("completed").summary(), "batch_ids": ["batch_1"],
                      "chain_request_counts": {"total": 4, "completed": 3, "failed": 1}, "chain_usage": None,
                      "estimate": None, "cost": None}
    assert ctx["ti"].pushed["batch"] == result


@pytest.mark.parametrize(
    ("status", "error"),
    [("failed", BatchFailedError), ("expired", BatchExpiredError), ("cancelled", BatchCancelledError)],
)
def test_each_bad_outcome_has_its_own_exception_and_keeps_the_files(status: str, error: type) -> None:
    ctx = context()
    with pytest.raises(error) as raised:
        operator().execute_complete(ctx, batch_event(batch(status)))
    assert ctx["ti"].pushed["batch"]["output_file_id"] == "file-out"  # partial output is not lost
    assert raised.value.batch is not None and raised.value.batch.id == "batch_1"


def test_timeout_has_its_own_exception() -> None:
    event = timeout_event("batch_1", deadline=123.0, last=batch("in_progress"))
    with pytest.raises(BatchTimeoutError, match="keeps running"):
        operator().execute_complete(context(), event)


def test_the_four_outcome_errors_are_distinct() -> None:
    errors = {BatchFailedError, BatchExpiredError, BatchCancelledError, BatchTimeoutError}
    assert len(errors) == 4 and not any(issubclass(a, b) for a in errors for b in errors if a is not b)


def test_policy_can_accept_expired_and_reject_request_failures() -> None:
    assert operator(fail_on=["failed"]).execute_complete(context(), batch_event(batch("expired")))["status"] == (
        "expired"
    )
    with pytest.raises(RequestFailuresError):
        operator(fail_on_request_failures=True).execute_complete(context(), batch_event(batch("completed")))


@pytest.mark.parametrize("event", [None, {}, {"event": "done", "batch_id": "b"}, {"event": "terminal"},
                                   {"event": "terminal", "batch_id": "b"}, "terminal"])
def test_missing_or_unknown_events_are_rejected(event: Any) -> None:
    with pytest.raises(BatchOpsError, match=r"(?i)trigger event"):
        operator().execute_complete(context(), event)


def test_error_events_raise_what_the_client_would_have_raised() -> None:
    not_found = NotFoundError("No batch b", status_code=404)
    with pytest.raises(NotFoundError, match="No batch b"):
        operator().execute_complete(context(), error_event("b", not_found))
    with pytest.raises(APIConnectionError):
        operator().execute_complete(context(), error_event("b", APIConnectionError("refused")))


def test_sensor_timeout_skips_with_soft_fail_and_fails_without() -> None:
    event = timeout_event("batch_1", deadline=1.0, last=None)
    with pytest.raises(AirflowSkipException):
        OpenAIBatchSensor(task_id="s", batch_id="batch_1", soft_fail=True).execute_complete(context(), event)
    with pytest.raises(BatchTimeoutError):
        OpenAIBatchSensor(task_id="s", batch_id="batch_1").execute_complete(context(), event)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"input_file_id": "f", "input_path": "p.jsonl"}, {"input_file_id": "f", "requests": []}],
)
def test_exactly_one_input(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of input_file_id, input_path or requests"):
        OpenAIBatchOperator(task_id="t", endpoint=CHAT, **kwargs)


def test_policy_and_poll_interval_are_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="terminal statuses"):
        operator(fail_on=["in_progress"])
    with pytest.raises(ValueError, match="poll_interval"):
        operator(poll_interval=0)

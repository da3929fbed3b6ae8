"""The pure parts of the Prefect collection: event building, artifact contents, what to cancel, the result model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from batch_ops import Batch, BatchStatus
from batch_ops.prefect import BatchResult
from batch_ops.prefect.artifacts import artifact_keys, progress_percent, summary_row
from batch_ops.prefect.events import batch_duration, batch_event
from batch_ops.prefect.flows import batches_to_cancel


def batch(status: str, **fields: Any) -> Batch:
    base: dict[str, Any] = {"id": "batch_X1", "endpoint": "/v1/embeddings", "input_file_id": "file-in",
                            "status": status, "created_at": 1000,
                            "request_counts": {"total": 10, "completed": 6, "failed": 1}}
    return Batch.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("status", "stamp"),
    [("completed", "completed_at"), ("failed", "failed_at"), ("expired", "expired_at"), ("cancelled", "cancelled_at")],
)
def test_every_terminal_status_names_its_event_and_the_duration(status: str, stamp: str) -> None:
    event = batch_event(batch(status, **{stamp: 1090}, output_file_id="file-out", metadata={"run": "n"}))

    assert event is not None
    assert event.event == f"batch_ops.batch.{status}"
    assert event.resource["prefect.resource.id"] == "openai.batch.batch_X1"
    assert event.payload["duration_seconds"] == 90
    assert event.payload["output_file_id"] == "file-out" and event.payload["metadata"] == {"run": "n"}
    assert {"batch_id", "status", "input_file_id", "output_file_id", "error_file_id", "request_counts",
            "usage"} <= set(event.payload)


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
def test_a_running_batch_has_no_event_and_no_duration(status: str) -> None:
    assert batch_event(batch(status)) is None
    assert batch_duration(batch(status)) is None


def test_a_failed_batch_event_carries_the_first_validation_errors() -> None:
    errors = {"data": [{"code": "invalid_json_line", "line": i, "message": f"line {i} is not JSON"} for i in range(8)]}
    event = batch_event(batch("failed", failed_at=1001, errors=errors))

    assert event is not None
    assert [e["line"] for e in event.payload["errors"]] == [0, 1, 2, 3, 4]


def test_progress_counts_finished_requests_and_is_full_at_the_end() -> None:
    assert progress_percent(batch("in_progress")) == 70.0
    assert progress_percent(batch("validating", request_counts=None)) == 0.0
    assert progress_percent(batch("expired", expired_at=1001)) == 100.0


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_keys("openai-batch") == ("openai-batch-summary", "openai-batch-progress")
    assert artifact_keys("Nightly_Eval 2") == ("nightly-eval-2-summary", "nightly-eval-2-progress")
    assert artifact_keys("!!!") == ("openai-batch-summary", "openai-batch-progress")


def test_summary_row_without_usage() -> None:
    row = summary_row(batch("completed", completed_at=1005, output_file_id="file-out"))

    assert (row["requests_total"], row["requests_completed"], row["requests_failed"]) == (10, 6, 1)
    assert row["total_tokens"] is None and row["duration_seconds"] == 5 and row["error_file_id"] is None


def test_only_unfinished_batches_of_this_flow_run_are_cancelled() -> None:
    mine = {"prefect_flow_run_id": "run-1"}
    candidates = [
        batch("in_progress", id="a", metadata=mine),
        batch("validating", id="b", metadata=mine),
        batch("finalizing", id="c", metadata=mine),
        batch("cancelling", id="d", metadata=mine),
        batch("completed", id="e", metadata=mine, completed_at=1001),
        batch("in_progress", id="f", metadata={"prefect_flow_run_id": "run-2"}),
        batch("in_progress", id="g"),
    ]

    assert [b.id for b in batches_to_cancel(candidates, flow_run_id="run-1")] == ["a", "b", "c"]


def test_batch_result_is_the_summary_contract_and_frozen() -> None:
    b = batch("completed", completed_at=1001, output_file_id="file-out", error_file_id="",
              usage={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})
    result = BatchResult.from_batch(b)

    assert result.model_dump(mode="json") == {**b.summary(), "batch_ids": [b.id],
                                              "chain_request_counts": b.summary()["request_counts"],
                                              "chain_usage": b.summary()["usage"], "estimate": None, "cost": None}
    assert result.status is BatchStatus.COMPLETED and result.error_file_id is None
    with pytest.raises(ValidationError):
        result.status = BatchStatus.FAILED  # type: ignore[misc]

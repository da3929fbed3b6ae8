"""What a batch leaves in Prefect: artifacts, events, logs and parameters, and never the API key."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)

from batch_ops import AuthenticationError
from batch_ops.prefect import OpenAIBatchCredentials, run_batch

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"


async def _logs(flow_run_id: UUID, *, containing: str, timeout: float = 20.0) -> list[Any]:
    # Logs reach the API through a background worker: wait for the line we know comes last.
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any(containing in log.message for log in logs) or time.monotonic() > deadline:
                return logs
            await asyncio.sleep(0.25)


async def test_artifacts_and_event_describe_the_finished_batch(
    batch_server: str, secret: str, make_requests: Any, events: Any
) -> None:
    credentials = OpenAIBatchCredentials(api_key=secret, base_url=batch_server)
    # Two runs under one stable key: the Prefect UI shows both under that key (its history).
    for _ in range(2):
        state = await run_batch(requests=make_requests(5), endpoint=ENDPOINT, credentials=credentials,
                                metadata={"run": "nightly"}, poll_interval=0.1, return_state=True,
                                artifact_key="reporting-test")
    result = await state.aresult()
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None

    async with get_client() as client:
        history = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["reporting-test-summary"])))
        table = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["reporting-test-summary"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
        progress = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )

    assert len(history) == 2 and {a.type for a in history} == {"table"}
    assert len(table) == 1 and table[0].type == "table"
    [row] = json.loads(table[0].data)  # type: ignore[arg-type]
    assert row["batch_id"] == result.batch_id and row["status"] == "completed"
    assert (row["requests_total"], row["requests_completed"], row["requests_failed"]) == (5, 5, 0)
    assert row["output_file_id"] == result.output_file_id and row["error_file_id"] is None
    assert result.usage is not None and row["total_tokens"] == result.usage.total_tokens
    assert isinstance(row["duration_seconds"], int) and row["duration_seconds"] >= 0
    [bar] = [a for a in progress if a.type == "progress"]
    assert bar.data == 100.0 and bar.description.endswith("completed 5/5") and bar.key == "reporting-test-progress"

    [event] = await events(name="batch_ops.batch.completed", resource_id=f"openai.batch.{result.batch_id}")
    assert event.payload["output_file_id"] == result.output_file_id
    assert event.payload["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert event.payload["metadata"]["run"] == "nightly"
    assert event.resource["openai.batch.endpoint"] == ENDPOINT
    assert f"prefect.flow-run.{flow_run_id}" in {r.id for r in event.related}


async def test_the_api_key_is_in_no_result_artifact_event_log_or_parameter(
    batch_server: str, secret: str, make_requests: Any, events: Any, to_json: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong = "sk-wrong-4b1d9e77c2a05f36-secret"
    good = OpenAIBatchCredentials(api_key=secret, base_url=batch_server)
    bad = OpenAIBatchCredentials(api_key=wrong, base_url=batch_server)

    ok = await run_batch(requests=make_requests(3), endpoint=ENDPOINT, credentials=good, poll_interval=0.1,
                         return_state=True)
    refused = await run_batch(requests=make_requests(3), endpoint=ENDPOINT, credentials=bad, poll_interval=0.1,
                              return_state=True)
    result = await ok.aresult()
    with pytest.raises(AuthenticationError):
        await refused.aresult()

    run_ids = [ok.state_details.flow_run_id, refused.state_details.flow_run_id]
    texts = [result.model_dump_json(), str(result), repr(good), str(await refused.aresult(raise_on_failure=False))]
    texts.append(to_json(await _logs(run_ids[0], containing="ended completed")))
    texts.append(to_json(await _logs(run_ids[1], containing="401")))
    async with get_client() as client:
        for run_id in run_ids:
            assert run_id is not None
            flow_run = await client.read_flow_run(run_id)
            texts.append(to_json(flow_run))
            texts.append(to_json(await client.read_task_runs()))
            texts.append(to_json(await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))))
        assert flow_run.parameters["credentials"]["base_url"] == batch_server  # stored, key obfuscated
    texts.append(to_json(await events(name="batch_ops.batch.completed",
                                      resource_id=f"openai.batch.{result.batch_id}")))
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]

    assert "401" in texts[5]  # the refusal was logged, only without the key
    for text in texts:
        assert secret not in text
        assert wrong not in text


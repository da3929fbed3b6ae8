"""Cancelling a flow run cancels its batch, end to end, for ``run_batch`` and for ``run_batch`` as a subflow.

Prefect cancels a deployment's flow run from the process that serves it: the runner kills the
flow-run process, then runs the flow's ``on_cancellation`` hooks itself. So these tests serve
from a separate process with no OpenAI variables in its environment: the hook has to find the
batch on the API and the credentials from the saved block the run was given by reference. A
``run_batch`` subflow is cancelled inside the flow-run process instead (Prefect runs a nested
flow's hooks there), where the hook reuses the settings ``create_batch`` used.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling, State, StateType

from batch_ops import AsyncBatchClient, Batch, BatchStatus
from batch_ops.prefect import OpenAIBatchCredentials, run_batch
from batch_ops.prefect.flows import cancel_flow_run_batches
from batch_ops.server import serve_in_background

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"
PARENT_FLOW = '''
from typing import Any

from prefect import flow

from batch_ops.prefect import BatchResult, OpenAIBatchCredentials, run_batch


@flow(name="parent-of-run-batch")
async def parent(requests: list[dict[str, Any]], credentials: OpenAIBatchCredentials) -> BatchResult:
    return await run_batch(requests=requests, endpoint="/v1/chat/completions", credentials=credentials,
                           poll_interval=0.2)
'''
SERVE = '''
from prefect import serve
from prefect.deployments.runner import EntrypointType
from batch_ops.prefect import run_batch
from parent_flow import parent

# Module-path entrypoints: the flows live in installed packages, not in files beside the runner.
serve(run_batch.to_deployment(name="cancel-test", entrypoint_type=EntrypointType.MODULE_PATH),
      parent.to_deployment(name="cancel-test", entrypoint_type=EntrypointType.MODULE_PATH))
'''


@dataclass
class Served:
    url: str
    block_ref: dict[str, Any]
    log: Path


@pytest.fixture(scope="module")
def served(secret: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served")
    (folder / "parent_flow.py").write_text(textwrap.dedent(PARENT_FLOW))
    log = folder / "serve.log"
    # 20 requests, one at a time, 1 s each: left alone a batch runs for ~20 s.
    with serve_in_background(api_key=secret, request_latency=1.0, concurrency=1) as url:
        block_id = OpenAIBatchCredentials(api_key=secret, base_url=url).save("cancel-test", overwrite=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
        env.update(PREFECT_API_URL=str(PREFECT_API_URL.value()), PREFECT_RUNNER_POLL_FREQUENCY="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p))
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVE)], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                yield Served(url=url, block_ref={"$ref": {"block_document_id": str(block_id)}}, log=log)
            finally:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _until(predicate: Any, *, timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
    raise AssertionError(f"timed out waiting for {what}; serve log:\n{tail}")


async def _cancel_and_watch(served: Served, deployment: str, parameters: dict[str, Any]) -> tuple[Batch, float, bool]:
    """Start a run of the deployment, cancel it once its batch runs; return the batch, the seconds the
    batch took to be cancelled, and whether the hook logged the cancel on the run that created it."""
    async with AsyncBatchClient(api_key=parameters["_secret"], base_url=served.url) as api, get_client() as prefect:

        async def ready() -> Any:
            try:
                return await prefect.read_deployment_by_name(deployment)
            except Exception:
                return None

        await _until(ready, timeout=60, what=f"the deployment {deployment}", log=served.log)
        params = {k: v for k, v in parameters.items() if k != "_secret"}
        flow_run = await run_deployment(deployment, parameters=params, timeout=0)
        started = time.time() - 1

        async def running_batch() -> Batch | None:
            page = await api.batches.list(limit=20)
            mine = [b for b in page.data if b.created_at >= started and b.status is BatchStatus.IN_PROGRESS]
            return mine[0] if mine else None

        batch = await _until(running_batch, timeout=60, what="the batch to run", log=served.log)
        asked = time.monotonic()
        # What `prefect flow-run cancel` and the UI do:
        await prefect.set_flow_run_state(flow_run.id, State(type=StateType.CANCELLING))

        async def batch_cancelled() -> bool:
            return (await api.batches.retrieve(batch.id)).status is BatchStatus.CANCELLED

        async def run_cancelled() -> bool:
            state = (await prefect.read_flow_run(flow_run.id)).state
            return state is not None and state.type is StateType.CANCELLED

        await _until(batch_cancelled, timeout=40, what="the batch to be cancelled", log=served.log)
        took = time.monotonic() - asked
        await _until(run_cancelled, timeout=40, what="the flow run to be cancelled", log=served.log)
        final = await api.batches.retrieve(batch.id)
        creator = (final.metadata or {})["prefect_flow_run_id"]

        async def hook_logged() -> bool:
            # Logs reach the API through a background worker of whichever process ran the hook.
            logs = await prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[creator])))
            return any(f"batch {batch.id} is now cancelling" in entry.message for entry in logs)

        logged = await _until(hook_logged, timeout=20, what="the hook's log line", log=served.log)
    return final, took, logged


async def test_cancelling_a_run_batch_flow_run_cancels_its_batch(
    served: Served, secret: str, make_requests: Any
) -> None:
    batch, took, logged = await _cancel_and_watch(
        served, "run-batch/cancel-test",
        {"requests": make_requests(20), "endpoint": ENDPOINT, "poll_interval": 0.2, "credentials": served.block_ref,
         "_secret": secret},
    )

    assert batch.status is BatchStatus.CANCELLED and batch.request_counts.completed < 20  # stopped part-way
    assert took < 20
    assert logged


async def test_cancelling_a_parent_flow_run_cancels_the_batch_of_its_run_batch_subflow(
    served: Served, secret: str, make_requests: Any
) -> None:
    batch, took, logged = await _cancel_and_watch(
        served, "parent-of-run-batch/cancel-test",
        {"requests": make_requests(20), "credentials": served.block_ref, "_secret": secret},
    )

    assert batch.status is BatchStatus.CANCELLED and batch.request_counts.completed < 20
    assert took < 20
    assert logged


@pytest.mark.parametrize("given", ["a saved block passed in code", "no block: the environment"])
async def test_the_hook_finds_the_credentials_outside_the_process_that_created_the_batch(
    served: Served, secret: str, make_requests: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # The hook as a runner calls it: for a flow run this process never ran, so all it has is the
    # stored parameters: a loaded block is stored with its document id and an obfuscated key.
    if given.startswith("a saved block"):
        loaded = await OpenAIBatchCredentials.aload("cancel-test")
        parameters = run_batch.serialize_parameters({"credentials": loaded})
        assert parameters["credentials"]["api_key"] != secret
    else:
        parameters = {}
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        monkeypatch.setenv("OPENAI_BASE_URL", served.url)
    run_id = uuid.uuid4()
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({**r, "method": "POST", "url": ENDPOINT}) + "\n" for r in make_requests(3)))
    async with AsyncBatchClient(api_key=secret, base_url=served.url) as api:
        file_id = (await api.files.upload(path)).id
        batch = await api.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                         metadata={"prefect_flow_run_id": str(run_id)})
        other = await api.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                         metadata={"prefect_flow_run_id": str(uuid.uuid4())})
        flow_run = FlowRun(id=run_id, flow_id=uuid.uuid4(), parameters=parameters,
                           created=datetime.now(timezone.utc))

        await cancel_flow_run_batches(run_batch, flow_run, Cancelling())

        assert (await api.batches.retrieve(batch.id)).status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
        assert not (await api.batches.retrieve(other.id)).status.is_terminal  # another run's batch is left alone
        await api.batches.cancel(other.id)

"""A sweep recognises batches made under an identity its own deployment made and then replaced.

An Airflow deployment's first tasks, started together, can each make the deployment identity; the
value written last wins, and a task that read another one first names that replaced identity in its
batches' owner records. Each value made is recorded in a Variable of its own
(``batch_ops_deployment_id.<value>``, :func:`batch_ops.airflow.deployment.proves_identity`). The sweep
asks about the identities its candidates name: a proven one is this deployment's (its ended runs'
batches are orphans), any other stays foreign. Real HTTP against the local server; the
orchestrator's answers are plain functions, as in ``tests/test_orphan_proof.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

from batch_ops import AsyncBatchClient, Batch, BatchClient
from batch_ops.identity.owners import Owner, airflow_owner_metadata
from batch_ops.orphans import OwnerState, asweep, sweep

KEY = "sk-orphan-replaced-test"
NOW, REPLACED, THEIRS = "a1b2c3d4e5f60718", "0badc0ffee000001", "ffee00112233aabb"


def _submit(client: BatchClient, task: str, deployment: str) -> Batch:
    metadata = airflow_owner_metadata(dag_id="nightly", run_id="scheduled__2026-03-01", task_id=task,
                                      deployment=deployment)
    return client.submit([{"custom_id": "a", "body": {"model": "m", "input": "x"}}], endpoint="/v1/embeddings",
                         metadata=metadata)


def test_batches_of_a_replaced_identity_are_swept_as_ours(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    asked: list[str] = []

    def proves(identity: str) -> bool:
        """This deployment's Variables: it made NOW and REPLACED, never THEIRS."""
        asked.append(identity)
        return identity in (NOW, REPLACED)

    def ended(owners: list[Owner]) -> Mapping[str, OwnerState]:
        return {o.id: OwnerState.ENDED for o in owners}

    with make_server(request_latency=600, api_key=KEY) as url, BatchClient(api_key=KEY, base_url=url) as client:
        replaced = _submit(client, "first", REPLACED)
        theirs = _submit(client, "staging", THEIRS)
        mine = _submit(client, "later", NOW)
        # Without the proof (as before): the replaced identity's batch is foreign, left running.
        before = sweep(client, ended, cancel=False, min_age=0, systems=["airflow"], deployment=NOW)
        assert {j.batch.id: j.verdict for j in before.judgements} == {
            replaced.id: "foreign", theirs.id: "foreign", mine.id: "orphan"}

        report = sweep(client, ended, cancel=True, min_age=0, systems=["airflow"], deployment=NOW, proves=proves)
        status = {b.id: b.status.value for b in client.batches.iter_all()}
    assert {j.batch.id: j.verdict for j in report.judgements} == {
        replaced.id: "orphan", theirs.id: "foreign", mine.id: "orphan"}, report.as_dict()
    assert status[replaced.id] in ("cancelling", "cancelled") and status[mine.id] in ("cancelling", "cancelled")
    assert status[theirs.id] == "in_progress"  # another deployment's: never touched
    assert sorted(asked) == sorted([REPLACED, THEIRS])  # each other identity asked once; ours needs no question


def test_the_async_sweep_asks_the_same(make_server: Callable[..., AbstractContextManager[str]]) -> None:
    async def ended(owners: list[Owner]) -> Mapping[str, OwnerState]:
        return {o.id: OwnerState.ENDED for o in owners}

    async def main(url: str) -> dict[str, str]:
        async with AsyncBatchClient(api_key=KEY, base_url=url) as client:
            report = await asweep(client, ended, min_age=0, systems=["airflow"], deployment=NOW,
                                  proves=lambda identity: identity == REPLACED)
        return {j.batch.id: j.verdict for j in report.judgements}

    with make_server(request_latency=600, api_key=KEY) as url, BatchClient(api_key=KEY, base_url=url) as client:
        replaced, theirs = _submit(client, "first", REPLACED), _submit(client, "staging", THEIRS)
        verdicts = asyncio.run(main(url))
    assert verdicts == {replaced.id: "orphan", theirs.id: "foreign"}

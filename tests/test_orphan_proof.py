"""A sweep cancels only the batches it can prove are its own (issue 22, item 6), against a real local server.

The orchestrator's answers are given by a plain function here (what Airflow or Prefect would
say of each run); the batches, their metadata, the listing and the cancels are real HTTP. The
Airflow test with two real deployments is ``tests/airflow/test_two_deployments.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import pytest

from batch_ops import Batch, BatchClient
from batch_ops.identity.owners import AIRFLOW_OWNER_KEY, DEPLOYMENT_MAX, Owner, airflow_owner_metadata, owner_of
from batch_ops.orphans import OwnerState, judge, sweep

KEY = "sk-orphan-proof-test"
MINE, THEIRS = "a1b2c3d4e5f60718", "ffee00112233aabb"
RUN = "scheduled__2026-03-01T00:00:00+00:00"


def _owner(task: str, deployment: str | None, **extra: str) -> dict[str, str]:
    return airflow_owner_metadata(dag_id="nightly", run_id=RUN, task_id=task, deployment=deployment, **extra)


def _submit(client: BatchClient, metadata: Mapping[str, str] | None) -> Batch:
    return client.submit([{"custom_id": "a", "body": {"model": "m", "input": "x"}}], endpoint="/v1/embeddings",
                         metadata=metadata)


def test_sweep_cancels_proven_orphans_only(make_server: Callable[..., AbstractContextManager[str]]) -> None:
    asked: list[list[str]] = []

    def airflow_says(owners: list[Owner]) -> Mapping[str, OwnerState]:
        """This deployment's Airflow: every run named ended (its run of that id did)."""
        asked.append(sorted(o.label for o in owners))
        return {o.id: OwnerState.ENDED for o in owners}

    with make_server(request_latency=600, api_key=KEY) as url, BatchClient(api_key=KEY, base_url=url) as client:
        mine = _submit(client, _owner("create", MINE, ti_id=str(uuid.uuid4()), deployment_name="production"))
        theirs = _submit(client, _owner("create", THEIRS, deployment_name="staging"))
        old = _submit(client, _owner("old", None))  # made by an earlier batch_ops: no deployment
        report = sweep(client, airflow_says, cancel=True, min_age=0, systems=["airflow"], deployment=MINE)
        status = {b.id: b.status.value for b in client.batches.iter_all()}
        verdicts = {j.batch.id: j.verdict for j in report.judgements}
        assert verdicts == {mine.id: "orphan", theirs.id: "foreign", old.id: "unproven"}, report.as_dict()
        assert status[mine.id] in ("cancelling", "cancelled")
        assert status[theirs.id] == status[old.id] == "in_progress"
        # The other deployment's owner was not even asked about (its run id means nothing here).
        assert asked == [["airflow:nightly/" + RUN + "/create/-1 @production", "airflow:nightly/" + RUN + "/old/-1"]]
        assert dict(report.counts()) == {"kept": 0, "orphan": 1, "unproven": 1, "foreign": 1, "unknown": 0,
                                         "unowned": 0, "cancelled": 1}

        # Opting in (an API project no other deployment uses) sweeps the old batch too; never the foreign one.
        again = sweep(client, airflow_says, cancel=True, min_age=0, systems=["airflow"], deployment=MINE,
                      sweep_unproven=True)
        status = {b.id: b.status.value for b in client.batches.iter_all()}
    assert {j.batch.id: j.verdict for j in again.judgements} == {theirs.id: "foreign", old.id: "orphan"}
    assert status[old.id] in ("cancelling", "cancelled") and status[theirs.id] == "in_progress"


def test_a_sweep_without_its_own_identity_cancels_no_airflow_batch(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    # A server of its own whose batches stay running: on a shared one a loaded machine lets the
    # batch finish first, and a finished batch is no sweep candidate at all.
    with make_server(request_latency=600, api_key=KEY) as url, BatchClient(api_key=KEY, base_url=url) as client:
        batch = _submit(client, _owner("create", MINE))
        report = sweep(client, lambda owners: {o.id: OwnerState.ENDED for o in owners}, cancel=True, min_age=0,
                       since=batch.created_at - 1, deployment=None)
        assert client.batches.retrieve(batch.id).status.value in ("validating", "in_progress")
    (j,) = [j for j in report.judgements if j.batch.id == batch.id]
    assert j.verdict == "unproven" and "does not know its own deployment" in j.reason


@pytest.mark.parametrize(("state", "deployment", "unproven", "verdict"), [
    (OwnerState.ENDED, MINE, False, "orphan"),
    (OwnerState.ACTIVE, MINE, False, "kept"),
    (OwnerState.UNKNOWN, MINE, False, "unknown"),
    (OwnerState.ENDED, THEIRS, True, "foreign"),  # never, whatever the opt-in
    (OwnerState.ACTIVE, THEIRS, False, "foreign"),
    (None, THEIRS, False, "foreign"),
])
def test_judge(state: OwnerState | None, deployment: str, unproven: bool, verdict: str) -> None:
    batch = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0,
                  metadata=_owner("t", deployment))
    assert judge(batch, state, now=10_000, min_age=60, deployment=MINE, sweep_unproven=unproven).verdict == verdict


def test_prefect_owners_are_proven_by_their_uuid() -> None:
    batch = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0,
                  metadata={"prefect_flow_run_id": str(uuid.uuid4())})
    assert judge(batch, OwnerState.ENDED, now=10_000, min_age=60).verdict == "orphan"
    assert judge(batch, OwnerState.UNKNOWN, now=10_000, min_age=60).verdict == "unknown"  # another server's run


def test_owner_record_fits_the_api_and_keeps_the_deployment() -> None:
    ti = str(uuid.uuid4())
    short = owner_of(Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
                           created_at=0, metadata=_owner("t", MINE, ti_id=ti, deployment_name="production")))
    assert short is not None and (short.deployment, short.deployment_name, short.get("ti")) == (MINE, "production", ti)
    # Long ids: the readable parts give way first, the deployment stays.
    long_meta = airflow_owner_metadata(dag_id="d" * 150, run_id="r" * 150, task_id="t" * 100, deployment=MINE,
                                       ti_id=ti, deployment_name="n" * 200)
    value = long_meta[AIRFLOW_OWNER_KEY]
    doc = json.loads(value)
    assert len(value) <= 512 and doc["deployment"] == MINE and "deployment_name" not in doc
    # Too long even so: cut, and the sweep cannot place it (unknown, never cancelled).
    cut = airflow_owner_metadata(dag_id="d" * 250, run_id="r" * 250, task_id="t" * 250, deployment=MINE)
    assert len(cut[AIRFLOW_OWNER_KEY]) == 512
    batch = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0,
                  metadata=cut)
    assert judge(batch, None, now=10_000, min_age=0, deployment=MINE).verdict == "unknown"
    # A deployment identity or name longer than the record allows is cut to DEPLOYMENT_MAX.
    doc = json.loads(airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="x" * 500)[
        AIRFLOW_OWNER_KEY])
    assert doc["deployment"] == "x" * DEPLOYMENT_MAX

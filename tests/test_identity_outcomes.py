"""Run identity and outcomes, decided once in the core (issue 23, items 1 and 2).

* ``batch_ops.identity``: one value (:class:`RunIdentity`) gives the key, the owner record and the
  lookback start; an Airflow key holds the deployment, and a legacy key (the one the work had
  before) is looked up too, taking over only batches no other deployment owns.
* ``batch_ops.outcomes``: one default wait timeout, ``cancel_on_timeout`` in core's waits (the
  clients, the CLI's ``--wait``), a single poll and a wait for many batches driven by core.
* The names that moved still work from their old modules, with a ``DeprecationWarning``; and the
  import circle ``_plans → orphans → client → _plans`` is gone.

Real HTTP over loopback to the local server throughout.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from batch_ops import AsyncBatchClient, BatchClient, BatchStatus, BatchTimeoutError, NotFoundError, SubmitSpec
from batch_ops.identity import RunIdentity, airflow_key, airflow_owner_metadata
from batch_ops.polling import BatchPoller

EMBED = "/v1/embeddings"
REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]
#: The one default wait timeout: the 24 h completion window and an hour to finalize.
TWENTY_FIVE_HOURS = 25 * 3600.0


# ---------------------------------------------------------------------------------------------
# names that moved
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "name", "new"), [
    ("batch_ops.chain", "OutcomePolicy", "batch_ops.outcomes"),
    ("batch_ops.chain", "derive_key", "batch_ops.identity.keys"),
    ("batch_ops.chain", "IDEMPOTENCY_METADATA_KEY", "batch_ops.identity.keys"),
    ("batch_ops.chain", "attempt_key", "batch_ops.identity.keys"),
    ("batch_ops.chain", "check_idempotency_key", "batch_ops.identity.keys"),
    ("batch_ops.polling", "raise_for_outcome", "batch_ops.outcomes"),
    ("batch_ops.polling", "outcome_error", "batch_ops.outcomes"),
    ("batch_ops.polling", "timeout_error", "batch_ops.outcomes"),
    ("batch_ops.polling", "describe", "batch_ops.outcomes"),
    ("batch_ops.polling", "DEFAULT_FAIL_ON", "batch_ops.outcomes"),
    ("batch_ops.orphans", "airflow_owner_metadata", "batch_ops.identity.owners"),
    ("batch_ops.orphans", "owner_of", "batch_ops.identity.owners"),
    ("batch_ops.orphans", "Owner", "batch_ops.identity.owners"),
    ("batch_ops.orphans", "AIRFLOW_OWNER_KEY", "batch_ops.identity.owners"),
    ("batch_ops.orphans", "OWNER_METADATA_KEYS", "batch_ops.identity.owners"),
    ("batch_ops.fingerprint", "fingerprint_file", "batch_ops.identity.fingerprint"),
    ("batch_ops.fingerprint", "FINGERPRINT_LENGTH", "batch_ops.identity.fingerprint"),
])
def test_a_moved_name_still_works_from_its_old_module_with_a_deprecation_warning(old: str, name: str, new: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)
    assert [w.category for w in caught] == [DeprecationWarning] and new in str(caught[0].message)


def test_the_top_level_names_are_the_cores_and_do_not_warn() -> None:
    import batch_ops
    from batch_ops import outcomes

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert batch_ops.OutcomePolicy is outcomes.OutcomePolicy
        assert batch_ops.raise_for_outcome is outcomes.raise_for_outcome
        assert batch_ops.outcome_error is outcomes.outcome_error
        assert batch_ops.is_permanent is outcomes.is_permanent


def test_the_plans_no_longer_import_the_orphan_sweep() -> None:
    """The one circle of the house was ``_plans → orphans → client → _plans`` (the owner key names)."""
    code = "import sys, batch_ops._plans; print(sorted(m for m in sys.modules if m.startswith('batch_ops.orphans')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


# ---------------------------------------------------------------------------------------------
# one default wait timeout
# ---------------------------------------------------------------------------------------------


def _default(fn: Any, name: str = "timeout") -> Any:
    return inspect.signature(fn).parameters[name].default


def test_every_core_and_cli_wait_has_the_same_default_timeout() -> None:
    from batch_ops.cli import app
    from batch_ops.client import AsyncBatches, Batches

    assert _default(Batches.wait) == _default(AsyncBatches.wait) == TWENTY_FIVE_HOURS
    assert _default(app.submit) == _default(app.status) == TWENTY_FIVE_HOURS


# ---------------------------------------------------------------------------------------------
# cancel on timeout
# ---------------------------------------------------------------------------------------------


def test_a_wait_cancels_the_batch_at_its_timeout_only_when_asked(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        kept = client.submit(REQUESTS, endpoint=EMBED)
        with pytest.raises(BatchTimeoutError, match="keeps running") as plain:
            client.batches.wait(kept.id, poll_interval=0.05, timeout=0.3)
        gone = client.submit(REQUESTS, endpoint=EMBED)
        with pytest.raises(BatchTimeoutError, match=r"cancel requested \(cancel_on_timeout=True\)") as asked:
            client.batches.wait(gone.id, poll_interval=0.05, timeout=0.3, cancel_on_timeout=True)
        statuses = {b: client.batches.retrieve(b).status for b in (kept.id, gone.id)}

    assert plain.value.details["cancel"] is None and asked.value.details["cancel"] == "requested"
    assert statuses[kept.id] is BatchStatus.IN_PROGRESS or not statuses[kept.id].is_terminal
    assert statuses[gone.id] in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


async def test_the_async_wait_cancels_at_its_timeout_when_asked(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            batch = await client.submit(REQUESTS, endpoint=EMBED)
            with pytest.raises(BatchTimeoutError, match="cancel requested"):
                await client.batches.wait(batch.id, poll_interval=0.05, timeout=0.3, cancel_on_timeout=True)
            status = (await client.batches.retrieve(batch.id)).status
    assert status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


@pytest.mark.parametrize("command", ["submit", "status"])
def test_the_cli_wait_cancels_at_its_timeout_with_cancel_on_timeout(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Any, command: str) -> None:
    import json

    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({**r, "method": "POST", "url": EMBED}) + "\n" for r in REQUESTS))
    env = {**os.environ, "OPENAI_API_KEY": "local", "NO_COLOR": "1", "COLUMNS": "400"}
    with make_server(request_latency=60.0, concurrency=64) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        target = client.submit(REQUESTS, endpoint=EMBED).id if command == "status" else str(path)
        args = ["--endpoint", EMBED] if command == "submit" else []
        wait = ["--wait", "--poll-interval", "0.05", "--timeout", "0.5", "--cancel-on-timeout", "--json"]
        done = subprocess.run([sys.executable, "-m", "batch_ops.cli", command, target, *args, "--base-url", url, *wait],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
        batch_id = re.search(r"waiting for batch (batch_\w+)", done.stderr).group(1)  # type: ignore[union-attr]
        status = client.batches.retrieve(batch_id).status

    assert done.returncode == 5, done.stderr
    assert "cancel requested" in done.stderr
    assert status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


# ---------------------------------------------------------------------------------------------
# the deployment in the Airflow key, and the key of batches made before the upgrade
# ---------------------------------------------------------------------------------------------


def _airflow(deployment: str) -> RunIdentity:
    return RunIdentity.airflow(dag_id="nightly", task_id="embed", run_id="scheduled__2026-03-01T00:00:00+00:00",
                               started=time.time() - 60, deployment=deployment)


def test_two_deployments_never_share_a_chain_and_a_legacy_batch_is_found_by_its_own_deployment_only(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    legacy_key = airflow_key(dag_id="nightly", task_id="embed", run_id="scheduled__2026-03-01T00:00:00+00:00")
    with make_server(request_latency=60.0, concurrency=64) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        def submit(identity: RunIdentity) -> Any:
            return client.submit_spec(REQUESTS, SubmitSpec.of(endpoint=EMBED, identity=identity))

        def made_before_the_upgrade(deployment: str | None) -> Any:
            owner = airflow_owner_metadata(dag_id="nightly", run_id="r", task_id="embed", deployment=deployment)
            return client.submit(REQUESTS, endpoint=EMBED, idempotency_key=legacy_key, metadata=owner)

        production_old = made_before_the_upgrade("prod")
        production = submit(_airflow("prod"))        # a retry across the upgrade: its old batch, not a new one
        staging = submit(_airflow("staging"))        # production's old batch is not staging's: a batch of its own
        staging_again = submit(_airflow("staging"))  # staging's retry: its own batch
        production_again = submit(_airflow("prod"))  # still the old batch

    assert not production.created and production.batch.id == production_old.id
    assert staging.created and staging.batch.id != production_old.id
    assert not staging_again.created and staging_again.batch.id == staging.batch.id
    assert not production_again.created and production_again.batch.id == production_old.id


def test_the_window_left_a_batch_of_an_older_batch_ops_names_no_deployment_and_may_be_adopted(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    """What remains (docs: batch_ops.identity): a batch made under the old key by a batch_ops that wrote
    no deployment in its owner record cannot be told apart — either deployment's try adopts it, as before."""
    legacy_key = airflow_key(dag_id="nightly", task_id="embed", run_id="scheduled__2026-03-01T00:00:00+00:00")
    with make_server(request_latency=60.0, concurrency=64) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        old = client.submit(REQUESTS, endpoint=EMBED, idempotency_key=legacy_key,
                            metadata=airflow_owner_metadata(dag_id="nightly", run_id="r", task_id="embed"))
        staging = client.submit_spec(REQUESTS, SubmitSpec.of(endpoint=EMBED, identity=_airflow("staging")))
    assert staging.batch.id == old.id and not staging.created


# ---------------------------------------------------------------------------------------------
# a single poll, and a wait for many batches
# ---------------------------------------------------------------------------------------------


def test_a_single_poll_decides_done_or_not_and_counts_failures_across_polls(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    with make_server(request_latency=60.0, concurrency=64) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        running = client.submit(REQUESTS, endpoint=EMBED)
        poll = client.batches.poll(running.id, poller=BatchPoller(poll_interval=1))
        assert poll.batch is not None and not poll.done and poll.decision.action == "wait"
        with pytest.raises(NotFoundError):
            client.batches.poll("batch_nope", poller=BatchPoller(poll_interval=1))
    with make_server(http_500=1.0) as url, BatchClient(api_key="local", base_url=url, max_retries=0) as client:
        poller = BatchPoller(poll_interval=1, max_consecutive_failures=2)
        failed = [client.batches.poll("batch_1", poller=poller) for _ in range(2)]
        assert all(p.batch is None and p.decision.action == "wait" and "500" in p.error for p in failed)
        with pytest.raises(Exception, match="500"):
            client.batches.poll("batch_1", poller=poller)  # the third in a row: the poller gives up


async def test_a_wait_for_many_ends_when_one_ends_at_the_wake_up_or_at_the_deadline(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    with make_server(request_latency=0.05, concurrency=1) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            quick = await client.submit(REQUESTS[:1], endpoint=EMBED)
            slow = await client.submit([{"custom_id": f"s{i}", "body": {"model": "m", "input": "x"}}
                                        for i in range(400)], endpoint=EMBED)
            ended = await client.batches.wait_many([slow.id, quick.id], poll_interval=0.05, deadline=time.time() + 30)
            assert ended.reason == "ended" and quick.id in ended.ended and slow.id not in ended.ended
            woke = await client.batches.wait_many([slow.id], poll_interval=0.05, wake_at=time.time() + 0.3,
                                                  deadline=time.time() + 30)
            timed_out = await client.batches.wait_many([slow.id], poll_interval=0.05, wake_at=time.time() + 30,
                                                       deadline=time.time() + 0.3)
            with pytest.raises(NotFoundError):  # permanent: at once
                await client.batches.wait_many([slow.id, "batch_nope"], poll_interval=0.05,
                                               deadline=time.time() + 30)
    assert woke.reason == "wake" and [b.id for b in woke.batches] == [slow.id]
    assert timed_out.reason == "timeout"

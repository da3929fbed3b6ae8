"""A try whose deployment identity was then replaced: later tries take its chain over, once (issue 22, money).

What the end-to-end run showed on a loaded machine (tests/airflow/test_identity_race.py makes it
happen under Airflow): try 1 of a task used identity ``A`` (read while the deployment's first
tasks were still writing theirs), tries 2 and 3 read the value written last, ``K``. Each try here
is one submit with the identity that try had, against a server that fails 30 % of requests, as
the e2e DAG does; the deployment proves ``A`` and ``K`` its own, never ``F`` (another deployment
sharing the project, with a chain for the same task instance and requests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import AsyncBatchClient, BatchClient, ClientSettings, SubmitSpec
from batch_ops.identity import RunIdentity

CHAT = "/v1/chat/completions"
REQUESTS = [{"custom_id": f"rf-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": f"rf {i}"}]}}
            for i in range(20)]
MADE_HERE = {"A", "K"}  # what the deployment's records prove (Airflow: a Variable per identity made)


def _try(deployment: str, asked: list[str]) -> RunIdentity:
    def proves(identity: str) -> bool:
        asked.append(identity)
        return identity in MADE_HERE

    return RunIdentity.airflow(dag_id="bo_e2e_retry_failures", task_id="batch", run_id="scheduled__2025-01-01",
                               started=time.time() - 60, deployment=deployment, proves=proves)


def _spec(identity: RunIdentity, endpoint: str | None = CHAT) -> SubmitSpec:
    return SubmitSpec.of(endpoint=endpoint, identity=identity, fail_on_request_failures=True)


def test_tries_under_a_replaced_identity_pay_each_request_once_and_never_take_a_foreign_chain(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    asked: list[str] = []
    with make_server(fail_requests=0.3, seed=4, request_latency=0.001) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        foreign = client.submit_spec(REQUESTS, _spec(_try("F", asked)))  # the other deployment's chain
        client.batches.wait(foreign.batch.id, poll_interval=0.05)
        tries = []
        for deployment in ("A", *["K"] * 9):  # the DAG's 8 retries, and one to spare
            tries.append(client.submit_spec(REQUESTS, _spec(_try(deployment, asked))))
            if not tries[-1].created:  # its last attempt was accepted: the task succeeds
                break
            client.batches.wait(tries[-1].batch.id, poll_interval=0.05)
        ours = [b for b in client.batches.list(limit=100).data if b.id != foreign.batch.id]

    # Try 1 made attempt 0; try 2 (identity now K) took A's chain over and made attempt 1 under A's key;
    # later tries continue that one chain until every request has a success: each request paid for once.
    assert not tries[-1].created and len(tries) >= 3, [t.chain.attempts for t in tries]
    assert [t.created for t in tries[:2]] == [True, True] and tries[1].chain.key == tries[0].chain.key
    assert [a.number for a in tries[-1].chain.attempts] == list(range(len(tries[-1].chain.attempts)))
    assert sum(b.request_counts.completed for b in ours) == len(REQUESTS)
    assert foreign.batch.id not in {b.id for t in tries for b in t.chain.batches}
    assert set(asked) <= {"A", "F"}, asked  # K's own key finds its chain: only other identities are asked about


async def test_the_async_driver_asks_off_the_event_loop_and_takes_the_chain_over(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    asked: list[str] = []
    with make_server(request_latency=60.0) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            first = await client.submit_spec(REQUESTS, _spec(_try("A", asked)))
            again = await client.submit_spec(REQUESTS, _spec(_try("K", asked)))
    assert first.created and not again.created and again.batch.id == first.batch.id and asked == ["A"]


NEUTRAL = [{"custom_id": f"rf-{i}", "model": "claude-sonnet-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": f"rf {i}"}]} for i in range(20)]
#: provider: (its model, its base URL from the local server's)
LEDGER_PROVIDERS = {"anthropic": ("claude-sonnet-4-5", str),
                    "gemini": ("gemini-2.5-flash", lambda url: url.removesuffix("/v1") + "/v1beta")}


@pytest.mark.parametrize("provider", list(LEDGER_PROVIDERS))
def test_with_a_key_ledger_tries_under_a_replaced_identity_pay_each_request_once(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path, wire_oracle: Any,
        provider: str) -> None:
    """The same race on batch APIs whose batches carry no owner record: Anthropic's (nor the key: the ledger holds
    the chains) and Gemini's (the key, found by listing). The key ledger also records which identities each task
    instance created under; a later try proves the earlier one its deployment's and continues that chain (on
    Anthropic copied into its own key's record). The official SDK counts what was paid."""
    model, base = LEDGER_PROVIDERS[provider]
    requests = [{**r, "model": model} for r in NEUTRAL]
    asked: list[str] = []
    settings = ClientSettings(api_key="local-key", provider=provider, model=model, key_ledger=str(tmp_path / "ledger"),
                              backoff_initial=0.05, backoff_max=0.2)
    with make_server(fail_requests=0.3, seed=4, request_latency=0.001) as url, \
            BatchClient(settings=settings.model_copy(update={"base_url": base(str(url))})) as client:
        foreign = client.submit_spec(requests, _spec(_try("F", asked), None))  # the other deployment's chain
        client.batches.wait(foreign.batch.id, poll_interval=0.05)
        before = wire_oracle.paid(provider, url)
        tries = []
        for deployment in ("A", *["K"] * 9):
            tries.append(client.submit_spec(requests, _spec(_try(deployment, asked), None)))
            if not tries[-1].created:
                break
            client.batches.wait(tries[-1].batch.id, poll_interval=0.05)
        after = wire_oracle.paid(provider, url)

    assert not tries[-1].created and len(tries) >= 3, [t.chain.attempts for t in tries]
    assert tries[1].chain.batch_ids[0] == tries[0].batch.id  # try 2 continued try 1's chain
    assert any("taking it over" in n for n in tries[1].notices), tries[1].notices
    ours = {cid: n - before.get(cid, 0) for cid, n in after.items()}
    assert ours == {r["custom_id"]: 1 for r in NEUTRAL}, ours  # each request paid for once by this task's tries
    assert foreign.batch.id not in {b.id for t in tries for b in t.chain.batches}
    assert "F" in asked and "K" not in asked, asked  # F asked and refused; K's own key is never asked about

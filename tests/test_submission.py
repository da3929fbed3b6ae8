"""The submission core over real HTTP: attempt chains, retries that pay only for what failed,
concurrent tries collapsing to one batch, uploads reused, keys checked before any upload.

"Paid" is what the server billed: the successful requests of every batch it holds, read with the
official ``openai`` SDK. "Needed" is the number of requests. A retry must never make paid exceed
needed; two tries at once may add at most what the duplicate finished before it cancelled itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops import AsyncBatchClient, BatchClient, InputValidationError, Source, SubmitSpec
from batch_ops.errors import InternalServerError
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY, KEY_MAX_LENGTH

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[Any]]


def requests_file(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
            fh.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": body}) + "\n")
    return path


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="local", base_url=str(url), max_retries=3)


def server_batches(url: str) -> list[Any]:
    with sdk(url) as client:
        return list(client.batches.list(limit=100))


def paid(url: str) -> int:
    """Successful requests of every batch on the server: what the account was billed for."""
    return sum(b.request_counts.completed for b in server_batches(url) if b.request_counts)


def until_accepted(client: BatchClient, source: Any, *, key: str, tries: int = 12, **policy: Any) -> list[Any]:
    """Submit under ``key`` and wait, as a retried task would, until the policy accepts the chain."""
    submissions = []
    for _ in range(tries):
        sub = client.submit_spec(source, SubmitSpec.of(endpoint=CHAT, idempotency_key=key, **policy))
        submissions.append(sub)
        if sub.step.action == "done":
            return submissions
        client.batches.wait(sub.batch.id, poll_interval=0.05, timeout=60)
    pytest.fail(f"the chain of {key} was not accepted after {tries} tries: {submissions[-1]}")


def test_a_retry_after_request_failures_pays_only_for_the_requests_that_failed(
    make_server: MakeServer, tmp_path: Path
) -> None:
    path = requests_file(tmp_path / "in.jsonl", 20)
    with make_server(fail_requests=0.3, seed=3) as url, BatchClient(api_key="local", base_url=url) as client:
        subs = until_accepted(client, path, key="nightly-1", fail_on_request_failures=True)
        chain = client.batches.chain("nightly-1")
        batches = server_batches(url)
        assert paid(url) == 20, "a request that succeeded was paid for again"
        assert len(chain.attempts) >= 2 and len(batches) == len(chain.attempts)
        # Each new attempt carried exactly the requests still without a success.
        for prev, nxt in zip(chain.attempts, chain.attempts[1:], strict=False):
            assert nxt.batch.request_counts.total == prev.batch.request_counts.failed
        created = [s for s in subs if s.created]
        assert created[0].carried == 20 and all(s.carried < 20 for s in created[1:])
        # The chain reads as one result per request, every one a success, in input order.
        results = list(client.results(chain, input_path=path))
        assert [r.custom_id for r in results] == [f"q-{i}" for i in range(20)]
        assert all(r.ok for r in results)
        assert chain.request_counts().completed == 20 and chain.request_counts().total == 20
        summary = chain.summary()
        assert summary["batch_ids"] == [a.batch.id for a in chain.attempts]
        assert summary["batch_id"] == chain.latest.id and summary["chain_request_counts"]["completed"] == 20


def test_a_retry_after_an_expired_batch_carries_only_what_did_not_finish(
    make_server: MakeServer, tmp_path: Path
) -> None:
    path = requests_file(tmp_path / "in.jsonl", 10)
    with make_server(concurrency=1, request_latency=0.15, expire_after=0.6) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        first = client.submit(path, endpoint=CHAT, idempotency_key="expiring")
        first = client.batches.wait(first.id, poll_interval=0.05, timeout=30)
        assert first.status.value == "expired" and 0 < first.request_counts.completed < 10
        second = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="expiring"))
        assert second.created and second.step.number == 1
        assert second.carried == 10 - first.request_counts.completed
        assert second.batch.metadata[IDEMPOTENCY_METADATA_KEY] == f"expiring@{second.fingerprint}.1"
        until_accepted(client, path, key="expiring")
        assert paid(url) == 10


def test_a_retry_after_a_failed_batch_sends_the_same_input_file_again(make_server: MakeServer, tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 5)
    with make_server(token_limit_failures=1) as url, BatchClient(api_key="local", base_url=url) as client:
        first = client.batches.wait(client.submit(path, endpoint=CHAT, idempotency_key="tl").id, poll_interval=0.05)
        assert first.status.value == "failed"
        files_before = len(client.files.list(purpose="batch").data)
        second = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="tl"))
        assert second.created and second.batch.input_file_id == first.input_file_id
        assert len(client.files.list(purpose="batch").data) == files_before, "nothing ran: no second upload"
        assert client.batches.wait(second.batch.id, poll_interval=0.05).status.value == "completed"
        assert paid(url) == 5


def test_an_accepted_or_running_attempt_is_returned_not_paid_again(make_server: MakeServer, tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 8)
    with make_server(concurrency=1, request_latency=0.5) as url, BatchClient(api_key="local", base_url=url) as client:
        running = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="k"))
        again = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="k"))
        assert again.step.action == "attach" and again.batch.id == running.batch.id and not again.created
        client.batches.wait(running.batch.id, poll_interval=0.05)
        done = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="k"))
        assert done.step.action == "done" and done.batch.id == running.batch.id
        # fail_on=[] accepts every outcome: a key's work is never created twice then either.
        assert len(server_batches(url)) == 1 and len(client.files.list(purpose="batch").data) == 1


def test_a_key_that_looks_like_an_attempt_number_is_a_chain_of_its_own(make_server: MakeServer,
                                                                       tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 2)
    with make_server(token_limit_failures=1) as url, BatchClient(api_key="local", base_url=url) as client:
        base = client.batches.wait(client.submit(path, endpoint=CHAT, idempotency_key="run").id, poll_interval=0.05)
        assert base.status.value == "failed"
        other = client.submit(path, endpoint=CHAT, idempotency_key="run.1")  # a user's key, not attempt 1 of "run"
        assert client.batches.chain("run").batch_ids == [base.id]
        assert client.batches.chain("run.1").batch_ids == [other.id]
        nxt = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="run"))
        assert nxt.created and nxt.step.number == 1 and nxt.batch.id != other.id


@pytest.mark.parametrize("key", ["", "   ", 5, "k" * (KEY_MAX_LENGTH + 1), "a\nb"],
                         ids=["empty", "blank", "int", "too-long", "control"])
def test_keys_are_checked_before_anything_is_uploaded(make_server: MakeServer, tmp_path: Path, key: Any) -> None:
    path = requests_file(tmp_path / "in.jsonl", 2)
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(InputValidationError) as caught:
            client.submit(path, endpoint=CHAT, idempotency_key=key)
        assert caught.value.problems[0].rule == "invalid_idempotency_key"
        assert "fix:" in str(caught.value)
        assert client.files.list().data == [] and client.batches.list().data == []


def test_an_upload_left_by_a_try_that_died_before_its_create_is_reused(make_server: MakeServer,
                                                                       tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 3)
    with make_server(create_failures=1) as url:
        with BatchClient(api_key="local", base_url=url) as client:
            client.retry_policy.max_retries = 0  # this try gives up at the refused create, its upload made
            with pytest.raises(InternalServerError):
                client.submit(path, endpoint=CHAT, idempotency_key="crashy")
            (orphan,) = client.files.list(purpose="batch").data
            assert server_batches(url) == []
        with BatchClient(api_key="local", base_url=url) as retry:
            sub = retry.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="crashy"))
            assert sub.created and sub.reused_upload and sub.batch.input_file_id == orphan.id
            assert len(retry.files.list(purpose="batch").data) == 1


def test_an_uploaded_file_as_the_source_is_filtered_for_the_next_attempt(make_server: MakeServer,
                                                                         tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 12)
    with make_server(fail_requests=0.4, seed=11) as url, BatchClient(api_key="local", base_url=url) as client:
        uploaded = client.files.upload(path)
        until_accepted(client, Source(file_id=uploaded.id), key="by-file", fail_on_request_failures=True)
        assert paid(url) == 12
        chain = client.batches.chain("by-file")
        assert len(chain.attempts) >= 2 and chain.attempts[0].batch.input_file_id == uploaded.id
        assert all(r.ok for r in client.results(chain))  # the requests read back from the first input file


async def test_the_async_client_drives_the_same_chain(make_server: MakeServer, tmp_path: Path) -> None:
    path = requests_file(tmp_path / "in.jsonl", 10)
    with make_server(concurrency=1, request_latency=0.1, expire_after=0.45) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            for _ in range(12):
                sub = await client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="async-chain"))
                if sub.step.action == "done":
                    break
                await client.batches.wait(sub.batch.id, poll_interval=0.05, timeout=30)
            chain = await client.batches.chain("async-chain")
            assert len(chain.attempts) >= 2
            results = [r async for r in client.results(chain, input_path=path)]
        assert [r.custom_id for r in results] == [f"q-{i}" for i in range(10)] and all(r.ok for r in results)
        assert paid(url) == 10


# --- two real processes at the same moment ------------------------------------------------------

_RACER = textwrap.dedent("""
    import sys, time
    from batch_ops import BatchClient, SubmitSpec
    url, path, key, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = BatchClient(api_key="local", base_url=url)
    time.sleep(max(0.0, start - time.time()))
    sub = client.submit_spec(path, SubmitSpec.of(endpoint="/v1/chat/completions", idempotency_key=key))
    print(sub.batch.id, int(sub.created), ",".join(sub.cancelled) or "-", flush=True)
""")


def race(url: str, path: Path, key: str, n: int) -> list[list[str]]:
    """``n`` processes submit ``key`` together, a little after the next second starts."""
    start = int(time.time()) + 3.05
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(url), str(path), key, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(n)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        out.append(stdout.split())
    return out


@pytest.mark.parametrize("n", [2, 4])
def test_tries_racing_on_one_key_collapse_to_one_batch(make_server: MakeServer, tmp_path: Path, n: int) -> None:
    path = requests_file(tmp_path / "in.jsonl", 20)
    with make_server(concurrency=1, request_latency=0.05) as url:
        answers = race(url, path, "raced", n)
        ids = {a[0] for a in answers}
        assert len(ids) == 1, f"the tries did not agree on one batch: {answers}"
        (winner,) = ids
        batches = server_batches(url)
        live = [b for b in batches if b.status not in ("cancelling", "cancelled")]
        assert [b.id for b in live] == [winner], [(b.id, b.status) for b in batches]
        with BatchClient(api_key="local", base_url=url) as client:
            done = client.batches.wait(winner, poll_interval=0.05, timeout=60)
            for b in batches:
                if b.id != winner:
                    client.batches.wait(b.id, poll_interval=0.05, timeout=60)
        extra = sum(b.request_counts.completed for b in server_batches(url) if b.id != winner)
        assert done.request_counts.completed == 20
        assert paid(url) == 20 + extra  # the duplicates' work before their cancel, and nothing else


def test_a_duplicate_that_ended_before_its_cancel_is_taken_as_it_is(make_server: MakeServer, tmp_path: Path) -> None:
    """A try that lost a race cancels its own batch; on a fast server that batch may already have
    completed, and the API refuses the cancel (400). The submit must go on with the batch as it is,
    not fail (seen when racing job workers reconciled on a fast server)."""
    from batch_ops._submit import _cancel_plan

    with make_server() as url, BatchClient(api_key="k", base_url=url, max_retries=0) as client:
        batch = client.submit(requests_file(tmp_path / "in.jsonl", 2), endpoint=CHAT)
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=30)
        assert done.status.value == "completed"
        [now] = client._run(_cancel_plan([done], **client._wire))
        assert (now.id, now.status.value) == (batch.id, "completed")

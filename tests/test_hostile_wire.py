"""What the client does when the wire misbehaves: every failure a ``BatchOpsError``, every wait
ended near its deadline, the key in no message, ids escaped, redirects followed safely.

The misbehaving server is ``batch_ops.server.hostile`` (real HTTP over loopback); the well-behaved
one is the local server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest

from batch_ops import AsyncBatchClient, BatchClient, BatchOpsError, BatchStatus, ConfigurationError
from batch_ops.client import _shared_clients
from batch_ops.errors import APIResponseValidationError, APITimeoutError, AuthenticationError, BatchTimeoutError
from batch_ops.server.hostile import serve_hostile

KEY = "sk-hostile-CANARY-7d1f0c"
MakeServer = Callable[..., AbstractContextManager[Any]]


def _sync(url: str, **kw: Any) -> BatchClient:
    return BatchClient(api_key=KEY, base_url=url, **kw)


# --- answers that are not what the client expects ---------------------------------------------


@pytest.mark.parametrize("mode", ["html", "truncated", "missing_fields"])
def test_a_200_that_is_not_a_batch_is_a_batch_ops_error_naming_what_came(mode: str) -> None:
    with serve_hostile(mode) as hostile, _sync(hostile.url, max_retries=0) as client:
        with pytest.raises(APIResponseValidationError) as caught:
            client.batches.retrieve("batch_1")
    text = str(caught.value)
    assert "GET" in text and "/batches/batch_1" in text and "not a batch" in text.lower()
    assert KEY not in text


@pytest.mark.parametrize("mode", ["html", "truncated", "missing_fields"])
async def test_the_async_client_raises_the_same(mode: str) -> None:
    with serve_hostile(mode) as hostile:
        async with AsyncBatchClient(api_key=KEY, base_url=hostile.url, max_retries=0) as client:
            with pytest.raises(APIResponseValidationError):
                await client.batches.retrieve("batch_1")


def test_a_wait_treats_unreadable_answers_as_failed_polls_then_gives_up_with_a_batch_ops_error() -> None:
    with serve_hostile("html") as hostile, _sync(hostile.url, max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(BatchOpsError) as caught:
            client.batches.wait("batch_1", poll_interval=0.05, timeout=30)
    assert isinstance(caught.value, APIResponseValidationError)
    assert len(hostile.seen) > 1, "one unreadable answer must not end a wait: it is retried like a 5xx"
    assert time.monotonic() - started < 10


def test_an_unknown_status_is_accepted_and_waited_on() -> None:
    with serve_hostile("unknown_status") as hostile, _sync(hostile.url) as client:
        batch = client.batches.retrieve("batch_1")
        assert batch.status.value == "queued" and not batch.status.is_terminal
        with pytest.raises(BatchTimeoutError):
            client.batches.wait("batch_1", poll_interval=0.05, timeout=0.5)


def test_azure_documented_answer_parses() -> None:
    with serve_hostile("azure") as hostile, _sync(hostile.url, api_version="2024-10-21") as client:
        batch = client.batches.retrieve("batch_6caaf24d-54a5-46be-b1b7-518884fcbdde")
    assert batch.status is BatchStatus.VALIDATING
    assert batch.request_counts.total == 0 and batch.endpoint is None


# --- redirects -----------------------------------------------------------------------------------


def test_a_cross_origin_redirect_never_carries_the_key() -> None:
    with serve_hostile("redirect") as hostile, _sync(hostile.url) as client:
        batch = client.batches.retrieve("batch_1")
    assert batch.id == "batch_1"
    assert hostile.seen_elsewhere, "the redirect was followed"
    (_method, _path, headers) = hostile.seen_elsewhere[0]
    assert "authorization" not in headers and "api-key" not in headers


def test_a_same_origin_redirect_is_followed_with_the_key() -> None:
    with serve_hostile("redirect_same") as hostile, _sync(hostile.url) as client:
        assert client.batches.retrieve("batch_1").id == "batch_1"
    assert [h.get("authorization") for _m, _p, h in hostile.seen] == [f"Bearer {KEY}"] * 2


async def test_the_async_client_follows_redirects_the_same_way() -> None:
    with serve_hostile("redirect") as hostile:
        async with AsyncBatchClient(api_key=KEY, base_url=hostile.url) as client:
            assert (await client.batches.retrieve("batch_1")).id == "batch_1"
    assert "authorization" not in hostile.seen_elsewhere[0][2]


# --- deadlines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["silent", "trickle"])
def test_a_wait_ends_near_its_deadline_whatever_the_server_does(mode: str) -> None:
    with serve_hostile(mode, trickle_interval=0.5) as hostile, _sync(hostile.url) as client:
        started = time.monotonic()
        with pytest.raises(BatchOpsError) as caught:
            client.batches.wait("batch_1", poll_interval=0.5, timeout=3)
        late = time.monotonic() - started - 3
    assert isinstance(caught.value, (BatchTimeoutError, APITimeoutError)), caught.value
    assert late < 2.0, f"the wait ended {late:.1f} s after its deadline"


@pytest.mark.parametrize("mode", ["silent", "trickle"])
async def test_an_async_wait_ends_near_its_deadline_whatever_the_server_does(mode: str) -> None:
    with serve_hostile(mode, trickle_interval=0.5) as hostile:
        async with AsyncBatchClient(api_key=KEY, base_url=hostile.url) as client:
            started = time.monotonic()
            with pytest.raises(BatchOpsError):
                await client.batches.wait("batch_1", poll_interval=0.5, timeout=3)
            late = time.monotonic() - started - 3
    assert late < 2.0, f"the wait ended {late:.1f} s after its deadline"


# --- secrets and ids -------------------------------------------------------------------------------


def test_a_key_the_server_echoes_is_redacted_from_the_error() -> None:
    with serve_hostile("echo_key") as hostile, _sync(hostile.url) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.batches.retrieve("batch_1")
    assert KEY not in str(caught.value) and KEY not in repr(caught.value.args)
    assert KEY not in (caught.value.message or "")
    assert "[redacted]" in str(caught.value)


def test_a_key_pasted_into_base_url_is_not_repeated() -> None:
    with pytest.raises(ConfigurationError) as caught:
        BatchClient(api_key=KEY, base_url=KEY)
    assert KEY not in str(caught.value)
    assert "base_url" in str(caught.value)


@pytest.mark.parametrize("bad_id", ["../files", "../batches/batch_1", "b?limit=1", "b#x", "a/b"])
def test_ids_are_escaped_into_paths(make_server: MakeServer, bad_id: str) -> None:
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        batch = client.submit([{"custom_id": "a", "body": {"model": "m", "messages": []}}],
                              endpoint="/v1/chat/completions")
        client.batches.wait(batch.id, poll_interval=0.05)
        files = {f.id for f in client.files.list()}
        with pytest.raises(BatchOpsError) as caught:
            client.batches.retrieve(bad_id)
        assert "404" in str(caught.value)  # one path segment the server does not know, not another resource
        with pytest.raises(BatchOpsError):
            client.files.delete(bad_id)
        with pytest.raises(BatchOpsError):
            client.batches.cancel(bad_id)
        assert [b.id for b in client.batches.list()] == [batch.id] and {f.id for f in client.files.list()} == files
        assert client.batches.retrieve(batch.id).status is BatchStatus.COMPLETED


@pytest.mark.parametrize("bad_id", ["", "   ", None, 5])
def test_empty_or_wrong_type_ids_are_refused_before_any_request(bad_id: Any) -> None:
    with BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0) as client:
        with pytest.raises(BatchOpsError) as caught:
            client.batches.retrieve(bad_id)
    assert "batch_id" in str(caught.value)


# --- the shared async client ---------------------------------------------------------------------


def test_shared_clients_do_not_outlive_their_event_loops() -> None:
    import gc
    import weakref

    from batch_ops.settings import ClientSettings

    settings = ClientSettings(api_key="k", base_url="http://127.0.0.1:9/v1")
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        AsyncBatchClient.shared(settings)

    for _ in range(50):
        asyncio.run(use())
    gc.collect()
    alive = sum(1 for ref in loops if ref() is not None)
    assert alive <= 1, f"{alive} of 50 finished event loops are still alive"
    assert len(_shared_clients()) <= 1


# --- an unreachable server: said, and given up on quickly where a person waits ---------------------


def test_an_interactive_cli_command_gives_up_quickly_and_says_what_it_retried() -> None:
    import subprocess
    import sys

    from batch_ops.server.background import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nobody listens
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "batch_ops.cli", "list", "--base-url", url, "--api-key", KEY],
                          capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode != 0
    assert took < 15, f"list took {took:.1f} s against a refused port"
    assert "retry 1 of" in proc.stderr and "GET /batches" in proc.stderr, proc.stderr[-1000:]
    assert KEY not in proc.stdout + proc.stderr


def test_the_cli_says_what_came_instead_of_a_batch_in_one_line() -> None:
    import subprocess
    import sys

    with serve_hostile("html") as hostile:
        proc = subprocess.run([sys.executable, "-m", "batch_ops.cli", "status", "batch_1", "--base-url", hostile.url,
                               "--api-key", KEY, "--max-retries", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "not a batch" in proc.stderr and "text/html" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr

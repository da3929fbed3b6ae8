"""Injected faults: latency, 429 with Retry-After, 500, dropped connections, failed requests."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from batch_ops.server import create_app
from batch_ops.server.background import free_port


def _statuses(url: str, n: int) -> list[int | str]:
    seen: list[int | str] = []
    with httpx.Client(timeout=10) as http:
        for _ in range(n):
            try:
                seen.append(http.get(url + "/batches").status_code)
            except httpx.TransportError as exc:
                seen.append(type(exc).__name__)
    return seen


def test_latency_delays_v1_calls_but_not_health(make_server: Any) -> None:
    # 2 s of latency against a bound of 1.5 s: far apart, so a loaded machine cannot blur them.
    with make_server(latency=2.0) as url:
        start = time.perf_counter()
        assert httpx.get(url + "/batches").status_code == 200
        assert time.perf_counter() - start >= 2.0
        start = time.perf_counter()
        assert httpx.get(url.replace("/v1", "/healthz")).status_code == 200
        assert time.perf_counter() - start < 1.5


def test_429_carries_retry_after(make_server: Any, kit: Any) -> None:
    with make_server(http_429=1.0, retry_after=0.2) as url:
        answer = httpx.get(url + "/batches")
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "1" and answer.headers["retry-after-ms"] == "200"
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            kit.sdk(url).batches.list()
        assert httpx.get(url.replace("/v1", "/healthz")).status_code == 200  # faults spare /healthz


def test_500_is_an_internal_server_error(make_server: Any, kit: Any) -> None:
    with make_server(http_500=1.0) as url:
        with pytest.raises(openai.InternalServerError) as info:
            kit.sdk(url).files.list()
        assert info.value.status_code == 500 and info.value.body["type"] == "server_error"  # type: ignore[index]


def test_drop_closes_the_connection_without_a_response(make_server: Any, kit: Any) -> None:
    with make_server(drop=1.0) as url:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
            httpx.get(url + "/batches")
        with pytest.raises(openai.APIConnectionError):
            kit.sdk(url).batches.list()
        assert "without starting response" not in url.log_path.read_text()


@contextlib.contextmanager
def _in_process(http: str, data_dir: Path, **options: Any) -> Iterator[str]:
    """create_app() under uvicorn in a thread, with the HTTP protocol implementation chosen."""
    port = free_port()
    app = create_app(data_dir=str(data_dir), **options)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_drop_works_with_both_uvicorn_protocols(http: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), _in_process(http, tmp_path, drop=1.0) as base:
        with httpx.Client(timeout=5) as client:
            for _ in range(3):
                with pytest.raises(httpx.RemoteProtocolError):
                    client.get(base + "/v1/batches")
            assert client.get(base + "/healthz").status_code == 200
    # uvicorn noticed the disconnect: it did not try to write a 500 on the dead connection.
    assert not [r for r in caplog.records if "without starting response" in r.getMessage()]


def test_same_seed_same_faults(make_server: Any) -> None:
    faults = {"http_429": 0.3, "http_500": 0.2, "drop": 0.1, "retry_after": 0.01}
    with make_server(seed=11, **faults) as a, make_server(seed=11, **faults) as b:
        first, second = _statuses(a, 30), _statuses(b, 30)
    assert first == second
    assert {200, 429, 500, "RemoteProtocolError"} <= set(first)


def test_sdk_survives_faults_through_a_whole_batch(make_server: Any, kit: Any) -> None:
    with make_server(http_429=0.1, http_500=0.1, drop=0.05, retry_after=0.01, seed=4) as url:
        client = kit.sdk(url, retries=8)
        batch = kit.submit(client, kit.chat_file(10))
        done = kit.wait(client, batch.id)
        assert done.status == "completed"
        assert len(kit.lines(client, done.output_file_id)) == 10
        assert [b.id for b in client.batches.list(limit=100)] == [batch.id]


def test_fail_requests_go_to_the_error_file_as_retryable(make_server: Any, kit: Any) -> None:
    failed_ids = []
    for _ in range(2):
        with make_server(fail_requests=0.3, seed=1) as url:
            client = kit.sdk(url)
            done = kit.wait(client, kit.submit(client, kit.chat_file(100)).id)
            assert done.status == "completed"  # completed does not mean every request worked
            out, err = kit.results(client, done)
            assert len(out) == done.request_counts.completed and len(err) == done.request_counts.failed
            assert 15 <= len(err) <= 45 and len(out) + len(err) == 100
            for line in err:
                assert line["error"] is None and line["response"]["status_code"] == 500
                error = line["response"]["body"]["error"]
                assert error["type"] == "server_error" and error["code"] == "server_error" and error["param"] is None
            failed_ids.append(sorted(x["custom_id"] for x in err))
    assert failed_ids[0] == failed_ids[1]  # the seed makes it repeatable


def test_request_latency_paces_processing(make_server: Any, kit: Any) -> None:
    with make_server(request_latency=0.2, concurrency=2) as url:
        client = kit.sdk(url)
        start = time.perf_counter()
        seen: list[str] = []
        done = kit.wait(client, kit.submit(client, kit.chat_file(6)).id, seen=seen)
        assert done.status == "completed" and time.perf_counter() - start >= 0.6  # 6 requests, 2 at a time
        assert "in_progress" in seen


def test_request_counts_advance_while_in_progress(make_server: Any, kit: Any) -> None:
    with make_server(request_latency=0.05, concurrency=2) as url:
        client = kit.sdk(url)
        batch = kit.submit(client, kit.chat_file(40))
        counts = set()
        while (b := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
            if b.status == "in_progress":
                counts.add(b.request_counts.completed)
            time.sleep(0.02)
        assert len(counts) >= 3 and b.request_counts.completed == 40

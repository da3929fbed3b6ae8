"""The drivers (``batch_ops._drivers``): an API call sent straight to our aiohttp transport answers
exactly as the same call through httpx's objects did, and triggers that start together share one
import of the transport.

Real HTTP over loopback: the local server (gzip on, to decode) and the hostile one (answers that are
not what a client expects).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops import AsyncBatchClient
from batch_ops._drivers import AsyncDriver
from batch_ops._transport import AiohttpTransport, decoded_headers
from batch_ops.effects import Reply, Send
from batch_ops.server.hostile import serve_hostile

MakeServer = Callable[..., AbstractContextManager[Any]]
CHAT = "/v1/chat/completions"
#: Headers that differ between two answers to the same request.
_PER_ANSWER = {"date", "x-request-id"}


@pytest.mark.parametrize("raw", [
    [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"req_1")],
    [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"SET-COOKIE", b"c=3")],  # repeated: joined
    [(b"X-Name", "Zoë".encode()), (b"Content-Length", b"2")],  # UTF-8
    [(b"X-Name", "Zoë".encode("latin-1"))],  # neither ASCII nor UTF-8: Latin-1
    [],
])
def test_response_headers_read_as_httpx_reads_them(raw: list[tuple[bytes, bytes]]) -> None:
    assert decoded_headers(raw) == dict(httpx.Headers(raw).items())


def _comparable(reply: Reply) -> tuple[Any, ...]:
    headers = {k: v for k, v in reply.headers.items() if k not in _PER_ANSWER}
    return reply.status, headers, reply.body, reply.error, reply.timed_out, reply.sent, reply.url


async def _both_ways(driver: AsyncDriver, send: Send) -> tuple[Reply, Reply]:
    """The reply straight from our transport, and the reply through httpx's request and response."""
    assert isinstance(driver.transport, AiohttpTransport)
    direct = await driver.send(send)
    through_httpx = await driver._send_httpx(send)
    return direct, through_httpx


@pytest.fixture
def gzip_server(make_server: MakeServer) -> Iterator[str]:
    # Batches whose one request takes an hour: after their first second they answer the same bytes.
    with make_server(gzip=True, request_latency=3600, concurrency=1) as url:
        yield str(url)


async def test_api_calls_on_our_transport_answer_as_through_httpx(gzip_server: str, tmp_path: Path) -> None:
    """Every kind of small-JSON call: a GET, a 404, a list with a query (gzipped: over 500 bytes), a
    POST without a body, a POST with JSON the server refuses, and the Azure dialect's api-version."""
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": CHAT,
                                "body": {"model": "m", "messages": []}}) + "\n")
    async with AsyncBatchClient(api_key="local", base_url=gzip_server) as client:
        uploaded = await client.files.upload(path)
        batches = [await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT) for _ in range(4)]
        await asyncio.sleep(1.5)  # validated and started: nothing moves any more
        driver = client._driver
        dialect = client.dialect
        sends = [
            dialect.retrieve_batch(batches[0].id),
            dialect.retrieve_batch("batch_missing"),
            dialect.list_batches(limit=4, after=None),
            dialect.list_files(purpose="batch"),
            dialect.retrieve_file(uploaded.id),
            Send("POST", "/batches", json={"input_file_id": uploaded.id, "endpoint": "/v1/nowhere"}),
        ]
        for send in sends:
            direct, through_httpx = await _both_ways(driver, send)
            assert _comparable(direct) == _comparable(through_httpx), send
        listed = await _both_ways(driver, dialect.list_batches(limit=4, after=None))
        assert listed[0].headers.get("content-encoding") == "gzip" and listed[0].body.startswith(b"{")
        # Cancelling twice: the same batch, answered the same way both times.
        first = await driver.send(dialect.cancel_batch(batches[1].id))
        again = await driver._send_httpx(dialect.cancel_batch(batches[1].id))
        assert (first.status, first.url) == (again.status, again.url)
    async with AsyncBatchClient(api_key="local", base_url=gzip_server, api_version="2024-10-21") as azure:
        assert azure.dialect.name == "azure"
        for send in (azure.dialect.retrieve_batch(batches[2].id), azure.dialect.list_batches(limit=2, after=None)):
            direct, through_httpx = await _both_ways(azure._driver, send)
            assert _comparable(direct) == _comparable(through_httpx), send


@pytest.mark.parametrize("mode", ["html", "truncated", "unknown_status", "redirect_same", "echo_key"])
async def test_answers_a_client_does_not_expect_arrive_the_same_way(mode: str) -> None:
    with serve_hostile(mode) as hostile:
        async with AsyncBatchClient(api_key="sk-hostile", base_url=hostile.url, max_retries=0) as client:
            send = client.dialect.retrieve_batch("batch_1")
            direct, through_httpx = await _both_ways(client._driver, send)
    assert _comparable(direct) == _comparable(through_httpx)


async def test_a_refused_connection_is_the_same_reply(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/v1"
    async with AsyncBatchClient(api_key="local", base_url=url, max_retries=0) as client:
        direct, through_httpx = await _both_ways(client._driver, client.dialect.retrieve_batch("batch_1"))
    assert _comparable(direct) == _comparable(through_httpx)
    assert direct.error is not None and direct.sent is False  # never sent: a create may be sent again


def test_triggers_starting_together_import_the_transport_once() -> None:
    """A triggerer that starts 500 triggers at once: one worker thread imports the transport for them
    all (each trigger sending its own import to the thread pool cost 1,000 thread hand-offs and
    stalled the loop for ~0.2 s at 1,000 triggers)."""
    code = """
import asyncio
from batch_ops.airflow import triggers

async def main():
    await asyncio.gather(*(triggers._preload_transport() for _ in range(500)))
    executor = asyncio.get_running_loop()._default_executor
    print(len(executor._threads))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1"


class _Recorder:
    """A loopback HTTP server that records each request it gets (method, path, headers, body) and answers {}."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen = self.seen = []  # type: list[tuple[str, str, dict[str, str], bytes]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    yield server
    server.close()


def test_a_streamed_body_and_call_headers_reach_the_wire_on_both_drivers(recorder: _Recorder, tmp_path: Path) -> None:
    """``Send.stream`` sends a file as the whole body (bytes as they are, its length declared), with the
    call's own headers; a call header cannot replace the credentials."""
    from batch_ops import BatchClient

    body = tmp_path / "body.bin"
    body.write_bytes(bytes(range(256)) * 9000)  # > 2 MiB: several pieces
    send = Send("POST", "/upload", stream=body, headers={"X-Goog-Upload-Command": "upload, finalize",
                                                        "Authorization": "Bearer stolen"})

    async def async_way() -> Reply:
        async with AsyncBatchClient(api_key="sk-driver", base_url=recorder.url) as client:
            return await client._driver.send(send)

    with BatchClient(api_key="sk-driver", base_url=recorder.url) as client:
        replies = [client._driver.send(send), asyncio.run(async_way())]
    assert [r.status for r in replies] == [200, 200]
    assert len(recorder.seen) == 2
    for method, path, headers, got in recorder.seen:
        assert (method, path, got) == ("POST", "/v1/upload", body.read_bytes())
        assert headers["content-length"] == str(body.stat().st_size)
        assert headers["content-type"] == "application/octet-stream"
        assert headers["x-goog-upload-command"] == "upload, finalize"
        assert headers["authorization"] == "Bearer sk-driver"


def test_call_headers_reach_the_wire_on_the_fast_path(recorder: _Recorder) -> None:
    """A small JSON call with its own headers (Anthropic's ``anthropic-version``) on our aiohttp transport."""
    async def go() -> Reply:
        async with AsyncBatchClient(api_key="sk-driver", base_url=recorder.url) as client:
            return await client._driver.send(Send("POST", "/messages/batches", json={"a": 1},
                                                  headers={"anthropic-version": "2023-06-01"}))

    assert asyncio.run(go()).status == 200
    ((_, _, headers, got),) = recorder.seen
    assert headers["anthropic-version"] == "2023-06-01" and headers["content-type"] == "application/json"
    assert json.loads(got) == {"a": 1}

"""Prefect tests: one ``prefect_test_harness()`` for the session, local Batch API servers, helpers.

Every test here runs against the harness's real Prefect server (a subprocess, SQLite in a temp
dir) and a real local Batch API server over loopback. Prefect's home, database and result
storage live in a temporary directory, so nothing reaches ``~/.prefect``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

# Before Prefect is imported anywhere: its settings are read once, at import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="batch_ops_prefect_home_")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
# These two default to ~/.prefect whatever PREFECT_HOME says (nested settings do not see it).
os.environ["PREFECT_SERVER_MEMO_STORE_PATH"] = os.path.join(_PREFECT_HOME, "memo_store.toml")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(_PREFECT_HOME, "storage")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_HOME,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from batch_ops.server import ServerURL, serve_in_background  # noqa: E402

#: The API key every local server here requires; tests assert it never leaks anywhere.
SECRET = "sk-test-9f2c7d41e0b8a6c35d17-secret"
ENDPOINT = "/v1/chat/completions"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """One Prefect server for the whole session (it takes ~15 s to start on 2 cores)."""
    settings = {
        PREFECT_HOME: _PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH: os.path.join(_PREFECT_HOME, "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        # Events are read back in tests: persist them quickly instead of every 5 s.
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.25,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
    }
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=90):
        yield
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def _server(**options: Any) -> Iterator[ServerURL]:
    with serve_in_background(api_key=SECRET, seed=1, **options) as url:
        yield url


@pytest.fixture(scope="session")
def batch_server() -> Iterator[ServerURL]:
    """Fast and clean: every request succeeds."""
    yield from _server(request_latency=0.01, concurrency=64)


@pytest.fixture(scope="session")
def faulty_server() -> Iterator[ServerURL]:
    """A share of the requests in each batch fail (written to the error file)."""
    yield from _server(request_latency=0.01, fail_requests=0.3)


@pytest.fixture(scope="session")
def slow_server() -> Iterator[ServerURL]:
    """Each request takes 2 s, and all requests of all batches run at once: one batch takes ~2-3 s."""
    yield from _server(request_latency=2.0, concurrency=256)


@pytest.fixture(scope="session")
def expiring_server() -> Iterator[ServerURL]:
    """A 1.5 s completion window, 2 requests at a time, 0.5 s each: a 12-request batch (~3 s of work)
    expires part-way, after its first 4 or 8 requests."""
    yield from _server(request_latency=0.5, concurrency=2, expire_after=1.5)


@pytest.fixture(scope="session")
def secret() -> str:
    return SECRET


@pytest.fixture(scope="session")
def make_requests() -> Callable[..., list[dict[str, Any]]]:
    return chat_requests


@pytest.fixture(scope="session")
def events() -> Callable[..., Awaitable[list[Any]]]:
    """``await events(name=..., resource_id=..., expect=n)``: the stored batch_ops events."""
    return read_events


@pytest.fixture(scope="session")
def to_json() -> Callable[[Any], str]:
    return dump


@pytest.fixture(scope="session")
def drop_proxy() -> type[DropProxy]:
    return DropProxy


def chat_requests(n: int, *, prefix: str = "q") -> list[dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "2+2?"}]}
    return [{"custom_id": f"{prefix}-{i}", "body": body} for i in range(n)]


async def read_events(*, name: str | None = None, resource_id: str | None = None, expect: int = 1,
                      timeout: float = 30.0) -> list[Any]:
    """Events stored by the Prefect server; waits for ``expect`` of them (they are persisted asynchronously)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            # A new filter each time: its default time window ends at its creation ("until=now"),
            # so one made before an event occurred would never match it.
            flt = EventFilter(
                event=EventNameFilter(name=[name]) if name else EventNameFilter(prefix=["batch_ops."]),
                resource=EventResourceFilter(id=[resource_id]) if resource_id else None,
            )
            page = await client.read_events(filter=flt, limit=50)
            if len(page.events) >= expect or time.monotonic() > deadline:
                return list(page.events)
            await asyncio.sleep(0.25)


def dump(obj: Any) -> str:
    """JSON text of anything the Prefect client returns, for "the key is not in here" checks."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, list):
        obj = [o.model_dump(mode="json") if hasattr(o, "model_dump") else o for o in obj]
    return json.dumps(obj, default=str)


class DropProxy:
    """A TCP proxy in front of a server that loses the *response* to the first N ``POST /v1/batches``.

    The request reaches the server (the batch is created) and the connection is then closed
    without a byte back: what a client sees when a load balancer times out after the server
    did the work. Each request gets ``Connection: close`` so every connection carries one
    request and the proxy needs no HTTP parsing beyond the request head.
    """

    def __init__(self, upstream: str, *, drop_creates: int = 1) -> None:
        hostport = upstream.split("://", 1)[1].split("/", 1)[0]
        self._host, port = hostport.rsplit(":", 1)
        self._port = int(port)
        self.drops_left = drop_creates
        self.creates_seen = 0
        self.url = ""
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [h for h in lines[1:] if h and not h.lower().startswith(("connection:", "keep-alive:"))]
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            request = "\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1") + body
            up_writer.write(request)
            await up_writer.drain()
            drop = False
            if method == "POST" and path.split("?")[0].rstrip("/").endswith("/batches"):
                self.creates_seen += 1
                if self.drops_left > 0:
                    self.drops_left -= 1
                    drop = True
            response = await up_reader.read()  # the server closes after one response
            up_writer.close()
            if not drop:
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DropProxy]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()

"""Shared fixtures: the local Batch API server, over real HTTP on loopback.

``server_url`` is one default echo server for the whole session (shared: do not kill or fault
it). ``make_server`` starts a private one with any options: ``with make_server(http_429=0.2,
seed=1) as url:``; ``url`` ends in ``/v1`` and has ``.pid``, ``.data_dir``, ``.kill()`` and
``.restart()``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from batch_ops.server import ServerURL, serve_in_background
from batch_ops.server.background import free_port


@pytest.fixture(scope="session")
def server_url() -> Iterator[ServerURL]:
    with serve_in_background() as url:
        yield url


@pytest.fixture
def make_server() -> Callable[..., AbstractContextManager[ServerURL]]:
    return serve_in_background


#: A webhook signing secret for tests (``whsec_`` + base64 of 32 bytes), never a real one.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"batch-ops-test-webhook-secret-32").decode()


@dataclass
class Delivery:
    """One POST the inbox received."""

    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Inbox:
    """A plain HTTP endpoint on loopback that records webhook deliveries (a stand-in for a user's
    endpoint; our own receiver is tested separately). ``fail_next`` answers that many POSTs 500;
    ``stop()`` closes the port (deliveries are refused) until ``start()``.
    """

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_next = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Inbox:
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                failing = inbox.fail_next > 0
                inbox.fail_next -= failing
                if not failing:
                    inbox.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body,
                                                     time.time()))
                self.send_response(500 if failing else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} of {count} webhook deliveries arrived"
            time.sleep(0.02)
        return self.deliveries


@pytest.fixture
def make_inbox() -> Iterator[Callable[[], Inbox]]:
    """Start recording endpoints (``make_inbox()``); all stopped after the test."""
    boxes: list[Inbox] = []

    def make() -> Inbox:
        boxes.append(Inbox().start())
        return boxes[-1]

    yield make
    for box in boxes:
        box.stop()


@pytest.fixture
def inbox(make_inbox: Callable[[], Inbox]) -> Inbox:
    return make_inbox()


@pytest.fixture(scope="session")
def webhook_secret() -> str:
    return WEBHOOK_SECRET


class Receiver:
    """``batch-ops webhooks serve`` as a user runs it (a subprocess), on a free port."""

    def __init__(self, port: int, proc: subprocess.Popen[str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.hook_url = f"{self.base}/openai"
        self.events_url = f"{self.base}/events"
        self.proc = proc

    def events(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.events_url, params={"wait": "0"}).json()["events"])

    def counts(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.base}/healthz").json()["counts"])


@pytest.fixture
def receiver(webhook_secret: str) -> Iterator[Receiver]:
    port = free_port()
    env = {**os.environ, "OPENAI_WEBHOOK_SECRET": webhook_secret}
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        yield Receiver(port, proc)
    finally:
        proc.terminate()
        proc.wait(10)


#: The bucket the ``s3`` fixture empties and makes for each test.
S3_BUCKET = "batch-ops-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 (moto's server, real HTTP on loopback) for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh ``S3_BUCKET`` on the local S3; the environment (inherited by subprocesses) points
    s3fs (botocore) at it. Returns an s3fs file system for the test's own reads and writes."""
    import fsspec

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.invalidate_cache()
    if fs.exists(S3_BUCKET):
        fs.rm(S3_BUCKET, recursive=True)
    fs.mkdir(S3_BUCKET)
    fsspec.filesystem("s3").invalidate_cache()  # the instance the package will get
    return fs

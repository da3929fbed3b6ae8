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
from pathlib import Path
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


class SettingsSamples:
    """A value for every ``ClientSettings`` field other than its default, read from ``ClientSettings``
    alone, so a field added there gets a sample without a word: the adapter tests
    (tests/*/test_settings_fields.py) check that each setting goes through the Prefect block and the
    Airflow connection."""

    @staticmethod
    def is_secret(name: str) -> bool:
        import typing

        from pydantic import SecretStr

        from batch_ops import ClientSettings

        annotation = ClientSettings.model_fields[name].annotation
        return annotation is SecretStr or SecretStr in typing.get_args(annotation)

    def secret_fields(self) -> list[str]:
        from batch_ops import ClientSettings

        return [name for name in ClientSettings.model_fields if self.is_secret(name)]

    def sample(self, name: str) -> Any:
        """A valid value other than the default (a secret as its plain string)."""
        import typing

        from batch_ops import ClientSettings

        info = ClientSettings.model_fields[name]
        if self.is_secret(name):
            return f"sk-{name}-sample"
        declared: dict[str, Any] = {}  # choices a field declares in its schema (provider: the dialects)
        if callable(info.json_schema_extra):
            info.json_schema_extra(declared)
        elif isinstance(info.json_schema_extra, dict):
            declared = dict(info.json_schema_extra)
        if declared.get("enum"):
            return next(str(v) for v in declared["enum"] if v != info.default)
        kind = next(k for k in typing.get_args(info.annotation) or (info.annotation,) if k is not type(None))
        if typing.get_origin(kind) is typing.Literal:
            return next(str(v) for v in typing.get_args(kind) if v != info.default)
        if hasattr(kind, "__members__"):  # an enum
            return next(str(m.value) for m in kind if m != info.default)
        if kind is bool:
            return not info.default
        if kind is int:
            return (info.default or 0) + 1
        if kind is float:
            return float(info.default or 1.0) * 2 + 0.5
        # Any string: an http URL passes the URL fields' checks and means nothing to the others.
        return f"http://{name.replace('_', '-')}.example/v1"

    def samples(self) -> dict[str, Any]:
        from batch_ops import ClientSettings

        return {name: self.sample(name) for name in ClientSettings.model_fields}

    @staticmethod
    def lost(settings: Any, expected: dict[str, Any]) -> dict[str, Any]:
        """The expected settings that ``settings`` does not hold, with the value it holds instead."""
        from pydantic import SecretStr

        def plain(value: Any) -> Any:
            return value.get_secret_value() if isinstance(value, SecretStr) else value

        return {name: plain(getattr(settings, name)) for name, value in expected.items()
                if plain(getattr(settings, name)) != value}


@pytest.fixture(scope="session")
def settings_samples() -> SettingsSamples:
    return SettingsSamples()


class WireOracle:
    """What a local server holds, read through the official SDK of the provider whose wire it speaks
    (``openai`` for OpenAI and its profiles, ``anthropic``, ``google-genai``), never through batch_ops'
    own client: the judge of the end-to-end money tests.

    ``batches(provider, url)`` lists every batch on the server, oldest first, as ``(id, status)``;
    ``paid(provider, url)`` counts, per ``custom_id`` (Gemini: ``key``), the requests that succeeded
    over all of them, read from their result files — what the provider bills.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def anthropic(self, url: str) -> Any:
        import anthropic

        return self._client("anthropic", url, lambda: anthropic.Anthropic(
            api_key="sk-ant-oracle", base_url=str(url).removesuffix("/v1"), max_retries=0))

    def gemini(self, url: str) -> Any:
        from google import genai

        # Kept: a genai.Client closes its HTTP client when it is garbage collected, under its pagers' feet.
        return self._client("gemini", url, lambda: genai.Client(
            api_key="gemini-oracle", http_options={"base_url": str(url).removesuffix("/v1") + "/"}))

    def openai(self, url: str) -> Any:
        import openai

        return self._client("openai", url, lambda: openai.OpenAI(api_key="sk-oracle", base_url=str(url),
                                                                  max_retries=0))

    def _client(self, kind: str, url: str, make: Callable[[], Any]) -> Any:
        if (kind, str(url)) not in self._clients:
            self._clients[kind, str(url)] = make()
        return self._clients[kind, str(url)]

    @staticmethod
    def cancel_seen(provider: str, status: str) -> bool:
        """A cancel reached the batch, in the provider's words (a status from :meth:`batches`)."""
        if provider == "anthropic":
            return status.endswith("+cancel") or status == "canceling"
        return status in ("cancelling", "cancelled", "JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING")

    def batches(self, provider: str, url: str) -> list[tuple[str, str]]:
        """Every batch on the server, oldest first: ``(id, status)`` in the provider's own words
        (Anthropic: ``processing_status``, plus ``+cancel`` once a cancel was asked for).

        Every list API here pages newest first, and a creation time has whole seconds: the page is
        reversed before the stable sort, so two batches made in the same second keep their order."""
        if provider == "anthropic":
            page = list(self.anthropic(url).messages.batches.list(limit=100))
            listed = sorted(reversed(page), key=lambda b: b.created_at)
            return [(b.id, b.processing_status + ("+cancel" if b.cancel_initiated_at else "")) for b in listed]
        if provider == "gemini":
            jobs = sorted(reversed(list(self.gemini(url).batches.list(config={"page_size": 100}))),
                          key=lambda j: j.create_time)
            return [(j.name, j.state.name if j.state else "") for j in jobs]
        listed = sorted(reversed(list(self.openai(url).batches.list(limit=100))), key=lambda b: b.created_at)
        return [(b.id, b.status) for b in listed]

    def paid(self, provider: str, url: str) -> dict[str, int]:
        """Successes per custom id over every batch on the server (each must have ended)."""
        paid: dict[str, int] = {}
        for custom_id in self._successes(provider, url):
            paid[custom_id] = paid.get(custom_id, 0) + 1
        return paid

    def _successes(self, provider: str, url: str) -> Iterator[str]:
        if provider == "anthropic":
            client = self.anthropic(url)
            for batch_id, _ in self.batches(provider, url):
                yield from (r.custom_id for r in client.messages.batches.results(batch_id)
                            if r.result.type == "succeeded")
        elif provider == "gemini":
            client = self.gemini(url)
            for job in client.batches.list(config={"page_size": 100}):
                if job.dest is not None and job.dest.file_name:
                    for raw in client.files.download(file=job.dest.file_name).decode().splitlines():
                        line = json.loads(raw)
                        if "response" in line:
                            yield line["key"]
        else:
            client = self.openai(url)
            for batch in client.batches.list(limit=100):
                if batch.output_file_id:
                    for raw in client.files.content(batch.output_file_id).text.splitlines():
                        line = json.loads(raw)
                        if (line.get("response") or {}).get("status_code") == 200:
                            yield line["custom_id"]


@pytest.fixture
def wire_oracle() -> Iterator[WireOracle]:
    """The official SDKs on local servers (see :class:`WireOracle`)."""
    oracle = WireOracle()
    yield oracle
    oracle.close()


@pytest.fixture
def regressed_matrix_run(tmp_path: Path) -> Path:
    """The demo matrix recording with a real regression in it: ``demo-large`` answers, and is judged, as
    ``demo-small`` did (its own lines dropped, ``demo-small``'s copied under its name). Replayed by the
    local server, it is the night an eval gate must fail on."""
    from batch_ops.evals.matrix import MATRIX_RUN

    out = []
    for raw in MATRIX_RUN.read_text().splitlines():
        line = json.loads(raw)
        body, cid = line["response"]["body"], str(line["custom_id"])
        if body["model"] == "demo-large" or cid.startswith("demo-large__"):
            continue
        out.append(json.dumps(line))
        if body["model"] == "demo-small":  # an answer batch line: the model is in the body
            body["model"] = "demo-large"
        elif cid.startswith("demo-small__"):  # a judge batch line: the model is in the custom id
            line["custom_id"] = "demo-large__" + cid.removeprefix("demo-small__")
        else:
            continue
        out.append(json.dumps(line))
    path = tmp_path / "regressed_matrix_run.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path

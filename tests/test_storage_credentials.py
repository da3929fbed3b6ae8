"""Credentials written into storage URLs never reach an error, a log line or an output (issue 22, item 8).

A URL can carry credentials: ``s3://KEY:SECRET@bucket/x`` (fsspec reads no credentials from
there, so the read fails, quoting them), a presigned S3/GCS URL (``?X-Amz-Signature=``), an
Azure SAS URL (``?sv=…&sig=…``), a token (``?token=``). Before the fix the secret was in the
``StorageError`` text (botocore quotes ``KEY:SECRET@bucket`` as a bad bucket name), in the chained
cause a traceback prints, and ``display()`` showed the tail of a password containing ``@``.

Canaries go through the core client, a job and the CLI (a real process each): the secret must be
in no exception text (the whole traceback, causes included), no stdout or stderr, no log record
and no job file. Real HTTP throughout: moto's S3 server and a plain HTTP file server on loopback.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from batch_ops import BatchClient, storage
from batch_ops.errors import BatchOpsError
from batch_ops.jobs import BatchJob
from batch_ops.server import ServerURL, serve_in_background

from .conftest import S3_BUCKET

KEY = "sk-storage-cred-test-5170"
USER = "AKIAUSERCANARY7Q3Z"  # the access key id
SECRET = "wJalrSECRETCANARY/K7+x9"  # an AWS secret has / and +: percent-encoded in the URL
AT_TAIL = "tailCANARY"  # the part after the "@" of a password that has one
SIG = "SIGCANARY0b1e9f"
SAS = "SASCANARY%2B77d"
TOKEN = "TOKENCANARY31aa"
CANARIES = (USER, SECRET, quote(SECRET, safe=""), AT_TAIL, SIG, SAS, SAS.replace("%2B", "+"), TOKEN)
ENDPOINT = "/v1/embeddings"


def _requests(n: int) -> str:
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT,
                               "body": {"model": "m", "input": f"text {i}"}}) + "\n" for i in range(n))


def _leaks(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


def _all_text(exc: BaseException) -> str:
    """What a log or a crash report shows of ``exc``: its str, repr and whole traceback with its causes."""
    return f"{exc}\n{exc!r}\n{''.join(traceback.format_exception(exc))}"


def _userinfo_url(path: str) -> str:
    return f"s3://{USER}:{quote(SECRET, safe='')}@{S3_BUCKET}/{path}"


def _at_url(path: str) -> str:
    return f"s3://{USER}:p@ss{AT_TAIL}@{S3_BUCKET}/{path}"


@pytest.fixture(scope="module")
def api() -> Iterator[ServerURL]:
    with serve_in_background(api_key=KEY, request_latency=0.01) as url:
        yield url


@pytest.fixture
def files(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback serving ``tmp_path/www``; it ignores query strings, as a
    signed URL's host checks them. Yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "requests.jsonl").write_text(_requests(3))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _signed(base: str, name: str) -> list[str]:
    return [f"{base}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={USER}%2F20261205&X-Amz-Signature={SIG}",
            f"{base}/{name}?sv=2024-11-04&sp=r&se=2030-01-01&sig={SAS}",
            f"{base}/{name}?token={TOKEN}"]


# ---------------------------------------------------------------------------------------------
# display() itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("s3://user:secret@bucket/key", "s3://bucket/key"),
    (f"s3://{USER}:p@ss{AT_TAIL}@bucket/k", "s3://bucket/k"),  # the netloc is split at its LAST "@"
    (f"s3://{USER}:wJal/{AT_TAIL}@bucket/k", "s3://bucket/k"),  # an unescaped "/" in the password
    ("https://h/x.jsonl?sv=2024-11-04&sp=r&sig=abc", "https://h/x.jsonl?sv=2024-11-04&sp=r&sig=***"),
    ("https://h/x?X-Amz-Signature=s&X-Amz-Security-Token=t&versionId=3",
     "https://h/x?X-Amz-Signature=***&X-Amz-Security-Token=***&versionId=3"),
    ("gs://b/x?X-Goog-Signature=s#part", "gs://b/x?X-Goog-Signature=***#part"),
    ("http://127.0.0.1:8080/folder/user@example.com.jsonl", "http://127.0.0.1:8080/folder/user@example.com.jsonl"),
    ("s3://bucket/folder/user@example.com.jsonl", "s3://bucket/folder/user@example.com.jsonl"),
    ("/data/local file.jsonl", "/data/local file.jsonl"),
    ("Could not read s3://k:s3cr3t@b/x: denied", "Could not read s3://b/x: denied"),
])
def test_display_hides_credentials(url: str, shown: str) -> None:
    assert storage.display(url) == shown


def test_scrub_removes_credentials_quoted_without_a_url() -> None:
    url = _userinfo_url("x.jsonl")
    message = f'Invalid bucket name "{USER}:{SECRET}@{S3_BUCKET}" (from {url})'
    assert not _leaks(storage.scrub(message, url))
    assert storage.has_credentials(url) and not storage.has_credentials(f"s3://{S3_BUCKET}/x.jsonl")


# ---------------------------------------------------------------------------------------------
# the core client
# ---------------------------------------------------------------------------------------------


def test_core_errors_and_logs_carry_no_credentials(s3: Any, api: ServerURL, files: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    s3.pipe(f"{S3_BUCKET}/in/requests.jsonl", _requests(2).encode())
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = []
    with BatchClient(api_key=KEY, base_url=api) as client:
        done = client.batches.wait(client.submit(f"s3://{S3_BUCKET}/in/requests.jsonl", endpoint=ENDPOINT).id,
                                   poll_interval=0.05, timeout=60)
        bad_reads = [_userinfo_url("in/requests.jsonl"), _at_url("in/requests.jsonl"), *_signed(files, "nowhere.jsonl")]
        for url in bad_reads:
            with pytest.raises(BatchOpsError) as err:
                client.submit(url, endpoint=ENDPOINT)
            failures.append(err.value)
        for url in (_userinfo_url("out/o.jsonl"), _at_url("out/o.jsonl")):
            with pytest.raises(BatchOpsError) as err:
                client.files.download(done.output_file_id, url)
            failures.append(err.value)
            with pytest.raises(BatchOpsError) as err:
                list(client.results(done, input_path=url))
            failures.append(err.value)
        # A signed URL that works: read, submitted, nothing of it repeated.
        for url in _signed(files, "requests.jsonl"):
            assert client.submit(url, endpoint=ENDPOINT).request_counts.total in (0, 3)
    leaks = [(f"{type(exc).__name__}: {str(exc)[:200]}", found)
             for exc in failures if (found := _leaks(_all_text(exc)))]
    assert len(failures) == 9 and not leaks, leaks
    # Ours at any level; anyone's warnings and errors (fsspec's own debug lines name the URLs it fetches).
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith("batch_ops") or r.levelno >= logging.WARNING)
    assert not _leaks(logged), _leaks(logged)


# ---------------------------------------------------------------------------------------------
# a job
# ---------------------------------------------------------------------------------------------


def test_job_errors_and_files_carry_no_credentials(s3: Any, api: ServerURL, files: str, tmp_path: Path) -> None:
    s3.pipe(f"{S3_BUCKET}/in/requests.jsonl", _requests(2).encode())
    failures: list[BaseException] = []
    for input_url, output_url in ((_userinfo_url("in/requests.jsonl"), str(tmp_path / "a" / "out.jsonl")),
                                  (f"s3://{S3_BUCKET}/in/requests.jsonl", _userinfo_url("out/results.jsonl")),
                                  (f"s3://{S3_BUCKET}/in/requests.jsonl", _at_url("out/results.jsonl")),
                                  (_signed(files, "nowhere.jsonl")[0], str(tmp_path / "b" / "out.jsonl"))):
        with pytest.raises(BatchOpsError) as err, BatchClient(api_key=KEY, base_url=api) as client:
            BatchJob.open(input_url, output_path=output_url, endpoint=ENDPOINT).run(client, poll_interval=0.05)
        failures.append(err.value)
    leaks = [(str(exc)[:200], found) for exc in failures if (found := _leaks(_all_text(exc)))]
    assert len(failures) == 4 and not leaks, leaks
    # A job from a signed URL runs to the end; its state and results hold no credential.
    out = tmp_path / "signed" / "out.jsonl"
    with BatchClient(api_key=KEY, base_url=api) as client:
        job = BatchJob.open(_signed(files, "requests.jsonl")[1], output_path=out, endpoint=ENDPOINT)
        summary = job.run(client, poll_interval=0.05)
    assert summary.succeeded == 3
    written = "".join(p.read_text(errors="replace") for p in out.parent.rglob("*") if p.is_file())
    assert not _leaks(written + json.dumps(summary.as_dict(), default=str)), _leaks(written)


# ---------------------------------------------------------------------------------------------
# the CLI, a real process
# ---------------------------------------------------------------------------------------------


def _cli(*args: str, api: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env.update({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": api, "NO_COLOR": "1", "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "batch_ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


@pytest.mark.scenario  # ~30 s of CLI processes: `make drill`, beside drill 7c
def test_cli_shows_no_credentials(s3: Any, api: ServerURL, files: str, tmp_path: Path) -> None:
    s3.pipe(f"{S3_BUCKET}/in/requests.jsonl", _requests(2).encode())
    with BatchClient(api_key=KEY, base_url=api) as client:
        done = client.batches.wait(client.submit(f"s3://{S3_BUCKET}/in/requests.jsonl", endpoint=ENDPOINT).id,
                                   poll_interval=0.05, timeout=60)
    signed = _signed(files, "requests.jsonl")
    failing = [
        ("validate", _userinfo_url("in/requests.jsonl")),
        ("validate", _at_url("in/requests.jsonl")),
        ("submit", _userinfo_url("in/requests.jsonl"), "-e", ENDPOINT),
        ("submit", _signed(files, "nowhere.jsonl")[0], "-e", ENDPOINT),
        ("results", done.id, "-o", _userinfo_url("out/r.jsonl")),
        ("results", done.id, "-o", _at_url("out/r.jsonl")),
        ("job", _userinfo_url("in/requests.jsonl"), "-e", ENDPOINT, "-o", str(tmp_path / "j1" / "out.jsonl")),
        ("job", f"s3://{S3_BUCKET}/in/requests.jsonl", "-e", ENDPOINT, "-o", _at_url("out/j.jsonl")),
    ]
    working = [
        ("validate", signed[0]),
        ("submit", signed[1], "-e", ENDPOINT),
        ("shard", signed[2], "-d", str(tmp_path / "parts")),
        ("job", signed[0], "-e", ENDPOINT, "-o", str(tmp_path / "j2" / "out.jsonl"), "--poll-interval", "0.05"),
    ]
    shown: list[tuple[str, list[str]]] = []
    for args in failing + working:
        for mode in ((), ("--json",)):
            done_cli = _cli(*args, *mode, api=api)
            name = " ".join((args[0], storage.display(args[1]), *mode))
            assert (done_cli.returncode != 0) == (args in failing), f"{name}: {done_cli.stdout}{done_cli.stderr}"
            assert "Traceback" not in done_cli.stderr, done_cli.stderr
            if found := _leaks(done_cli.stdout + done_cli.stderr):
                shown.append((name, found))
    assert not shown, shown


def test_clearing_a_jobs_work_folder_shows_no_credentials(s3: Any) -> None:
    """A job starting over clears its work folder on object storage; the file system's error about a
    URL with credentials must not reach the StorageError, nor its chained cause."""
    from batch_ops.jobs.store import store_for

    for url in (_userinfo_url("out/results.jsonl"), _at_url("out/results.jsonl")):
        store = store_for(url)
        try:
            store.reset()
        except BatchOpsError as exc:
            assert not _leaks(_all_text(exc)), _leaks(_all_text(exc))
        else:  # pragma: no cover - fsspec refusing nothing here would make this test pointless
            pytest.fail(f"clearing {storage.display(url)} raised nothing")

"""The key ledger keeps Anthropic's money rules where no batch can carry our key; real processes.

* a submit killed (SIGKILL) after its create reached the server but before it recorded the batch:
  the retry finds that batch by the ledger's rule and attaches, paying nothing more;
* two processes submitting one key at the same moment make one batch;
* a lost create that cannot be told apart from another batch is refused, never guessed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops import BatchClient, ClientSettings, SubmitSpec
from batch_ops.errors import BatchOpsError
from batch_ops.identity.ledger import KeyLedger

MakeServer = Callable[..., AbstractContextManager[Any]]

#: One submit in its own process: waits for the barrier file (if any), submits, prints what it did.
SUBMIT = textwrap.dedent("""
    import json, os, sys, time
    from batch_ops import BatchClient, ClientSettings, SubmitSpec
    url, ledger, key, n, barrier = sys.argv[1:6]
    while barrier != "-" and not os.path.exists(barrier):
        time.sleep(0.001)
    settings = ClientSettings(api_key="k", base_url=url, provider="anthropic", key_ledger=ledger)
    lines = [{"custom_id": f"q-{i}", "params": {"model": "claude", "max_tokens": 8,
              "messages": [{"role": "user", "content": f"q {i}"}]}} for i in range(int(n))]
    with BatchClient(settings=settings) as client:
        sub = client.submit_spec(lines, SubmitSpec(endpoint="/v1/messages", idempotency_key=key))
    print(json.dumps({"batch": sub.batch.id, "created": sub.created}))
""")


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "submit.py"
    path.write_text(SUBMIT)
    return path


def _batches(url: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/messages/batches", params={"limit": 1000},
                       headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}, timeout=30)
    return list(answer.json()["data"])


def _run(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _server_batch_ids(data_dir: Path) -> list[str]:
    """The batches the server holds, read from its own database (no /v1 call: those are faulted)."""
    with sqlite3.connect(data_dir / "state.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT id FROM batches WHERE id LIKE 'msgbatch%'")]


def test_killed_between_create_and_record(make_server: MakeServer, tmp_path: Path) -> None:
    ledger, data = tmp_path / "ledger", tmp_path / "server"
    script = _script(tmp_path)
    # Every call is dropped; the seed makes the first (the create) a drop *after* the server made the
    # batch. The submitting process, looking for its lost create, is killed before it records it.
    with make_server(data_dir=str(data), drop=1.0, seed=2) as url:
        child = _run(script, url, str(ledger), "nightly-7", "6", "-")
        deadline = time.monotonic() + 30
        while not (data / "state.sqlite3").exists() or not _server_batch_ids(data):
            assert time.monotonic() < deadline and child.poll() is None, child.communicate()
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)  # the batch exists, its id is nowhere on our side
        child.wait()
    (intent,) = KeyLedger(str(ledger)).entries("nightly-7").values()
    assert intent.batch_id is None and intent.carried == 6
    (lost,) = _server_batch_ids(data)
    with make_server(data_dir=str(data)) as url:  # the same API, working again
        retry = _run(script, url, str(ledger), "nightly-7", "6", "-")
        out, err = retry.communicate(timeout=60)
        assert retry.returncode == 0, err
        assert json.loads(out) == {"batch": lost, "created": False}  # attached to the lost batch
        assert [b["id"] for b in _batches(url)] == [lost]  # nothing paid twice
    (entry,) = KeyLedger(str(ledger)).entries("nightly-7").values()
    assert entry.batch_id == lost


def test_two_processes_one_key_one_batch(make_server: MakeServer, tmp_path: Path) -> None:
    ledger, barrier = tmp_path / "ledger", tmp_path / "go"
    with make_server(latency=0.2) as url:
        script = _script(tmp_path)
        tries = [_run(script, url, str(ledger), "same-key", "5", str(barrier)) for _ in range(2)]
        time.sleep(1.5)  # both processes imported and wait at the barrier
        barrier.touch()
        said = []
        for proc in tries:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            said.append(json.loads(out))
        assert len(_batches(url)) == 1
        assert said[0]["batch"] == said[1]["batch"]
        assert sorted(s["created"] for s in said) == [False, True]


def test_ambiguous_lost_create_is_refused(server_url: str, tmp_path: Path) -> None:
    ledger = KeyLedger(str(tmp_path / "ledger"))
    settings = ClientSettings(api_key="k", base_url=server_url, provider="anthropic", key_ledger=str(ledger.where))
    lines = [{"custom_id": f"a-{i}", "params": {"model": "m", "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "x"}]}} for i in range(7)]
    # Two batches of 7 requests that no key recorded (made by something else), and an intent of 7.
    for _ in range(2):
        httpx.post(f"{server_url}/messages/batches", json={"requests": lines},
                   headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).raise_for_status()
    ledger.intend("ambiguous", "ambiguous@0123456789abcdef", carried=7, at=time.time() - 1)
    before = len(_batches(server_url))
    with BatchClient(settings=settings) as client, pytest.raises(BatchOpsError, match="cancel and delete"):
        client.submit_spec(lines, SubmitSpec(endpoint="/v1/messages", idempotency_key="ambiguous"))
    assert len(_batches(server_url)) == before  # refused, nothing created


def test_ledger_on_s3(make_server: MakeServer, s3: Any, tmp_path: Path) -> None:
    url_ledger = "s3://batch-ops-test/ledger"
    with make_server() as url:
        settings = ClientSettings(api_key="k", base_url=url, provider="anthropic", key_ledger=url_ledger)
        lines = [{"custom_id": "s-1", "params": {"model": "m", "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "x"}]}}]
        with BatchClient(settings=settings) as client:
            first = client.submit_spec(lines, SubmitSpec(endpoint="/v1/messages", idempotency_key="on-s3"))
            again = client.submit_spec(lines, SubmitSpec(endpoint="/v1/messages", idempotency_key="on-s3"))
        assert first.created and not again.created and again.batch.id == first.batch.id
        assert KeyLedger(url_ledger).entries("on-s3")[first.chain.attempt_key(0)].batch_id == first.batch.id


def test_a_ledger_that_cannot_lease_is_refused(server_url: str) -> None:
    settings = ClientSettings(api_key="k", base_url=server_url, provider="anthropic",
                              key_ledger="memory://batch_ops-test/ledger")
    lines = [{"custom_id": "m-1", "params": {"model": "m", "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "x"}]}}]
    with BatchClient(settings=settings) as client, pytest.raises(Exception, match="cannot hold a lease"):
        client.submit_spec(lines, SubmitSpec(endpoint="/v1/messages", idempotency_key="nolease"))

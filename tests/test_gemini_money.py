"""Money on Gemini: the submit's rules hold unchanged through ``GeminiDialect`` against the local server.

Our key rides in the batch's ``displayName``. Each test counts what was paid for from the server
itself: every success line in every Gemini batch's responses file, per key (a request that
succeeded twice was paid for twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops import BatchClient
from batch_ops.errors import InputValidationError
from batch_ops.models import BatchStatus
from batch_ops.server.background import ServerURL, serve_in_background
from batch_ops.settings import ClientSettings

KEY = "gemini-local-key"
MODEL = "gemini-2.5-flash"


def _root(url: ServerURL) -> str:
    return str(url).removesuffix("/v1")


def _settings(url: ServerURL) -> ClientSettings:
    return ClientSettings(api_key=KEY, provider="gemini", base_url=_root(url) + "/v1beta", backoff_initial=0.05,
                          backoff_max=0.2)


def _requests(path: Path, n: int, prefix: str = "q") -> Path:
    path.write_text("".join(json.dumps({"key": f"{prefix}-{i}", "request": {
        "contents": [{"role": "user", "parts": [{"text": f"{prefix} question {i}"}]}]}}) + "\n" for i in range(n)))
    return path


def _gemini(url: ServerURL, path: str, **params: Any) -> Any:
    reply = httpx.get(f"{_root(url)}/v1beta/{path}", params=params, headers={"x-goog-api-key": KEY}, timeout=10)
    reply.raise_for_status()
    return reply


def _batches(url: ServerURL) -> list[dict[str, Any]]:
    return list(_gemini(url, "batches", pageSize=1000).json()["operations"])


def _paid(url: ServerURL, *, timeout: float = 20.0) -> Counter[str]:
    """Successes per key over every batch on the server, once every batch has ended."""
    deadline = time.monotonic() + timeout
    while not all(op["done"] for op in _batches(url)):
        assert time.monotonic() < deadline, "batches still running"
        time.sleep(0.1)
    paid: Counter[str] = Counter()
    for op in _batches(url):
        name = (op["metadata"].get("output") or {}).get("responsesFile")
        if name:
            for raw in _gemini(url, f"{name}:download", alt="media").text.splitlines():
                line = json.loads(raw)
                if "response" in line:
                    paid[line["key"]] += 1
    return paid


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[BatchClient] = []

    def make(url: ServerURL) -> BatchClient:
        clients.append(BatchClient(settings=_settings(url)))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_submit_wait_and_results_joined_by_key(client_for: Any, tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY) as url:
        client = client_for(url)
        path = _requests(tmp_path / "in.jsonl", 6)
        batch = client.submit(path, endpoint=MODEL, idempotency_key="nightly")
        assert batch.id.startswith("batches/") and batch.model == f"models/{MODEL}"
        assert batch.metadata == {"displayName": "nightly@" + batch.metadata["displayName"].split("@")[1]}
        done = client.batches.wait(batch.id, poll_interval=0.1)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == 6
        lines = list(client.results(done, input_path=path))
        assert [r.custom_id for r in lines] == [f"q-{i}" for i in range(6)]
        assert all(r.ok for r in lines)
        assert lines[2].body["candidates"][0]["content"]["parts"][0]["text"] == "q question 2"
        # Gemini never hands an upload back: without the request file, the requests are the ones the
        # results name (in the results' order).
        assert sorted(r.custom_id for r in client.results(done)) == [f"q-{i}" for i in range(6)]
        # The same key again attaches to the batch: nothing new is paid for.
        again = client.submit(path, endpoint=MODEL, idempotency_key="nightly")
        assert again.id == batch.id and len(_batches(url)) == 1


def test_bad_input_is_refused_before_anything_is_sent(client_for: Any, tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY) as url:
        client = client_for(url)
        path = _requests(tmp_path / "in.jsonl", 2)
        with pytest.raises(InputValidationError, match="not a Gemini model"):
            client.submit(path, endpoint="/v1/chat/completions", idempotency_key="k")
        with pytest.raises(InputValidationError, match="no metadata"):
            client.submit(path, endpoint=MODEL, idempotency_key="k", metadata={"team": "evals"})
        with pytest.raises(InputValidationError, match="display name"):
            client.submit(path, endpoint=MODEL, idempotency_key="k" * 120)
        openai_line = tmp_path / "openai.jsonl"
        openai_line.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                           "body": {"model": "m", "messages": []}}) + "\n")
        with pytest.raises(InputValidationError):
            client.submit(openai_line, endpoint=MODEL, idempotency_key="k")
        calls = httpx.get(f"{_root(url)}/healthz").json()["calls"]
        assert not any(c.startswith("POST") for c in calls), calls


def test_retry_after_a_failed_batch_pays_once_and_reuses_the_upload(client_for: Any, tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY, token_limit_failures=1) as url:
        client = client_for(url)
        path = _requests(tmp_path / "in.jsonl", 5)
        first = client.batches.wait(client.submit(path, endpoint=MODEL, idempotency_key="k").id, poll_interval=0.1)
        assert first.status is BatchStatus.FAILED and first.errors and "token" in str(first.errors.data[0].message)
        sub = client.submit_spec(path, _spec("k"))
        assert sub.created and sub.batch.input_file_id == first.input_file_id  # the same upload, carried again
        assert client.batches.wait(sub.batch.id, poll_interval=0.1).request_counts.total == 5
        assert _paid(url) == Counter({f"q-{i}": 1 for i in range(5)})
        uploads = httpx.get(f"{_root(url)}/healthz").json()["calls"]["POST /upload/v1beta/files"]
        assert uploads == 2  # one upload: its start and its bytes


def test_retry_after_an_expired_batch_carries_only_what_did_not_succeed(client_for: Any, tmp_path: Path) -> None:
    # Chunks of 4 requests, 2 at a time, 0.5 s each: the first chunk ends after the 0.8 s window.
    with serve_in_background(api_key=KEY, expire_after=0.8, request_latency=0.5, concurrency=2) as url:
        client = client_for(url)
        path = _requests(tmp_path / "in.jsonl", 6)
        first = client.batches.wait(client.submit(path, endpoint=MODEL, idempotency_key="k").id, poll_interval=0.1)
        assert first.status is BatchStatus.EXPIRED
        done_first = first.request_counts.completed
        assert 0 < done_first < 6
        sub = client.submit_spec(path, _spec("k"))
        assert sub.created and sub.carried == 6 - done_first
        client.batches.wait(sub.batch.id, poll_interval=0.1)
        assert _paid(url) == Counter({f"q-{i}": 1 for i in range(6)})
        lines = list(client.results(client.batches.chain("k"), input_path=path))
        assert [r.custom_id for r in lines] == [f"q-{i}" for i in range(6)] and all(r.ok for r in lines)


def test_retry_after_request_failures_never_pays_twice(client_for: Any, tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY, fail_requests=0.4, seed=5) as url:
        client = client_for(url)
        path = _requests(tmp_path / "in.jsonl", 10)
        for _ in range(8):
            sub = client.submit_spec(path, _spec("k", fail_on_request_failures=True))
            if sub.step.action == "done":
                break
            client.batches.wait(sub.batch.id, poll_interval=0.1)
        assert _paid(url) == Counter({f"q-{i}": 1 for i in range(10)})
        assert len(_batches(url)) > 1


def test_a_create_whose_answer_is_lost_is_found_again(client_for: Any, tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY, lose_creates=1) as url:
        client = client_for(url)
        sub = client.submit_spec(_requests(tmp_path / "in.jsonl", 3), _spec("lost"))
        ops = _batches(url)
        assert len(ops) == 1 and ops[0]["name"] == sub.batch.id  # found by its key, not created twice
        calls = httpx.get(f"{_root(url)}/healthz").json()["calls"]
        assert calls["POST /v1beta/models/gemini-2.5-flash:batchGenerateContent"] == 1


_RACER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from batch_ops import BatchClient, SubmitSpec
    from batch_ops.settings import ClientSettings
    work = Path(sys.argv[1]); me = sys.argv[2]
    settings = ClientSettings(api_key=os.environ["GEMINI_API_KEY"], provider="gemini",
                              base_url=os.environ["GEMINI_BASE"], backoff_initial=0.05)
    with BatchClient(settings=settings) as client:
        (work / f"ready-{me}").touch()
        while not (work / "go").exists():
            time.sleep(0.001)
        sub = client.submit_spec(work / "in.jsonl", SubmitSpec(endpoint="gemini-2.5-flash", idempotency_key="race"))
        print(json.dumps({"batch": sub.batch.id, "created": sub.created, "cancelled": list(sub.cancelled)}))
""")


def test_two_processes_at_once_with_one_key_pay_for_one_batch(client_for: Any, tmp_path: Path) -> None:
    # One batch runs at a time, one request at a time, and a blocker of 4 s holds the place from just
    # before the racers go: their batches wait, so the one that loses the race is cancelled before it
    # has run anything (the losers' cancels come within about 2 s of their creates).
    with serve_in_background(api_key=KEY, request_latency=1.0, concurrency=1, max_running=1) as url:
        _requests(tmp_path / "in.jsonl", 4)
        env = {**os.environ, "GEMINI_API_KEY": KEY, "GEMINI_BASE": _root(url) + "/v1beta"}
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(n)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (1, 2)]
        deadline = time.monotonic() + 20
        while not all((tmp_path / f"ready-{n}").exists() for n in (1, 2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "racers did not start"
            time.sleep(0.01)
        client_for(url).submit(_requests(tmp_path / "blocker.jsonl", 4, prefix="blocker"), endpoint=MODEL)
        (tmp_path / "go").touch()  # both submit at the same moment
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
            outs.append(json.loads(out.strip().splitlines()[-1]))
        assert outs[0]["batch"] == outs[1]["batch"], outs  # both use one batch
        needed = [f"blocker-{i}" for i in range(4)] + [f"q-{i}" for i in range(4)]
        assert _paid(url, timeout=30) == Counter(needed)
        raced = [op for op in _batches(url) if op["metadata"]["displayName"].startswith("race@")]
        live = [op["name"] for op in raced if op["metadata"]["state"] != "BATCH_STATE_CANCELLED"]
        assert live == [outs[0]["batch"]], raced


def _spec(key: str, **extra: Any) -> Any:
    from batch_ops import SubmitSpec

    return SubmitSpec.of(endpoint=MODEL, idempotency_key=key, **extra)

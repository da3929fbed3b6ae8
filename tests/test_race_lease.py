"""The key ledger's lease serves every provider: tries of one key racing at the same moment make one batch.

Without a key ledger, tries of one key on a provider whose batches carry the key (OpenAI, Gemini, the
OpenAI-shaped profiles) each look the key up, see nothing yet, create, and reconcile afterwards: the
later batches cancel themselves, but run (and are billed) until then (drill 8a: +6..+30 requests over
60; 24g: 102 paid for 60). With ``key_ledger`` set, a try takes the key's lease before its lookup
and holds it until its batch exists: the other tries wait, find the batch by its key and attach.
Real processes, released together by a barrier file; "paid" is what the server ran successfully.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, ClientSettings

MakeServer = Callable[..., AbstractContextManager[Any]]

#: One try in its own process: waits for the barrier file, submits the key, prints what it did.
RACER = textwrap.dedent("""
    import json, os, sys, time
    from batch_ops import BatchClient, ClientSettings, SubmitSpec
    settings, path, endpoint, key, barrier = json.loads(sys.argv[1]), *sys.argv[2:6]
    with BatchClient(settings=ClientSettings(**settings)) as client:
        while not os.path.exists(barrier):
            time.sleep(0.001)
        sub = client.submit_spec(path, SubmitSpec(endpoint=endpoint, idempotency_key=key))
    print(json.dumps({"batch": sub.batch.id, "created": sub.created}))
""")

NEEDED = 20
S3_BUCKET = "batch-ops-test"  # the ``s3`` fixture's


def _chat(i: int) -> dict[str, Any]:
    return {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": f"q {i}"}]}}


def _together(i: int) -> dict[str, Any]:
    return {"custom_id": f"q-{i}", "body": _chat(i)["body"]}


def _gemini(i: int) -> dict[str, Any]:
    return {"key": f"q-{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"q {i}"}]}]}}


#: provider, the server's wire, the request line, the endpoint, how the base URL is spelled.
PROVIDERS = {
    "openai": ("openai", _chat, "/v1/chat/completions", str),
    "gemini": ("openai", _gemini, "gemini-2.5-flash", lambda url: str(url).removesuffix("/v1") + "/v1beta"),
    "together": ("together", _together, "/v1/chat/completions", str),
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_racing_tries_under_the_lease_make_one_batch(provider: str, make_server: MakeServer, tmp_path: Path) -> None:
    _race(provider, str(tmp_path / "ledger"), make_server, tmp_path)


def test_racing_tries_under_a_lease_on_s3_make_one_batch(make_server: MakeServer, s3: Any, tmp_path: Path) -> None:
    # Workers on several machines (Celery, Kubernetes) share no disk: the lease is a conditional PUT on S3.
    ledger = f"s3://{S3_BUCKET}/ledger"
    _race("openai", ledger, make_server, tmp_path)
    assert not [p for p in s3.find(f"{S3_BUCKET}/ledger") if p.endswith(".lease")]  # every try gave it back


def _race(provider: str, ledger: str, make_server: MakeServer, tmp_path: Path) -> None:
    wire, line, endpoint, base = PROVIDERS[provider]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line(i)) + "\n" for i in range(NEEDED)))
    barrier, n = tmp_path / "go", 3
    # One request at a time, 20 ms each: a duplicate would run some of them before cancelling itself.
    with make_server(wire=wire, concurrency=1, request_latency=0.02) as url:
        settings = {"api_key": "k", "provider": provider, "base_url": base(url), "backoff_initial": 0.05,
                    "backoff_max": 0.2}
        leased = json.dumps({**settings, "key_ledger": ledger})
        tries = [subprocess.Popen([sys.executable, "-c", RACER, leased, str(requests), endpoint, "race", str(barrier)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        time.sleep(1.0)  # every process has imported batch_ops and waits at the barrier
        barrier.touch()
        said = []
        for proc in tries:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            said.append(json.loads(out))
        with BatchClient(settings=ClientSettings(**settings)) as client:
            made = list(client.batches.iter_all())
            assert [b.id for b in made] == [said[0]["batch"]], f"{n} racing tries made {len(made)} batches"
            ended = client.batches.wait(made[0].id, poll_interval=0.05, timeout=30)
            paid = sum(r.ok for r in client.results(ended))  # Together reports no request counts
    assert {s["batch"] for s in said} == {ended.id}
    assert sorted(s["created"] for s in said) == [False] * (n - 1) + [True]
    assert paid == NEEDED  # paid == needed: no duplicate ran anything

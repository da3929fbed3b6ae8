"""Drill 24a: money on Anthropic, whose batches cannot carry our key (the key ledger holds it).

Against the local server's ``/v1/messages/batches`` (the anthropic SDK judges that wire in the
tests), with real processes:

* a retry after an expired batch, and after a failed batch and one with failed requests, pays only
  for what did not succeed;
* four processes submitting one key at the same moment: one batch;
* a submit killed (SIGKILL) after its create reached the server and before it recorded the batch,
  five times: each retry attaches to the lost batch;
* the lost-create window: how long a create stands with only its intent recorded (from the intent
  written to the batch id written), over 50 creates. A create is never sent before its intent is
  durable, so no create can be lost *without any* record; inside this window a crash leaves an
  intent, which the next try resolves by the ledger's rule (request count, time window, claimed by
  no key) or refuses when ambiguous.

"paid" is what the server ran successfully across every batch (Anthropic bills succeeded requests);
"needed" the distinct requests.
"""

from __future__ import annotations

import functools
import json
import signal
import sqlite3
import statistics
import subprocess
from pathlib import Path
from typing import Any

import httpx

from drills._common import Drill, wait_for, write_jsonl
from drills._racers import race, submit_argv

__all__ = ["run"]


def run(names: list[str], work: Path) -> list[Drill]:
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, "paid vs needed on Anthropic (key ledger)").run(
            lambda d: money_anthropic(d, work / "anthropic")))
    return results


def _lines(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"custom_id": f"{tag}-{i}", "params": {"model": "claude", "max_tokens": 16,
                                                   "messages": [{"role": "user", "content": f"{tag} {i}"}]}}
            for i in range(n)]


def _batches(url: str) -> list[dict[str, Any]]:
    page = httpx.get(f"{url}/messages/batches", params={"limit": 1000}, timeout=30,
                     headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).json()
    return list(page["data"])


def _ended(url: str) -> list[dict[str, Any]]:
    batches = _batches(url)
    return batches if all(b["processing_status"] == "ended" for b in batches) else []


def _paid(url: str) -> tuple[int, int, int]:
    """(succeeded, carried, batches) over every batch on the server, once all ended."""
    batches = wait_for("every batch to end", lambda: _ended(url), timeout=120, interval=0.2)
    return (sum(b["request_counts"]["succeeded"] for b in batches),
            sum(sum(b["request_counts"].values()) for b in batches), len(batches))


def _row(d: Drill, scenario: str, *, paid: int, needed: int, detail: str) -> None:
    d.check(paid == needed, f"{scenario}: paid for {paid} requests, needed {needed}")
    d.figure(scenario, f"paid {paid} / needed {needed}; {detail}")


def _settings(url: str, ledger: Path) -> dict[str, Any]:
    return {"api_key": "k", "base_url": url, "provider": "anthropic", "key_ledger": str(ledger),
            "backoff_initial": 0.05, "backoff_max": 0.2}


def _spec(key: str) -> dict[str, Any]:
    return {"endpoint": "/v1/messages", "idempotency_key": key}


def _client(url: str, ledger: Path) -> Any:
    from batch_ops import BatchClient, ClientSettings

    return BatchClient(settings=ClientSettings(**_settings(url, ledger)))


def _retries(d: Drill, work: Path) -> None:
    from batch_ops import SubmitSpec
    from batch_ops.server import serve_in_background

    needed = 30
    spec = SubmitSpec.of(endpoint="/v1/messages", idempotency_key="expiring", fail_on=["expired", "failed"])
    with serve_in_background(expire_after=1.5, concurrency=1, request_latency=0.1) as url, \
            _client(url, work / "ledger-expired") as client:
        attempts = 0
        while attempts < 10:
            sub = client.submit_spec(_lines(needed, "e"), spec)
            if not sub.created:
                break
            attempts += 1
            client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=60)
        paid, carried, made = _paid(url)
        _row(d, "anthropic: retries after expired batches", paid=paid, needed=needed,
             detail=f"{made} batches (expired, then retried with what was left), {carried} requests sent")
    data = work / "failing-server"
    spec = SubmitSpec.of(endpoint="/v1/messages", idempotency_key="failing", fail_on=["failed"],
                         fail_on_request_failures=True)
    with serve_in_background(data_dir=str(data), fail_requests=1.0) as url, \
            _client(url, work / "ledger-failed") as client:
        client.batches.wait(client.submit_spec(_lines(needed, "f"), spec).batch.id, poll_interval=0.1, timeout=60)
    with serve_in_background(data_dir=str(data), fail_requests=0.3, seed=4) as url, \
            _client(url, work / "ledger-failed") as client:
        for _ in range(10):
            sub = client.submit_spec(_lines(needed, "f"), spec)
            if not sub.created:
                break
            client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=60)
        paid, carried, made = _paid(url)
        _row(d, "anthropic: retries after a failed batch and failed requests", paid=paid, needed=needed,
             detail=f"{made} batches (all errored, then 30% errored per attempt), {carried} requests sent")


def _race(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    needed = 40
    source = write_jsonl(work / "race.jsonl", _lines(needed, "q"))
    with serve_in_background(latency=0.1) as url:
        said = race(d, 4, settings=_settings(url, work / "ledger-race"), source=source, spec=_spec("race"))
        d.check(len({s["batch"] for s in said}) == 1, "4 tries agree on one batch")
        paid, _carried, made = _paid(url)
        d.check(made == 1, f"4 concurrent tries made {made} batches")
        _row(d, "anthropic: 4 concurrent tries of one key", paid=paid, needed=needed,
             detail=f"{made} batch created; the other tries waited for the key's lease and attached")


def _server_ids(data: Path) -> list[str]:
    if not (data / "state.sqlite3").exists():
        return []
    with sqlite3.connect(data / "state.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT id FROM batches WHERE id LIKE 'msgbatch%'")]


def _landed(data: Path, before: int, child: subprocess.Popen[str]) -> bool:
    return len(_server_ids(data)) > before or child.poll() is not None


def _kills(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    trials, per = 5, 8
    source = write_jsonl(work / "kill.jsonl", _lines(per, "q"))
    attached = 0
    data = work / "kill-server"
    for trial in range(trials):
        ledger, key = work / "ledger-kill", f"kill-{trial}"
        # Every call dropped, the first (the create) after the server made the batch (seed 2): the
        # process looks for its lost create and is killed before it records it.
        with serve_in_background(data_dir=str(data), drop=1.0, seed=2) as url:
            before = len(_server_ids(data))
            child = subprocess.Popen(submit_argv(_settings(url, ledger), source, _spec(key)),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            landed = functools.partial(_landed, data, before, child)
            wait_for("the create to land", landed, timeout=60, interval=0.005)
            child.send_signal(signal.SIGKILL)
            child.communicate()
        with serve_in_background(data_dir=str(data)) as url:
            retry = subprocess.run(submit_argv(_settings(url, ledger), source, _spec(key)),
                                   capture_output=True, text=True, timeout=120)
            d.require(retry.returncode == 0, f"the retry failed: {retry.stderr[-400:]}")
            attached += not json.loads(retry.stdout)["created"]
    with serve_in_background(data_dir=str(data)) as url:
        paid, _carried, made = _paid(url)
    d.check(attached == trials, f"{attached}/{trials} retries attached to the lost batch")
    _row(d, "anthropic: killed between create and record", paid=paid, needed=trials * per,
         detail=f"{trials} kills, {made} batches, {attached}/{trials} retries attached to the lost create")


def _window(d: Drill, work: Path) -> None:
    from batch_ops import SubmitSpec
    from batch_ops.identity.ledger import KeyLedger
    from batch_ops.server import serve_in_background

    ledger = work / "ledger-window"
    with serve_in_background() as url, _client(url, ledger) as client:
        for i in range(50):
            client.submit_spec(_lines(20, f"w{i}"), SubmitSpec(endpoint="/v1/messages", idempotency_key=f"w-{i}"))
    spans = sorted((e.recorded_at or 0) - e.intent_at for i in range(50)
                   for e in KeyLedger(str(ledger)).entries(f"w-{i}").values())
    p50, p99 = statistics.median(spans), spans[min(len(spans) - 1, int(len(spans) * 0.99))]
    d.check(len(spans) == 50 and all(s > 0 for s in spans), "every create recorded intent, then batch")
    d.figure("anthropic: lost-create window", f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms with only an intent "
             "recorded; from intent to batch id over 50 creates (local server: over the API it is the create's round "
             "trip). No create is sent before its intent is durable (lost with no record: 0); a crash inside the "
             "window leaves an intent, resolved by count + time + unclaimed (5/5 above) or refused when ambiguous")


def money_anthropic(d: Drill, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    _retries(d, work)
    _race(d, work)
    _kills(d, work)
    _window(d, work)

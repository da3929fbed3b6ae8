"""Suite ``gemini_drills`` (issue 24): the money rows for Gemini API Batch Mode, against the local server.

"Paid" is what the server billed: the successful requests (``batchStats.successfulRequestCount``)
of every Gemini batch it holds, read over Gemini's own REST API. "Needed" is the number of
requests of the work. Every row must show paid == needed, except concurrent tries, where the
extra must equal what the duplicates finished before they cancelled themselves (printed).

* ``money-gemini``: two and four processes submit one key at the same moment; a retry after a
  ``FAILED`` batch (token limit), after an ``EXPIRED`` one with part of its work done, after
  request failures (``fail_on_request_failures``); a create whose answer is lost (``--lose-creates``).
  Our key rides in the batch's ``displayName``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from drills._common import CANARY, Drill, wait_for
from drills._racers import race

__all__ = ["run"]

MODEL = "gemini-2.5-flash"


def run(names: list[str], work: Path) -> list[Drill]:
    bodies: dict[str, Callable[[Drill], None]] = {"money-gemini": lambda d: money_gemini(d, work / "gemini")}
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, "paid vs needed on Gemini").run(bodies[name]))
    return results


def _root(url: Any) -> str:
    return str(url).removesuffix("/v1")


def _requests(path: Path, n: int, prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"key": f"{prefix}-{i}", "request": {
        "contents": [{"role": "user", "parts": [{"text": f"{prefix} {i}"}]}]}}) + "\n" for i in range(n)))
    return path


def _operations(url: Any) -> list[dict[str, Any]]:
    reply = httpx.get(f"{_root(url)}/v1beta/batches", params={"pageSize": 1000}, headers={"x-goog-api-key": CANARY},
                      timeout=30)
    reply.raise_for_status()
    return list(reply.json().get("operations") or [])


def _paid(url: Any, *, timeout: float = 120.0) -> tuple[int, list[dict[str, Any]]]:
    """(successful requests over every Gemini batch, the batches), once every batch has ended."""
    ops = wait_for("every Gemini batch to end",
                   lambda: (lambda found: found if all(o["done"] for o in found) else [])(_operations(url)),
                   timeout=timeout, interval=0.3)
    return sum(int(o["metadata"]["batchStats"]["successfulRequestCount"]) for o in ops), ops


def _row(d: Drill, scenario: str, *, paid: int, needed: int, detail: str, extra_allowed: int = 0) -> None:
    d.check(paid == needed + extra_allowed, f"{scenario}: paid for {paid} requests, needed {needed}"
            + (f" (+{extra_allowed} finished by duplicates before their cancel)" if extra_allowed else ""))
    d.figure(scenario, f"paid {paid} / needed {needed}" + (f" (+{extra_allowed} dup)" if extra_allowed else "")
             + f"; {detail}")


def _client(url: Any) -> Any:
    from batch_ops import BatchClient
    from batch_ops.settings import ClientSettings

    return BatchClient(settings=ClientSettings(provider="gemini", api_key=CANARY, base_url=_root(url) + "/v1beta",
                                               backoff_initial=0.05, backoff_max=0.5))


def money_gemini(d: Drill, work: Path) -> None:
    from batch_ops import SubmitSpec
    from batch_ops.server import serve_in_background

    # Concurrent tries: one request at a time, 20 ms each, so a duplicate gets some work done before
    # it cancels itself (the extra it finished is allowed, and shown).
    needed = 60
    path = _requests(work / "race.jsonl", needed, "race")
    for n in (2, 4):
        with serve_in_background(api_key=CANARY, concurrency=1, request_latency=0.02) as url:
            said = race(d, n, settings={"provider": "gemini", "api_key": CANARY, "base_url": _root(url) + "/v1beta"},
                        source=path, spec={"endpoint": MODEL, "idempotency_key": f"race-{n}"})
            ids = {s["batch"] for s in said}
            d.check(len(ids) == 1, f"{n} tries agree on one batch ({len(ids)} distinct answers)")
            paid, ops = _paid(url)
            kept = [o for o in ops if o["metadata"]["state"] != "BATCH_STATE_CANCELLED"]
            d.check(len(kept) == 1 and kept[0]["name"] in ids, f"{n} tries: one batch kept, the others cancelled")
            dup = sum(int(o["metadata"]["batchStats"]["successfulRequestCount"]) for o in ops
                      if o["metadata"]["state"] == "BATCH_STATE_CANCELLED")
            _row(d, f"Gemini: {n} concurrent tries of one key", paid=paid, needed=needed, extra_allowed=dup,
                 detail=f"{len(ops)} created, {len(ops) - 1} cancelled themselves")

    def retried(scenario: str, n: int, spec: Any, detail: Callable[[list[dict[str, Any]]], str], **faults: Any) -> None:
        with serve_in_background(api_key=CANARY, **faults) as url, _client(url) as client:
            src = _requests(work / f"{len(scenario)}-{n}.jsonl", n, "r")
            for _ in range(10):  # each try a new submit of the same key, as a task retry is
                sub = client.submit_spec(src, spec)
                if sub.step.action == "done":
                    break
                client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=120)
            paid, ops = _paid(url)
            _row(d, scenario, paid=paid, needed=n, detail=detail(ops))

    def states(ops: list[dict[str, Any]]) -> str:
        return " then ".join(o["metadata"]["state"].removeprefix("BATCH_STATE_").lower() for o in reversed(ops))

    retried("Gemini: retry after a failed batch (token limit)", 40, SubmitSpec(endpoint=MODEL, idempotency_key="f"),
            lambda ops: f"{states(ops)}; the retry re-used the upload", token_limit_failures=1)
    retried("Gemini: retry after an expired batch, part done", 40, SubmitSpec(endpoint=MODEL, idempotency_key="e"),
            lambda ops: f"{states(ops)}; carried {int(ops[0]['metadata']['batchStats']['requestCount'])}",
            expire_after=1.0, request_latency=0.1, concurrency=2)
    retried("Gemini: retry after request failures", 40,
            SubmitSpec.of(endpoint=MODEL, idempotency_key="r", fail_on_request_failures=True),
            lambda ops: f"{len(ops)} attempts ({states(ops)})", fail_requests=0.3, seed=11)

    # A create whose answer is lost: the batch exists, the client never heard; it is found by its key.
    with serve_in_background(api_key=CANARY, lose_creates=1) as url, _client(url) as client:
        sub = client.submit_spec(_requests(work / "lost.jsonl", 20, "lost"),
                                 SubmitSpec(endpoint=MODEL, idempotency_key="lost"))
        client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=120)
        paid, ops = _paid(url)
        d.check(len(ops) == 1, f"lost create: {len(ops)} batches created (1 expected)")
        _row(d, "Gemini: a create whose answer is lost", paid=paid, needed=20,
             detail=f"{len(ops)} batch created; found again by its key (displayName) before any re-send")

"""API calls made while waiting for a batch: batch_ops' poller versus a fixed-interval poll.

Two measurements:

1. **Real**, against the local server: one batch whose requests take a while, awaited by
   ``BatchClient.batches.wait`` (counting every HTTP request with an httpx event hook) and by a
   fixed-interval loop like the official provider's trigger (one GET per interval).
2. **A day-long batch, simulated** with the same pure ``BatchPoller`` the clients and the
   trigger use (no I/O, so 24 hours take milliseconds): 40 min queued in ``validating``,
   6 h ``in_progress`` with counts moving every 10 min, 50 min ``finalizing``. This is the shape
   that matters in production, and it cannot be run for real in a benchmark.

Usage: ``python benchmarks/bench_polls.py [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from batch_ops import Batch, BatchClient
from batch_ops.polling import BatchPoller
from batch_ops.server import serve_in_background

CHAT = "/v1/chat/completions"


def real(poll_interval: float) -> dict[str, Any]:
    requests = [{"custom_id": f"q{i}", "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}
                for i in range(400)]
    with tempfile.TemporaryDirectory() as tmp, serve_in_background(data_dir=tmp, request_latency=0.2,
                                                                   concurrency=8) as url:
        calls = {"GET": 0}

        def count(request: httpx.Request) -> None:
            if request.method == "GET":
                calls["GET"] += 1

        http = httpx.Client(event_hooks={"request": [count]})
        with BatchClient(api_key="bench", base_url=url, http_client=http) as client:
            batch = client.submit(requests, endpoint=CHAT)
            started = time.monotonic()
            client.batches.wait(batch.id, poll_interval=poll_interval, timeout=600)
            ours_seconds = time.monotonic() - started
            ours = calls["GET"]
            # The fixed loop, on a second identical batch.
            batch2 = client.submit(requests, endpoint=CHAT)
            calls["GET"] = 0
            started = time.monotonic()
            while not client.batches.retrieve(batch2.id).is_terminal:
                time.sleep(poll_interval)
            fixed_seconds = time.monotonic() - started
            fixed = calls["GET"]
        http.close()
    return {"batch_seconds": round(ours_seconds, 1), "ours": ours, "fixed": fixed,
            "fixed_seconds": round(fixed_seconds, 1), "poll_interval": poll_interval}


def _status_at(t: float) -> tuple[str, int]:
    total = 10_000
    if t < 40 * 60:
        return "validating", 0
    if t < 40 * 60 + 6 * 3600:
        steps = int((t - 40 * 60) // 600)  # counts move every 10 minutes
        return "in_progress", min(total, steps * total // 36)
    if t < 40 * 60 + 6 * 3600 + 50 * 60:
        return "finalizing", total
    return "completed", total


def simulated(poll_interval: float, max_poll_interval: float) -> dict[str, Any]:
    def batch_at(t: float) -> Batch:
        status, done = _status_at(t)
        return Batch(id="b", endpoint=CHAT, input_file_id="f", status=status, created_at=0,
                     request_counts={"total": 10_000, "completed": done})

    poller = BatchPoller(poll_interval=poll_interval, max_poll_interval=max_poll_interval, timeout=86400,
                         rng=random.Random(1))
    poller.start(now=0.0)
    t, ours = 0.0, 0
    while True:
        ours += 1
        decision = poller.decide(batch_at(t), now=t)
        if decision.action != "wait":
            break
        t += decision.delay
    finished = t
    fixed = 0
    t = 0.0
    while True:
        fixed += 1
        if batch_at(t).is_terminal:
            break
        t += poll_interval
    return {"ours": ours, "fixed": fixed, "ours_noticed_after_s": round(finished - (40 * 60 + 6 * 3600 + 50 * 60)),
            "poll_interval": poll_interval, "max_poll_interval": max_poll_interval}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    r = real(poll_interval=0.5)
    s = simulated(poll_interval=60, max_poll_interval=600)
    print("\n| wait | batch_ops polls | fixed-interval polls | notes |")
    print("|---|---:|---:|---|")
    print(f"| real: 400 requests on the local server (~{r['batch_seconds']} s), interval {r['poll_interval']} s | "
          f"{r['ours']} | {r['fixed']} | progress all along: the same cadence |")
    print(f"| simulated 7.5 h batch (40 min queued, 6 h running, 50 min finalizing), interval 60 s, "
          f"back-off to 600 s | {s['ours']} | {s['fixed']} | completion noticed {s['ours_noticed_after_s']} s "
          "after it happened |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"real": r, "simulated": s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

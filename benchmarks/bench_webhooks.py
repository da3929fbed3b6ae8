"""Polling versus webhooks: how late a wait notices its batch ended, and what it costs in API calls.

The same workload twice on one local server that sends real signed webhooks to
``batch-ops webhooks serve``: N batches of one request each, processed one at a time, so they end
one after another (staggered), each awaited from right after its create by one ``AsyncBatchClient``
(as one triggerer event loop awaits its deferred batches):

- **polling**: ``batches.wait(poll_interval=P)`` with no events URL (back-off to 4 P while
  nothing changes);
- **webhooks**: the same with ``events_url`` set (a safety poll every 1800 s).

"Late" is the time from the batch's end to the wait returning. The end is when the receiver
accepted the batch's webhook (the server sends it from its outbox within 0.1 s of the end), so
"late" is slightly understated for both rows alike. API calls are counted by the server.

Usage: ``python benchmarks/bench_webhooks.py [--batches 200] [--poll-interval 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from batch_ops import AsyncBatchClient, ClientSettings
from batch_ops.server import serve_in_background
from batch_ops.server.background import free_port

SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-32-bytes!!").decode()
ENDPOINT = "/v1/embeddings"


def _receiver() -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port)],
                            env={**os.environ, "OPENAI_WEBHOOK_SECRET": SECRET}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise SystemExit(f"the receiver did not start: {line}")
    return proc, f"http://127.0.0.1:{port}"


def _calls(url: str) -> dict[str, int]:
    return dict(httpx.get(url.removesuffix("/v1") + "/healthz").json()["calls"])


async def _round(settings: ClientSettings, n: int, poll_interval: float) -> tuple[dict[str, float], list[str]]:
    client = AsyncBatchClient.shared(settings)
    returned: dict[str, float] = {}

    async def wait(batch_id: str) -> None:
        await client.batches.wait(batch_id, poll_interval=poll_interval, timeout=3600)
        returned[batch_id] = time.time()

    # Each wait starts right after its create, as a deferred task's trigger does. (Creating all 200
    # first counted the first batches "late" by the ~2 s the other creates took: their waits did
    # not exist yet when they ended.)
    ids, waits = [], []
    for i in range(n):
        batch = await client.submit([{"custom_id": f"r{i}", "body": {"model": "m", "input": f"x{i}"}}],
                                    endpoint=ENDPOINT)
        ids.append(batch.id)
        waits.append(asyncio.ensure_future(wait(batch.id)))
    await asyncio.gather(*waits)
    return returned, ids


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    args = parser.parse_args()
    receiver, base = _receiver()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, serve_in_background(
                data_dir=tmp, request_latency=0.1, concurrency=1, webhook_urls=[f"{base}/openai"],
                webhook_secret=SECRET) as url:
            for mode in ("polling", "webhooks"):
                settings = ClientSettings(base_url=str(url), api_key="sk-bench",
                                          events_url=f"{base}/events" if mode == "webhooks" else None)
                before = _calls(str(url))
                started = time.monotonic()
                returned, ids = asyncio.run(_round(settings, args.batches, args.poll_interval))
                took = time.monotonic() - started
                after = _calls(str(url))
                ends = {e["batch_id"]: e["received_at"] for e in httpx.get(
                    f"{base}/events", params={"wait": "0"}).json()["events"]}
                late = [returned[b] - ends[b] for b in ids]
                polls = after.get("GET /v1/batches/{id}", 0) - before.get("GET /v1/batches/{id}", 0)
                creates = after.get("POST /v1/batches", 0) - before.get("POST /v1/batches", 0)
                rows.append({"mode": mode, "late_p50": statistics.median(late), "late_p99": _percentile(late, 0.99),
                             "late_max": max(late), "calls": (polls + creates) / args.batches,
                             "polls": polls / args.batches, "took": took})
    finally:
        receiver.terminate()
        receiver.wait(10)
    print(f"{args.batches} batches of one request, ending one after another ~0.1 s apart, each awaited from "
          "right after its create, all at once; "
          f"poll interval {args.poll_interval:g} s (back-off to {4 * args.poll_interval:g} s); webhooks: one "
          "subscription, safety poll every 1800 s.")
    print()
    print("| wait | late p50 (s) | late p99 (s) | late max (s) | API calls per batch (create + polls) | polls per batch"
          " | round took (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['late_p50']:.2f} | {r['late_p99']:.2f} | {r['late_max']:.2f} | {r['calls']:.2f} | "
              f"{r['polls']:.2f} | {r['took']:.0f} |")
    hooks = rows[-1]
    ok = hooks["late_p99"] <= 2.0 and hooks["calls"] <= 3.0
    print()
    print(f"target (webhooks): p99 <= 2 s and <= 3 API calls per batch: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

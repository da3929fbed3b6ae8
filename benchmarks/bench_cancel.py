"""Drill: cancel a thousand waits at once, many times; every one must end within a second.

What a triggerer does when triggers move to another triggerer or their tasks are cleared: it
cancels the trigger's ``run()`` while the wait is somewhere in its cycle (a poll on the wire, a
reply arriving, a sleep). A wait that swallows the cancellation lives on: it keeps polling,
and a trigger can fire for a task that has moved on (issue 22, item 20).

Each round starts ``--n`` waits on one event loop against the local server (short polls, so
many exchanges are in flight at any moment), lets them run a random ``--min-run``..``--max-run``
seconds, cancels them all in the same instant and counts the ones still running ``--grace``
seconds later (a *survivor*). Survivors are then cancelled again until they end, so the next
round starts clean. Rows:

* ``client``: ``AsyncBatchClient.batches.wait`` with a deadline (every exchange bounded by it);
* ``trigger``: ``batch_ops.airflow.OpenAIBatchTrigger.run()`` (needs Airflow installed);
* ``events``: the client's wait with an events URL (a webhook receiver that is not running, so
  the waits sleep on the events subscription and poll on their ordinary schedule).

Prints one table row per mode and ``- PASS``/``- FAIL`` (PASS: no survivor in any round).

    python benchmarks/bench_cancel.py [--n 1000] [--rounds 20] [--mode client trigger events]
        [--poll-interval 0.2] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHAT = "/v1/chat/completions"
KEY = "sk-bench-cancel"


async def _create_batches(url: str, count: int) -> list[str]:
    from batch_ops import AsyncBatchClient

    async with AsyncBatchClient(api_key=KEY, base_url=url) as client:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "one.jsonl"
            path.write_text(json.dumps({"custom_id": "r-0", "method": "POST", "url": CHAT,
                                        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}})
                            + "\n")
            uploaded = await client.files.upload(path)
            return [(await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT)).id
                    for _ in range(count)]


def _waiter(mode: str, url: str, batch_id: str, poll_interval: float, events_url: str | None) -> Any:
    """A coroutine that waits for ``batch_id`` the way ``mode`` does."""
    if mode == "trigger":
        from batch_ops.airflow import OpenAIBatchTrigger

        trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=poll_interval,
                                     max_poll_interval=poll_interval, timeout=3600, first_poll_spread=poll_interval)

        async def drive() -> Any:
            async for event in trigger.run():
                return event
            return None

        return drive()
    from batch_ops import AsyncBatchClient, ClientSettings

    settings = ClientSettings(base_url=url, api_key=KEY, events_url=events_url)
    client = AsyncBatchClient.shared(settings)
    return client.batches.wait(batch_id, poll_interval=poll_interval, max_poll_interval=poll_interval,
                               deadline=time.time() + 3600, first_delay=random.uniform(0, poll_interval))


async def _round(mode: str, url: str, batch_ids: list[str], args: argparse.Namespace,
                 events_url: str | None) -> dict[str, Any]:
    tasks = [asyncio.ensure_future(_waiter(mode, url, batch_ids[i % len(batch_ids)], args.poll_interval, events_url))
             for i in range(args.n)]
    await asyncio.sleep(random.uniform(args.min_run, args.max_run))
    ended_before = sum(1 for t in tasks if t.done())
    started = time.monotonic()
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=args.grace)
    slowest = time.monotonic() - started
    survivors = len(pending)
    # Clean up for the next round: a survivor takes the next cancellation (usually).
    tries = 0
    while pending and tries < 50:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
        tries += 1
    errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    return {"survivors": survivors, "ended_before": ended_before, "errors": len(errors),
            "first_error": repr(errors[0]) if errors else None, "end_s": slowest if not survivors else None,
            "stuck": len(pending)}


async def _mode(mode: str, url: str, batch_ids: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    events_url = None
    if mode == "events":
        from batch_ops.server.background import free_port

        events_url = f"http://127.0.0.1:{free_port()}/events"  # nothing listens: the waits fall back to polling
    rows = []
    for number in range(args.rounds):
        row = await _round(mode, url, batch_ids, args, events_url)
        rows.append(row)
        print(f"  {mode} round {number + 1}/{args.rounds}: {row['survivors']} of {args.n} still running "
              f"{args.grace:g} s after the cancel" + (f" ({row['errors']} errors: {row['first_error']})"
                                                      if row["errors"] else ""), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", nargs="+", default=["client", "trigger", "events"],
                        choices=["client", "trigger", "events"])
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server adds to every answer")
    parser.add_argument("--batches", type=int, default=20, help="distinct batches the waits share")
    parser.add_argument("--min-run", type=float, default=1.0)
    parser.add_argument("--max-run", type=float, default=3.0)
    parser.add_argument("--grace", type=float, default=1.0, help="seconds every wait has to end after the cancel")
    args = parser.parse_args()
    from batch_ops.server.background import serve_in_background

    modes = list(args.mode)
    if "trigger" in modes:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # not a line per trigger
        try:
            import airflow  # noqa: F401
        except ImportError:
            print("(no Airflow here: the trigger row is skipped)")
            modes.remove("trigger")
    print(f"Python {sys.version.split()[0]}; {args.n} waits x {args.rounds} rounds per mode, poll "
          f"{args.poll_interval:g} s, server latency {args.latency:g} s", flush=True)
    failed = False
    lines = ["| mode | rounds | waits per round | rounds with survivors | survivors (total) | slowest end s |",
             "|---|---:|---:|---:|---:|---:|"]
    # A batch that never ends: one request that takes an hour, one at a time.
    with serve_in_background(request_latency=3600, concurrency=1, latency=args.latency, api_key=KEY) as url:
        os.environ["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps(
            {"conn_type": "openaibatch", "host": str(url), "password": KEY})

        async def run_all() -> dict[str, list[dict[str, Any]]]:
            batch_ids = await _create_batches(str(url), args.batches)
            return {mode: await _mode(mode, str(url), batch_ids, args) for mode in modes}

        results = asyncio.run(run_all())
    for mode, rows in results.items():
        bad = [r for r in rows if r["survivors"]]
        ends = [r["end_s"] for r in rows if r["end_s"] is not None]
        failed = failed or bool(bad) or any(r["errors"] for r in rows)
        lines.append(f"| {mode} | {len(rows)} | {args.n:,} | {len(bad)} | {sum(r['survivors'] for r in rows)} "
                     f"| {max(ends):.2f} |" if ends else f"| {mode} | {len(rows)} | {args.n:,} | {len(bad)} "
                     f"| {sum(r['survivors'] for r in rows)} | - |")
    print("\n".join(lines))
    print(f"Python {sys.version.split()[0]}")
    print("- FAIL: a cancelled wait lived on" if failed else "- PASS: every cancelled wait ended within "
          f"{args.grace:g} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

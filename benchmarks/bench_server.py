"""Benchmark: a 50,000-request chat batch on the local server's echo engine, end to end.

Upload + create + wait + download, through the official ``openai`` SDK against
``serve_in_background()`` (the server in its own process). Prints the figures; the target is
under 60 s on a 2-core machine.

    python benchmarks/bench_server.py [--requests 50000] [--poll 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import openai

from batch_ops.server import serve_in_background


def write_requests(path: str, count: int) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"},
                    ],
                    "max_tokens": 64,
                },
            }
            fh.write(json.dumps(line) + "\n")
    return os.path.getsize(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between batch polls")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench_server_")
    src = os.path.join(work, "requests.jsonl")
    size = write_requests(src, args.requests)
    print(f"input: {args.requests:,} requests, {size / 1e6:.1f} MB")

    with serve_in_background() as url:
        client = openai.OpenAI(base_url=url, api_key="sk-bench", max_retries=0)
        t0 = time.perf_counter()
        with open(src, "rb") as fh:
            uploaded = client.files.create(file=fh, purpose="batch")
        t_upload = time.perf_counter()
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        t_create = time.perf_counter()
        seen: dict[str, float] = {}
        polls: list[float] = []  # how long each retrieve took while the server was busy
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(args.poll)
            t_poll = time.perf_counter()
            batch = client.batches.retrieve(batch.id)
            polls.append(time.perf_counter() - t_poll)
            seen.setdefault(batch.status, time.perf_counter() - t_create)
        t_done = time.perf_counter()
        if batch.status != "completed" or batch.output_file_id is None:
            print(f"batch ended {batch.status}: {batch.errors}")
            return 1
        out = os.path.join(work, "output.jsonl")
        client.files.content(batch.output_file_id).write_to_file(out)
        t_download = time.perf_counter()

    lines = sum(1 for _ in open(out, "rb"))
    total = t_download - t0
    print(f"upload    {t_upload - t0:7.2f} s")
    print(f"create    {t_create - t_upload:7.2f} s")
    print(
        f"wait      {t_done - t_create:7.2f} s  (statuses first seen after create: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in seen.items())
        + ")"
    )
    print(f"polls     {len(polls)} retrieves during the wait, slowest {max(polls, default=0) * 1000:.0f} ms")
    print(f"download  {t_download - t_done:7.2f} s  ({os.path.getsize(out) / 1e6:.1f} MB, {lines:,} lines)")
    print(
        f"total     {total:7.2f} s  -> {args.requests / total:,.0f} requests/s end to end"
        f"  [{'OK' if total < 60 else 'SLOW'}: target < 60 s]"
    )
    print(
        f"counts {batch.request_counts.completed:,} completed / {batch.request_counts.failed:,} failed; "
        f"usage {batch.usage.total_tokens if batch.usage else 0:,} tokens"
    )
    return 0 if lines == args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())

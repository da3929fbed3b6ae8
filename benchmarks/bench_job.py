"""A 120,000-request job against the local server with 5% failed requests and one token-limit
refusal: every request accounted for, none answered twice, no batch created twice.

Prints the job summary and the checks as a markdown table. A script, not a test.

Usage::

    python benchmarks/bench_job.py                    # the acceptance run (120,000 requests)
    python benchmarks/bench_job.py --requests 10000   # quicker
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from batch_ops import BatchClient
from batch_ops.jobs import BatchJob
from batch_ops.jsonl import request_line, write_requests
from batch_ops.server import serve_in_background

CHAT = "/v1/chat/completions"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=120_000)
    parser.add_argument("--fail-requests", type=float, default=0.05)
    parser.add_argument("--token-limit-failures", type=int, default=1)
    parser.add_argument("--max-concurrent", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_job_") as tmp:
        work = Path(tmp)
        src = work / "in.jsonl"
        write_requests(
            (request_line(f"r{i:06d}", {"model": "gpt-4o-mini",
                                        "messages": [{"role": "user", "content": f"question number {i}"}]},
                          endpoint=CHAT) for i in range(args.requests)),
            src,
            max_lines=2**62,  # one file for the whole job: the job shards it
        )
        with serve_in_background(data_dir=work / "server", fail_requests=args.fail_requests,
                                 token_limit_failures=args.token_limit_failures, seed=1) as url, \
                BatchClient(api_key="bench", base_url=url) as client:
            started = time.monotonic()
            job = BatchJob.open(src, output_path=work / "out.jsonl", endpoint=CHAT,
                                max_concurrent=args.max_concurrent, max_rounds=args.max_rounds,
                                token_limit_backoff=1.0)
            summary = job.run(client, poll_interval=1.0)
            seconds = time.monotonic() - started
            on_server = list(client.batches.iter_all())
            answered: Counter[str] = Counter()
            for b in on_server:
                if b.output_file_id:
                    path = client.files.download(b.output_file_id, work / f"{b.id}.out")
                    with path.open() as fh:
                        for raw in fh:
                            line = json.loads(raw)
                            if line["response"] and line["response"]["status_code"] == 200:
                                answered[line["custom_id"]] += 1
        merged = sum(1 for _ in (work / "out.jsonl").open())

    checks = {
        "succeeded + failed == total": summary.succeeded + summary.failed == summary.total,
        "one merged line per request": merged == summary.total,
        "no request answered twice": (max(answered.values()) if answered else 0) <= 1,
        "no batch created twice (server batches == job's batches)":
            sorted(b.id for b in on_server) == sorted(job.state.batch_ids),
    }
    print(f"\n{args.requests:,} requests, fail_requests={args.fail_requests}, "
          f"token_limit_failures={args.token_limit_failures}, max_concurrent={args.max_concurrent}\n")
    print("| total | succeeded | failed | batches | resubmitted | rounds | token-limit resubmits | duplicates | "
          "seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {summary.total:,} | {summary.succeeded:,} | {summary.failed:,} | {summary.batches} | "
          f"{summary.resubmitted:,} | {summary.rounds} | {summary.token_limit_resubmits} | {summary.duplicates} | "
          f"{seconds:.0f} |")
    print()
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {name}")
    print(json.dumps({"total": summary.total, "succeeded": summary.succeeded, "failed": summary.failed,
                      "batches": summary.batches, "resubmitted": summary.resubmitted}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

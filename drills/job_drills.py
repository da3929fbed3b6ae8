"""Suite ``job_drills`` (drill 8d): the requests paid for against the requests needed when several
workers resume one job at once — a Celery redelivery while the first try still runs, two pods, an
Airflow task cleared while its deferred step resumes.

Each row: the job is started (sharded, its state stored), then 2 or 4 worker processes open it and
run it to the end, all released at the same instant by a barrier folder; the job's output is on the
local disk or on S3 (moto's server, real HTTP). "Paid" is what the server billed: the successful
requests of every batch it holds (``money_drills.paid_for``). Every row must show paid == needed and
one batch per part: one worker steps the job at a time (its lease, :mod:`batch_ops.jobs.lease`), the
others wait and then find the work done.

The rows go to ``drills/results/money.md`` with drill 8's, by the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drills._common import CANARY, CHAT, Drill, chat_lines, write_jsonl
from drills.money_drills import paid_for

__all__ = ["run"]

PARTS, PER_PART = 8, 25

#: One worker: open the job, wait at the barrier for the others, run it to the end, print what it saw.
_WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from batch_ops import BatchClient
    from batch_ops.jobs import BatchJob
    src, out, url, key, barrier, n, me = sys.argv[1:8]
    job = BatchJob.open(src, output_path=out, endpoint="/v1/chat/completions", max_lines=25, max_concurrent=4)
    Path(barrier, me).touch()
    deadline = time.monotonic() + 120
    while len(os.listdir(barrier)) < int(n):
        if time.monotonic() > deadline:
            sys.exit("the other workers never reached the barrier")
        time.sleep(0.001)
    steps = []
    with BatchClient(api_key=key, base_url=url) as client:
        summary = job.run(client, poll_interval=0.1, on_step=steps.append)
    busy = sum(getattr(p, "busy", False) for p in steps)
    created = sum(e.count(": created batch ") for p in steps for e in p.events)
    print(json.dumps({"summary": summary.as_dict(), "steps": len(steps), "busy": busy, "created": created}))
""")


def run(names: list[str], work: Path) -> list[Drill]:
    titles = {"money-jobs": "paid vs needed: workers resuming one job at once"}
    bodies: dict[str, Callable[[Drill], None]] = {"money-jobs": lambda d: money_jobs(d, work / "jobs")}
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, titles[name]).run(bodies[name]))
    return results


@contextlib.contextmanager
def _s3(work: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server in a process of its own; yields the environment that reaches it."""
    from drills.cluster.services import Moto

    moto = Moto(work, bucket="batch-ops-jobs")
    with moto.running():
        yield moto.env


def _race(d: Drill, n: int, src: str, out: str, url: str, work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    barrier = work / "barrier"
    barrier.mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, src, out, url, CANARY, str(barrier), str(n), f"w{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True, stdin=subprocess.DEVNULL) for i in range(n)]
    answers = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            d.require(proc.returncode == 0, f"a worker failed: {stderr[-800:]}")
            answers.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return answers


def _row(d: Drill, scenario: str, url: str, answers: list[dict[str, Any]]) -> None:
    needed = PARTS * PER_PART
    paid, batches, uploads = paid_for(url)
    per_part = Counter((b.metadata or {}).get("batch_ops_part") for b in batches)
    d.check(len(batches) == PARTS and set(per_part.values()) == {1},
            f"{scenario}: one batch per part ({len(batches)} batches for {PARTS} parts)")
    d.check(paid == needed, f"{scenario}: paid for {paid} requests, needed {needed}")
    d.check(all(a["summary"]["succeeded"] == needed and a["summary"]["batches"] == PARTS for a in answers),
            f"{scenario}: every worker ends with the whole job ({[a['summary']['succeeded'] for a in answers]})")
    created = [a["created"] for a in answers]
    d.figure(scenario, f"paid {paid} / needed {needed}; {len(batches)} batches for {PARTS} parts "
             f"(created per worker {created}), {uploads} uploads, {sum(a['busy'] for a in answers)} busy steps "
             "waited")


def money_jobs(d: Drill, work: Path) -> None:
    from batch_ops.jobs import BatchJob
    from batch_ops.server import serve_in_background

    src = write_jsonl(work / "in.jsonl", chat_lines("job", PARTS * PER_PART))
    for n in (2, 4):
        out = work / f"local-{n}" / "out.jsonl"
        BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=PER_PART)  # started: the workers resume it
        with serve_in_background(api_key=CANARY, request_latency=0.01) as url:
            answers = _race(d, n, str(src), str(out), str(url), work / f"local-{n}", dict(os.environ))
            _row(d, f"{n} workers resuming one job at once, local disk", str(url), answers)

    with _s3(work) as s3_env:
        env = {**os.environ, **s3_env}
        saved = {k: os.environ.get(k) for k in s3_env}
        os.environ.update(s3_env)  # this process shards the job onto S3 too
        try:
            import fsspec

            fs = fsspec.filesystem("s3", skip_instance_cache=True)
            fs.put(str(src), "batch-ops-jobs/in.jsonl")
            for n in (2, 4):
                base = f"s3://batch-ops-jobs/race-{n}"
                BatchJob.open("s3://batch-ops-jobs/in.jsonl", output_path=f"{base}/out.jsonl", endpoint=CHAT,
                              max_lines=PER_PART)
                with serve_in_background(api_key=CANARY, request_latency=0.01) as url:
                    answers = _race(d, n, "s3://batch-ops-jobs/in.jsonl", f"{base}/out.jsonl", str(url),
                                    work / f"s3-{n}", env)
                    _row(d, f"{n} workers resuming one job at once, S3", str(url), answers)
                fs.invalidate_cache()
                lines = fs.cat(f"batch-ops-jobs/race-{n}/out.jsonl").splitlines()
                d.check(len(lines) == PARTS * PER_PART, f"S3, {n} workers: the merged output has every request")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

"""Two and four workers stepping one job at the same moment (a Celery redelivery while the first try
still runs, two pods): real processes, each opening the job and advancing it together, synchronised
by a barrier folder, on a local disk and on S3 (moto's server, real HTTP). The server must hold
exactly one batch per part, and the requests paid for must be the requests needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops.jobs import BatchJob
from batch_ops.jsonl import request_line, write_requests

from .conftest import S3_BUCKET

#: Racing worker processes (~35 s): run by `make drill` (drills/scenario_tests.py), beside drill 8d.
pytestmark = pytest.mark.scenario

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]
PARTS, PER_PART = 4, 10

#: One worker: open the job, wait at the barrier for the others, then run it to the end.
WORKER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from pathlib import Path
    from batch_ops import AsyncBatchClient, BatchClient
    from batch_ops.jobs import BatchJob
    src, out, url, barrier, n, mode, me = sys.argv[1:8]
    def job_open():
        return BatchJob.open(src, output_path=out, endpoint="/v1/chat/completions", max_lines=10)
    job = job_open() if mode != "fresh" else None
    Path(barrier, me).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier)) < int(n):
        if time.monotonic() > deadline:
            sys.exit("the other workers never reached the barrier")
        time.sleep(0.001)
    job = job or job_open()  # "fresh": the job does not exist yet, every worker starts it at once
    events = []
    def note(progress):
        events.extend(progress.events)
    if mode == "async":
        async def main():
            async with AsyncBatchClient(api_key="local", base_url=url) as client:
                return await job.arun(client, poll_interval=0.05, on_step=note)
        summary = asyncio.run(main())
    else:
        with BatchClient(api_key="local", base_url=url) as client:
            summary = job.run(client, poll_interval=0.05, on_step=note)
    print(json.dumps({"summary": summary.as_dict(), "events": events}))
""")


def write_input(path: Path) -> Path:
    write_requests((request_line(f"q{i:03d}", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"hi {i}"}]}, endpoint=CHAT) for i in range(PARTS * PER_PART)), path)
    return path


def paid_for(url: str, *, timeout: float = 60.0) -> tuple[int, list[Any]]:
    """(successful requests over every batch the server holds, the batches), once every batch ended
    (what drills/money_drills.py's ``paid_for`` measures)."""
    sdk = openai.OpenAI(api_key="local", base_url=url, max_retries=5)
    deadline = time.monotonic() + timeout
    while True:
        batches = list(sdk.batches.list(limit=100))
        if all(b.status in ("completed", "failed", "expired", "cancelled") for b in batches):
            break
        assert time.monotonic() < deadline, "the server's batches never ended"
        time.sleep(0.1)
    return sum(b.request_counts.completed for b in batches if b.request_counts), batches


def race(n: int, mode: str, src: str, out: str, url: str, tmp: Path) -> list[dict[str, Any]]:
    barrier = tmp / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, src, out, url, str(barrier), str(n), mode, f"w{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for i in range(n)]
    answers = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-3000:]
            answers.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return answers


def assert_paid_once(url: str, answers: list[dict[str, Any]]) -> None:
    paid, batches = paid_for(url)
    per_part = Counter((b.metadata or {}).get("batch_ops_part") for b in batches)
    assert per_part == Counter({f"r0-{i:03d}": 1 for i in range(1, PARTS + 1)}), (
        f"{len(batches)} batches for {PARTS} parts: {dict(per_part)}")
    assert paid == PARTS * PER_PART, f"paid for {paid} requests, needed {PARTS * PER_PART}"
    for answer in answers:  # every worker ends with the whole job, the same summary
        assert answer["summary"]["succeeded"] == PARTS * PER_PART and answer["summary"]["batches"] == PARTS


@pytest.mark.parametrize(("n", "mode"), [(2, "sync"), (4, "async")])
def test_workers_stepping_one_job_at_once_on_local_disk_pay_once(
        n: int, mode: str, make_server: MakeServer, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=PER_PART)  # the job exists: they resume it
    with make_server(request_latency=0.01) as url:
        answers = race(n, mode, str(src), str(out), url, tmp_path)
        assert_paid_once(url, answers)
    assert len(out.read_text().splitlines()) == PARTS * PER_PART


def test_workers_starting_one_new_job_at_once_shard_it_once_and_pay_once(
        make_server: MakeServer, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    with make_server(request_latency=0.01) as url:
        answers = race(3, "fresh", str(src), str(out), url, tmp_path)
        assert_paid_once(url, answers)
    assert len(out.read_text().splitlines()) == PARTS * PER_PART


@pytest.mark.parametrize(("n", "mode"), [(2, "async"), (4, "sync")])
def test_workers_stepping_one_job_at_once_on_s3_pay_once(
        n: int, mode: str, s3: Any, make_server: MakeServer, tmp_path: Path) -> None:
    base = f"s3://{S3_BUCKET}/race"
    local = write_input(tmp_path / "in.jsonl")
    s3.put(str(local), f"{S3_BUCKET}/race/in.jsonl")
    BatchJob.open(f"{base}/in.jsonl", output_path=f"{base}/out.jsonl", endpoint=CHAT, max_lines=PER_PART)
    with make_server(request_latency=0.01) as url:
        answers = race(n, mode, f"{base}/in.jsonl", f"{base}/out.jsonl", url, tmp_path)
        assert_paid_once(url, answers)
    s3.invalidate_cache()
    assert len(s3.cat(f"{S3_BUCKET}/race/out.jsonl").splitlines()) == PARTS * PER_PART

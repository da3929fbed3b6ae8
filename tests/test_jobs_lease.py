"""The job's lease (batch_ops/jobs/lease.py): a step that finds the job busy does nothing and says when
to try again; a lease on S3 whose holder stalls is taken over, and the stalled holder creates nothing
afterwards; a cancelled step gives the lease back; stores that cannot hold a lease fall back to key
lookups, and say so."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
import s3fs
from fsspec.asyn import sync_wrapper

from batch_ops import AsyncBatchClient, BatchClient, storage
from batch_ops.errors import JobBusyError
from batch_ops.jobs import BatchJob
from batch_ops.jobs.lease import FileLease, S3Lease
from batch_ops.jsonl import request_line, write_requests

from .conftest import S3_BUCKET

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]


def write_input(path: Path, n: int = 20) -> Path:
    write_requests((request_line(f"q{i:03d}", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"hi {i}"}]}, endpoint=CHAT) for i in range(n)), path)
    return path


def batches(url: str) -> list[Any]:
    return list(openai.OpenAI(api_key="local", base_url=url, max_retries=5).batches.list(limit=100))


def test_a_step_that_finds_the_job_busy_does_nothing_and_says_when_to_try_again(
        make_server: MakeServer, tmp_path: Path) -> None:
    src, out = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    job = BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=10)
    other = FileLease(f"{out}.lease")  # another worker, mid-step
    assert other.acquire()
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        try:
            progress = job.advance(client)
            assert progress.busy and not progress.done and batches(url) == []
            assert progress.wake_at is not None and progress.wake_at - time.time() <= 5
            assert progress.events[0].startswith(f"busy: worker {os.uname().nodename} pid {os.getpid()}")
        finally:
            other.release()
        progress = job.advance(client)
        assert not progress.busy and len(progress.running) == 2


def test_finish_waits_for_another_workers_step_then_says_busy(tmp_path: Path) -> None:
    src, out = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    job = BatchJob.open(src, output_path=out, endpoint=CHAT, lease_ttl=1)
    other = FileLease(f"{out}.lease")
    assert other.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(JobBusyError, match="try again later") as caught:
            job.finish()
        assert 1.0 <= time.monotonic() - started < 5 and caught.value.retry_after > 0
    finally:
        other.release()


async def test_a_cancelled_async_step_gives_the_lease_back(make_server: MakeServer, tmp_path: Path) -> None:
    src, out = write_input(tmp_path / "in.jsonl"), tmp_path / "out.jsonl"
    job = BatchJob.open(src, output_path=out, endpoint=CHAT)
    with make_server(latency=1.0) as url:  # every API call takes a second: the step is mid-call when cancelled
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            task = asyncio.create_task(job.aadvance(client))
            await asyncio.sleep(0.5)
            lease = FileLease(f"{out}.lease")
            assert not lease.acquire()  # the step holds it
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert lease.acquire()  # given back with the cancellation
            lease.release()


HOLDER = textwrap.dedent("""
    import sys
    from batch_ops import storage
    from batch_ops.errors import JobBusyError
    from batch_ops.jobs.lease import S3Lease
    lease = S3Lease(storage.location(sys.argv[1]), ttl=1)
    print("held" if lease.acquire() else "busy", flush=True)
    sys.stdin.readline()  # stopped (SIGSTOP) here, then let go on
    try:
        lease.confirm()
    except JobBusyError as exc:
        print("lost:", exc, flush=True)
    else:
        print("still held", flush=True)
""")


def test_a_stalled_holder_of_an_s3_lease_is_taken_over_and_then_refused(s3: Any) -> None:
    """A worker frozen past its lease (SIGSTOP: a stalled VM, a long GC) loses it to another, and when it
    wakes up its next confirm — made before every create — refuses to go on."""
    url = f"s3://{S3_BUCKET}/jobs/out.jsonl.lease"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        other = S3Lease(storage.location(url), ttl=30)
        assert not other.acquire()  # alive a moment ago: busy
        deadline = time.monotonic() + 10
        while not other.acquire():
            assert time.monotonic() < deadline, "the stalled lease was never taken over"
            time.sleep(0.2)
        assert other.took_over is not None and "silent for" in other.took_over
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().startswith("lost: This step stopped before its next write")
        other.confirm()  # still ours
        other.release()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()


class IgnoringS3FileSystem(s3fs.S3FileSystem):
    """An S3-compatible store that accepts conditional writes and ignores the condition (older MinIO, Ceph)."""

    protocol = ("s3ignoring",)

    async def _call_s3(self, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
        kwargs.pop("IfNoneMatch", None)
        kwargs.pop("IfMatch", None)
        return await super()._call_s3(method, *akwarglist, **kwargs)

    call_s3 = sync_wrapper(_call_s3)


def test_a_store_that_ignores_conditional_writes_is_caught_and_falls_back_to_key_lookups(
        s3: Any, make_server: MakeServer, tmp_path: Path) -> None:
    fs = IgnoringS3FileSystem(skip_instance_cache=True)
    out = storage.Location(fs, f"{S3_BUCKET}/jobs/out.jsonl")
    lease = S3Lease(storage.Location(fs, f"{S3_BUCKET}/jobs/probe.lease"))
    assert lease.acquire() and not lease.exclusive and "ignores If-None-Match" in (lease.note or "")
    lease.release()
    src = write_input(tmp_path / "in.jsonl")
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        events: list[str] = []
        summary = BatchJob.open(src, output_path=out, endpoint=CHAT).run(
            client, poll_interval=0.05, on_step=lambda p: events.extend(p.events))
    assert any("ignores If-None-Match" in e for e in events) and summary.succeeded == 20


def test_steps_on_a_store_without_a_lease_collapse_by_key_lookups(make_server: MakeServer, tmp_path: Path) -> None:
    """memory:// (and gs://, az://, Prefect blocks) cannot hold a lease: two steps at once each create a
    batch per part, then the later one cancels itself — one batch per part remains working. (Each request
    takes a second here, so no duplicate can finish before its cancel: the weaker guarantee of this mode.)"""
    src = write_input(tmp_path / "in.jsonl", 10)
    out = "memory://jobs-no-lease/out.jsonl"
    jobs = [BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=5) for _ in range(2)]
    barrier = threading.Barrier(2)
    events: list[str] = []
    with make_server(request_latency=1.0, concurrency=4) as url, \
            BatchClient(api_key="local", base_url=url) as client:

        def step(job: BatchJob) -> None:
            barrier.wait()
            events.extend(job.advance(client).events)

        threads = [threading.Thread(target=step, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        working = Counter(b.metadata["batch_ops_part"] for b in batches(url)
                          if b.status not in ("cancelling", "cancelled"))
        summary = BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=5).run(client, poll_interval=0.1)
    assert working == Counter({"r0-001": 1, "r0-002": 1})
    assert any("memory:// cannot hold a lease" in e for e in events)
    assert summary.succeeded == 10 and summary.batches == 2

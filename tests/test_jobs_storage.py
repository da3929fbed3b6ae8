"""Jobs whose output is on object storage: the state, parts and results sit next to the output on S3
(moto's server, real HTTP on loopback), so a job resumes on a machine that shares no disk with the
one that started it — and never creates a batch twice, whichever machine it resumes on."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from batch_ops import BatchClient, storage
from batch_ops.errors import StorageError
from batch_ops.jobs import BatchJob, JobState
from batch_ops.jsonl import request_line, write_requests

from .conftest import S3_BUCKET

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]
BASE = f"s3://{S3_BUCKET}/jobs"


def requests_file(n: int) -> bytes:
    path = Path(tempfile.mkdtemp()) / "in.jsonl"
    write_requests((request_line(f"q{i:05d}", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"hi {i}"}]}, endpoint=CHAT) for i in range(n)), path)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


def on_server(url: str) -> tuple[list[str], Counter[str]]:
    """The ids of every batch the server holds, and the successful answers per custom_id across them."""
    sdk = openai.OpenAI(api_key="local", base_url=url, max_retries=5)
    batches = list(sdk.batches.list(limit=100))
    answered: Counter[str] = Counter()
    for b in batches:
        if b.output_file_id:
            for raw in sdk.files.content(b.output_file_id).text.splitlines():
                line = json.loads(raw)
                if line["response"] and line["response"]["status_code"] == 200:
                    answered[line["custom_id"]] += 1
    return [b.id for b in batches], answered


def stored_state(s3: Any, key: str) -> JobState | None:
    s3.invalidate_cache()
    return JobState.model_validate_json(s3.cat(key)) if s3.exists(key) else None


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory and every temporary folder of this process, to see what is left on disk."""
    root = tmp_path / "scratch"
    (root / "tmp").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.setattr(tempfile, "tempdir", str(root / "tmp"))
    return root


def test_a_job_on_s3_runs_through_rounds_and_leaves_nothing_on_the_worker(
        s3: Any, make_server: MakeServer, scratch: Path) -> None:
    s3.pipe(f"{S3_BUCKET}/jobs/in.jsonl", requests_file(600))
    with make_server(fail_requests=0.05, seed=3) as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(f"{BASE}/in.jsonl", output_path=f"{BASE}/out.jsonl", endpoint=CHAT, max_lines=100,
                            max_concurrent=3, max_rounds=3)
        summary = job.run(client, poll_interval=0.05)
        batch_ids, answered = on_server(url)
    assert summary.output_path == f"{BASE}/out.jsonl" and summary.state_path == f"{BASE}/out.jsonl.state.json"
    assert summary.succeeded + summary.failed == summary.total == 600 and summary.rounds >= 2
    assert sorted(batch_ids) == sorted(job.state.batch_ids) and max(answered.values()) == 1
    out = [json.loads(line) for line in s3.cat(f"{S3_BUCKET}/jobs/out.jsonl").splitlines()]
    assert [line["custom_id"] for line in out] == [f"q{i:05d}" for i in range(600)]
    state = stored_state(s3, f"{S3_BUCKET}/jobs/out.jsonl.state.json")
    assert state is not None and state.done and state.finished_at is not None
    assert [p.path for p in state.parts][:2] == ["parts/r0-001.jsonl", "parts/r0-002.jsonl"]  # relative: it moves
    work = f"{S3_BUCKET}/jobs/out.jsonl.work"
    assert len(s3.ls(f"{work}/results")) == len(state.parts) and any("/r1-" in p for p in s3.ls(f"{work}/parts"))
    del job
    gc.collect()
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # staged copies and the cache are gone


def test_a_job_killed_on_one_worker_resumes_on_another_without_a_second_batch(
        s3: Any, make_server: MakeServer, tmp_path: Path) -> None:
    """Worker A (its own process, temp folder and working directory) is killed with SIGKILL mid-job and its
    disk thrown away; worker B resumes from what is on S3 alone, once A's lease (1 s here) has expired."""
    s3.pipe(f"{S3_BUCKET}/jobs/in.jsonl", requests_file(1200))
    worker_a = tmp_path / "worker-a"
    (worker_a / "tmp").mkdir(parents=True)
    script = (
        "import sys\n"
        "from batch_ops import BatchClient\n"
        "from batch_ops.jobs import BatchJob\n"
        "job = BatchJob.open(sys.argv[1] + '/in.jsonl', output_path=sys.argv[1] + '/out.jsonl',"
        " endpoint='/v1/chat/completions', max_lines=100, max_concurrent=2, lease_ttl=1)\n"
        "job.run(BatchClient(api_key='local', base_url=sys.argv[2]), poll_interval=0.05)\n"
    )
    state_key = f"{S3_BUCKET}/jobs/out.jsonl.state.json"
    with make_server(request_latency=0.002, fail_requests=0.05, seed=2) as url:
        proc = subprocess.Popen([sys.executable, "-c", script, BASE, url], cwd=worker_a,
                                env={**os.environ, "TMPDIR": str(worker_a / "tmp")})
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                state = stored_state(s3, state_key)
                if state is not None and sum(p.status == "harvested" for p in state.parts) >= 3:
                    break
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert any((worker_a / "tmp").iterdir())  # A worked in its own cache ...
        shutil.rmtree(worker_a)                   # ... which B never sees.
        before = stored_state(s3, state_key)
        assert before is not None and not before.done and before.batch_ids
        with BatchClient(api_key="local", base_url=url) as client:
            job = BatchJob.open(f"{BASE}/in.jsonl", output_path=f"{BASE}/out.jsonl", endpoint=CHAT, max_lines=100,
                                max_concurrent=2)
            assert job.state.batch_ids == before.batch_ids  # resumed, not re-sharded
            events: list[str] = []
            summary = job.run(client, poll_interval=0.05, on_step=lambda p: events.extend(p.events))
        batch_ids, answered = on_server(url)
    # A died holding the lease (if it was mid-step): B waited for it to expire, then took it over.
    assert any(e.startswith("took the job's lease over from worker") for e in events) or not any(
        e.startswith("busy:") for e in events)
    assert sorted(batch_ids) == sorted(job.state.batch_ids)
    assert summary.succeeded + summary.failed == 1200 and max(answered.values()) == 1
    assert len(s3.cat(f"{S3_BUCKET}/jobs/out.jsonl").splitlines()) == 1200


def test_crash_between_create_and_record_reattaches_from_s3(s3: Any, make_server: MakeServer,
                                                            tmp_path: Path) -> None:
    """A local input, the output on S3: the part's key is on S3 before its batch is created, so a job
    opened afresh (another cache) after a crash re-attaches to that batch."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(requests_file(50))
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=f"{BASE}/out.jsonl", endpoint=CHAT)
        plan = job.advance_plan()
        call = plan.send(None)
        assert call.target == "submit_spec"
        state = stored_state(s3, f"{S3_BUCKET}/jobs/out.jsonl.state.json")
        assert state is not None and state.parts[0].status == "submitting" and state.parts[0].key
        client.submit_spec(**call.kwargs)  # the batch exists on the server ...
        plan.close()                  # ... and the worker dies before recording it.
        resumed = BatchJob.open(src, output_path=f"{BASE}/out.jsonl", endpoint=CHAT)
        assert resumed.work_dir != job.work_dir
        summary = resumed.run(client, poll_interval=0.05)
        batch_ids, _ = on_server(url)
    assert len(batch_ids) == 1 and summary.batches == 1 and summary.succeeded == 50


class RefusingMemoryFileSystem(MemoryFileSystem):
    """fsspec's memory file system, refusing to store job states while ``refuse`` is set."""

    protocol = "refusing"
    refuse = False

    def put_file(self, lpath: str, rpath: str, **kwargs: Any) -> None:
        if type(self).refuse and rpath.endswith(".state.json"):
            raise PermissionError(f"AccessDenied: {rpath}")
        super().put_file(lpath, rpath, **kwargs)


def test_a_state_that_cannot_be_stored_creates_no_batch(make_server: MakeServer, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(requests_file(20))
    out = storage.Location(RefusingMemoryFileSystem(), "/refusing-test/out.jsonl")
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=out, endpoint=CHAT)
        RefusingMemoryFileSystem.refuse = True
        try:
            with pytest.raises(StorageError, match="AccessDenied"):
                job.advance(client)
            assert on_server(url)[0] == []  # the key could not be stored: nothing was created
        finally:
            RefusingMemoryFileSystem.refuse = False
        summary = BatchJob.open(src, output_path=out, endpoint=CHAT).run(client, poll_interval=0.05)
        assert len(on_server(url)[0]) == 1 and summary.succeeded == 20


def test_resuming_on_s3_with_another_input_is_refused(s3: Any) -> None:
    s3.pipe(f"{S3_BUCKET}/jobs/a.jsonl", requests_file(3))
    s3.pipe(f"{S3_BUCKET}/jobs/b.jsonl", requests_file(3))
    BatchJob.open(f"{BASE}/a.jsonl", output_path=f"{BASE}/out.jsonl", endpoint=CHAT)
    with pytest.raises(Exception, match="belongs to a job over s3://"):
        BatchJob.open(f"{BASE}/b.jsonl", output_path=f"{BASE}/out.jsonl", endpoint=CHAT)
    with pytest.raises(Exception, match="output_is_input"):
        BatchJob.open(f"{BASE}/a.jsonl", output_path=f"{BASE}/a.jsonl", endpoint=CHAT)

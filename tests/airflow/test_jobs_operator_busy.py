"""OpenAIBatchJobOperator when another worker is stepping the same job (a cleared task whose deferred
step resumes, a Celery redelivery): the task's step finds the job's lease taken, creates nothing,
defers until it is worth trying again, and finishes the job once the other step is over."""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from batch_ops.jobs import BatchJob


def test_a_busy_job_defers_and_creates_nothing_until_the_other_step_ends(
        make_server: Any, use_server: Any, run_dag: Any, af: Any, oracle: Any, tmp_path: Path, api_key: str,
        capfd: pytest.CaptureFixture[str]) -> None:
    src = af.write_requests(tmp_path / "in.jsonl", 80)
    out = tmp_path / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint="/v1/chat/completions", max_lines=40)  # as the DAG's operator would
    lease = os.open(f"{out}.lease", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another worker, mid-step, holds the job's lease
    released: list[float] = []
    first: list[str] = []

    def release_after_the_first_step() -> None:
        # Held until the task's first step has run and logged what it did ("busy: ..." or "part ...: created").
        seen, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and not (found := re.search(r"Job job_\w+: (busy|part)[^\n]*", seen)):
            seen += capfd.readouterr().out
            time.sleep(0.05)
        first.append(found.group(0) if found else "")
        released.append(time.time())
        os.close(lease)

    with make_server(api_key=api_key) as url:
        use_server(url)
        releaser = threading.Thread(target=release_after_the_first_step)
        releaser.start()
        try:
            dr = run_dag("batch_ops_job", {"input_path": str(src), "output_path": str(out)})
        finally:
            releaser.join()
        summary = af.xcom(dr, "job")
        batches = list(oracle(url).with_options(api_key=api_key).batches.list(limit=100))
    assert ": busy: " in first[0], first  # the first step found the job busy and did nothing
    assert af.state(dr, "job") == "success", summary
    assert summary["succeeded"] == 80 and summary["batches"] == len(batches) == 2
    # Nothing was created while the other worker held the lease (created_at has one-second resolution).
    assert min(b.created_at for b in batches) >= int(released[0])

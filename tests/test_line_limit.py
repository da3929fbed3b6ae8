"""One line longer than a request may be (50 MB) is refused while reading, on every path, in bounded memory.

Before: ``batch-ops job`` on one 700 MB line without a newline peaked at 1,473 MB RSS and ``shard``
at 451 MB, because each path read the line whole before judging it (a 100 MB line: ~350 MB on every
path, and in the local server validating an uploaded file). Now every reader goes through
``batch_ops.jsonl.read_lines``, which measures a long line a piece at a time before reading it.

The files are sparse where they can be (a JSON prefix, then a hole of NUL bytes and no newline):
they cost no disk and are written at once, and every reader must still go through every byte.
Each path runs as a real process; its peak RSS (``ru_maxrss`` of the child, ``VmHWM`` of the
server) must stay below the size of the line it was given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient

CHAT = "/v1/chat/completions"
MB = 1024 * 1024
#: Over the line limit, under the 200 MB file limit: every reader has to meet the line itself.
LINE = 100 * MB
#: The longest result line read: more than any answer the API documents (batch_ops.results).
RESULT_LIMIT = 200 * MB
#: What a process may peak at: well under the one line (the CLI alone is ~50 MB).
BUDGET_MB = 100
_PREFIX = b'{"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", ' \
          b'"messages": [{"role": "user", "content": "'


def _one_long_line(path: Path, size: int = LINE) -> Path:
    with path.open("wb") as fh:
        fh.write(_PREFIX)
        fh.truncate(size)  # the rest is a hole: no newline anywhere
    return path


def _measured(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``argv``; its result and its peak RSS in MB.

    A small parent of its own runs it and reads ``RUSAGE_CHILDREN``: that maximum covers every
    child a process ever had, so pytest's own (a server, an earlier test) must not be counted.
    """
    code = textwrap.dedent("""
        import json, resource, subprocess, sys
        proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak": peak}))
    """)
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env=full_env, check=True)
    found = json.loads(done.stdout)
    return subprocess.CompletedProcess(argv, found["code"], found["stdout"], found["stderr"]), found["peak"]


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    return _measured([sys.executable, "-m", "batch_ops.cli", *args], env=env)


def _refused_at_line_1(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    text = proc.stdout + proc.stderr
    assert any(where in text for where in ("line 1:", '"line": 1', ".jsonl:1:")), text
    assert "line_too_large" in text and "50 MB" in text and "fix" in text, text
    assert "Traceback" not in proc.stderr, proc.stderr


def test_validate_refuses_the_line_without_reading_it_whole(tmp_path: Path) -> None:
    src = _one_long_line(tmp_path / "big.jsonl")
    proc, peak = _cli("validate", str(src))
    assert peak < BUDGET_MB, f"validate peaked at {peak:.0f} MB for one {LINE // MB} MB line"
    _refused_at_line_1(proc)


def test_shard_refuses_the_line_and_writes_no_part(tmp_path: Path) -> None:
    src = _one_long_line(tmp_path / "big.jsonl")
    parts = tmp_path / "parts"
    proc, peak = _cli("shard", str(src), "--out-dir", str(parts))
    assert peak < BUDGET_MB, f"shard peaked at {peak:.0f} MB (before: 451 MB for a 700 MB line)"
    _refused_at_line_1(proc)
    assert "empty_file" not in proc.stderr  # the file is not empty: it cannot be read past line 1
    assert list(parts.iterdir()) == []


def test_submit_and_job_refuse_the_line_before_anything_is_uploaded(tmp_path: Path, server_url: str) -> None:
    src = _one_long_line(tmp_path / "big.jsonl")
    env = {"OPENAI_API_KEY": "sk-local", "OPENAI_BASE_URL": server_url}
    with BatchClient(api_key="sk-local", base_url=server_url) as client:
        files_before = {f.id for f in client.files.list()}
        submitted, submit_peak = _cli("submit", str(src), "--endpoint", CHAT, env=env)
        job, job_peak = _cli("job", str(src), "--endpoint", CHAT, "--output", str(tmp_path / "out.jsonl"), env=env)
        assert {f.id for f in client.files.list()} == files_before  # nothing uploaded, nothing paid
    assert submit_peak < BUDGET_MB, f"submit peaked at {submit_peak:.0f} MB"
    assert job_peak < BUDGET_MB, f"job peaked at {job_peak:.0f} MB (before: 1,473 MB for a 700 MB line)"
    _refused_at_line_1(submitted)
    _refused_at_line_1(job)


def test_reading_results_refuses_a_line_longer_than_any_answer(tmp_path: Path) -> None:
    out = _one_long_line(tmp_path / "output.jsonl", RESULT_LIMIT + MB)
    code = textwrap.dedent("""
        import sys
        from batch_ops.errors import ResultFileError
        from batch_ops.results import iter_result_lines
        try:
            list(iter_result_lines(sys.argv[1]))
        except ResultFileError as exc:
            print(exc)
    """)
    proc, peak = _measured([sys.executable, "-c", code, str(out)])
    assert peak < BUDGET_MB, f"reading results peaked at {peak:.0f} MB for one 201 MB line"
    assert proc.returncode == 0, proc.stderr
    assert "line 1" in proc.stdout and "200 MB" in proc.stdout, proc.stdout


def test_the_local_server_fails_the_batch_naming_the_line_in_bounded_memory(tmp_path: Path, make_server: Any) -> None:
    src = _one_long_line(tmp_path / "big.jsonl")
    with make_server() as url, BatchClient(api_key="sk-local", base_url=url) as client:
        before = _vm_hwm_mb(url.pid)
        uploaded = client.files.upload(src)  # streamed; the server's upload limit is 200 MB
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT)
        batch = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
        grew = _vm_hwm_mb(url.pid) - before
    assert grew < BUDGET_MB / 2, f"the server grew {grew:.0f} MB validating one {LINE // MB} MB line"
    assert batch.status.value == "failed"
    [error] = batch.errors.data if batch.errors else []
    assert (error.code, error.line) == ("line_too_large", 1), error


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_line_just_under_the_limit_is_read(tmp_path: Path) -> None:
    from batch_ops.jsonl import MAX_LINE_BYTES, read_lines
    from batch_ops.results import MAX_RESULT_LINE_BYTES

    assert (MAX_LINE_BYTES, MAX_RESULT_LINE_BYTES) == (50 * MB, RESULT_LIMIT)

    path = tmp_path / "two.jsonl"
    path.write_bytes(b"a" * (2 * MB) + b"\n" + b"b" * 10)
    with path.open("rb") as fh:
        assert [len(x) if x else x for x in read_lines(fh, limit=2 * MB + 1)] == [2 * MB + 1, 10]
    with path.open("rb") as fh:
        assert [len(x) if x else x for x in read_lines(fh, limit=2 * MB)] == [None]


@pytest.mark.parametrize("endpoint", [CHAT])
def test_a_request_built_in_memory_over_the_limit_is_refused(tmp_path: Path, endpoint: str) -> None:
    from batch_ops import InputValidationError
    from batch_ops.jsonl import write_requests

    big = {"custom_id": "a", "body": {"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]}}
    with pytest.raises(InputValidationError) as caught:
        write_requests([big], tmp_path / "r.jsonl", endpoint=endpoint, max_line_bytes=1000)
    assert [(p.line, p.rule) for p in caught.value.problems] == [(1, "line_too_large")]
    assert not (tmp_path / "r.jsonl").exists()

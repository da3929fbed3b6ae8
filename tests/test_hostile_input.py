"""Hostile input through the Python API and the CLI: clear errors before any upload, bounded memory,
files written whole with the umask honoured, and the official SDK's habits accepted.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, InputValidationError
from batch_ops.jsonl import validate_file

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[Any]]


def _requests_file(path: Path, n: int = 3) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
                                 "body": {"model": "m", "messages": []}}) + "\n")
    return path


# --- files that are not request files -------------------------------------------------------------


def test_a_huge_sparse_file_is_refused_from_its_size_before_reading(tmp_path: Path) -> None:
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as fh:
        fh.truncate(3 * 1024**3)  # 3 GB of nothing: sparse, costs no disk
    import resource
    import time

    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputValidationError) as caught:
        validate_file(huge, endpoint=CHAT)
    assert caught.value.problems[0].rule == "file_too_large"
    # Refused from the size on disk; only the first 200 MB are scanned, to name the line to split at
    # (before: 37 s and 6.4 GB reading the one 3 GB line).
    assert time.monotonic() - started < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: under 50 MB more


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_a_device_is_not_a_request_file(path: str) -> None:
    with pytest.raises(InputValidationError) as caught:
        validate_file(path, endpoint=CHAT)
    assert caught.value.problems[0].rule in ("not_a_regular_file", "empty_file")
    assert "fix:" in str(caught.value)


def test_a_fifo_is_not_a_request_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputValidationError) as caught:
        validate_file(fifo, endpoint=CHAT)
    assert caught.value.problems[0].rule == "not_a_regular_file"


def test_one_endless_line_is_cut_off_at_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"custom_id": "a", "body": "' + b"x" * (3 * 1024 * 1024) + b'"}\n')
    with pytest.raises(InputValidationError) as caught:
        validate_file(path, endpoint=CHAT, max_bytes=1024 * 1024)
    assert caught.value.problems[0].rule == "file_too_large"


# --- wrong types through the Python API -----------------------------------------------------------


@pytest.mark.parametrize("source", [123, None, {"custom_id": "a"}, b"bytes", 1.5],
                         ids=["int", "none", "dict", "bytes", "float"])
def test_wrong_sources_are_clear_errors_before_any_upload(make_server: MakeServer, source: Any) -> None:
    with make_server() as url, BatchClient(api_key="k", base_url=url) as client:
        with pytest.raises(InputValidationError) as caught:
            client.submit(source, endpoint=CHAT)
        assert caught.value.problems[0].rule == "invalid_source"
        assert client.files.list().data == []


@pytest.mark.parametrize("batch", [123, None, 4.5])
def test_results_of_something_that_is_not_a_batch(batch: Any) -> None:
    with BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1") as client:
        with pytest.raises(InputValidationError) as caught:
            list(client.results(batch))
    assert "batch" in str(caught.value)


@pytest.mark.parametrize("kwargs", [{"poll_interval": "1"}, {"poll_interval": 0}, {"timeout": "10"},
                                    {"timeout": -1}, {"poll_interval": None}])
def test_wait_parameters_are_checked(kwargs: dict[str, Any]) -> None:
    with BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1") as client:
        with pytest.raises(InputValidationError) as caught:
            client.batches.wait("batch_1", **kwargs)
    assert next(iter(kwargs)) in str(caught.value)


# --- the official SDK's habits --------------------------------------------------------------------


def test_the_sdk_constructor_arguments_are_accepted(make_server: MakeServer) -> None:
    with make_server() as url:
        client = BatchClient(api_key="k", base_url=url, max_retries=0, timeout=5)
        assert client.settings.max_retries == 0 and client.settings.timeout == 5
        client.close()


def test_iterating_a_page_yields_its_items(make_server: MakeServer) -> None:
    with make_server() as url, BatchClient(api_key="k", base_url=url) as client:
        for i in range(3):
            client.submit([{"custom_id": f"a{i}", "body": {"model": "m", "messages": []}}], endpoint=CHAT)
        page = client.batches.list(limit=2)
        assert [b.id for b in page] == [b.id for b in page.data] and len(page.data) == 2
        assert all(f.id for f in client.files.list())


# --- files written by jobs and results ------------------------------------------------------------


def test_a_job_refuses_to_write_over_its_input(tmp_path: Path, make_server: MakeServer) -> None:
    src = _requests_file(tmp_path / "in.jsonl")
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    before = src.read_bytes()
    with make_server() as url:
        for output in (src, link):
            proc = subprocess.run([sys.executable, "-m", "batch_ops.cli", "job", str(src), "--endpoint", CHAT,
                                   "--output", str(output), "--base-url", str(url), "--api-key", "k"],
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode != 0
            assert "output" in proc.stderr and "input" in proc.stderr
    assert src.read_bytes() == before


def test_outputs_honour_the_umask_and_leave_no_temp_files(tmp_path: Path) -> None:
    from batch_ops._files import atomic_write

    old = os.umask(0o022)
    try:
        target = tmp_path / "out.jsonl"
        atomic_write(target, [b"x\n"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_temp_files_of_a_killed_writer_are_cleaned_up_by_the_next(tmp_path: Path) -> None:
    from batch_ops._files import atomic_write

    target = tmp_path / "out.jsonl"
    code = ("import os, sys\nfrom batch_ops._files import atomic_write\n"
            "def chunks():\n    yield b'a' * 1000\n    os.kill(os.getpid(), 9)\n"
            f"atomic_write({str(target)!r}, chunks())\n")
    subprocess.run([sys.executable, "-c", code], timeout=60)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out.jsonl"]
    assert leftovers, "the killed writer left its temporary file"
    atomic_write(target, [b"done\n"])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert target.read_bytes() == b"done\n"

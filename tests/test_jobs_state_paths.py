"""A job's state is data anyone with write access to its store can change. A tampered state must not
make a worker upload one of its own files as a batch input (exfiltration), nor write results outside
the job's folder: every path in a loaded state stays inside the job's work folder, checked before
anything is uploaded. And the output is never the input, however either is spelled."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from batch_ops import BatchClient, storage
from batch_ops.errors import InputValidationError
from batch_ops.jobs import BatchJob
from batch_ops.jobs.state import state_path_for, work_dir_for
from batch_ops.jsonl import request_line, write_requests

from .conftest import S3_BUCKET

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]
#: A worker-local file an attacker wants: it even looks like a request file, so it would be accepted.
SECRET = json.dumps({"custom_id": "secret", "method": "POST", "url": CHAT, "body": {
    "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "AWS_SECRET=worker-local-secret"}]}}) + "\n"


def write_input(path: Path, n: int = 10) -> Path:
    write_requests((request_line(f"q{i:03d}", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"hi {i}"}]}, endpoint=CHAT) for i in range(n)), path)
    return path


def uploaded(url: str) -> list[str]:
    """The content of every file uploaded to the server."""
    sdk = openai.OpenAI(api_key="local", base_url=url, max_retries=5)
    return [sdk.files.content(f.id).text for f in sdk.files.list()]


def tamper_local(out: Path, **changes: Any) -> None:
    path = state_path_for(out)
    state = json.loads(path.read_text())
    state["parts"][0].update(changes)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("field", ["worker file", "climbing name", "other scheme", "climbing path"])
def test_a_tampered_local_state_is_refused_before_anything_is_uploaded(
        field: str, make_server: MakeServer, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    secret = tmp_path / "elsewhere" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    out = tmp_path / "job" / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint=CHAT)
    change, param = {
        "worker file": ({"path": str(secret)}, "parts[0].path"),
        "climbing name": ({"name": "r0-../../../../elsewhere/escaped"}, "parts[0].name"),
        "other scheme": ({"path": secret.as_uri()}, "parts[0].path"),
        "climbing path": ({"path": "parts/../../../elsewhere/secret.jsonl"}, "parts[0].path"),
    }[field]
    tamper_local(out, **change)
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(InputValidationError, match="path_outside_job") as caught:
            BatchJob.open(src, output_path=out, endpoint=CHAT).run(client, poll_interval=0.05)
        assert uploaded(url) == []  # refused before any upload
    assert param in str(caught.value) and "fix:" in str(caught.value)
    assert sorted(p.name for p in secret.parent.iterdir()) == ["secret.jsonl"]  # nothing written beside it


def test_a_state_tampered_while_a_job_is_open_is_refused_at_the_next_step(
        make_server: MakeServer, tmp_path: Path) -> None:
    """The state is read again at every step (another worker may have moved the job on): checked each time."""
    src = write_input(tmp_path / "in.jsonl")
    secret = tmp_path / "secret.jsonl"
    secret.write_text(SECRET)
    out = tmp_path / "out.jsonl"
    job = BatchJob.open(src, output_path=out, endpoint=CHAT)
    tamper_local(out, path=str(secret))
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(InputValidationError, match=r"parts\[0\]\.path"):
            job.advance(client)
        assert uploaded(url) == []


def test_a_part_file_that_is_a_symlink_out_of_the_work_folder_is_refused(
        make_server: MakeServer, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    secret = tmp_path / "secret.jsonl"
    secret.write_text(SECRET)
    out = tmp_path / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint=CHAT)
    part = work_dir_for(out) / "parts" / "r0-001.jsonl"
    part.unlink()
    part.symlink_to(secret)
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(InputValidationError, match="symlink"):
            BatchJob.open(src, output_path=out, endpoint=CHAT).advance(client)
        assert uploaded(url) == []


def test_an_older_state_with_absolute_paths_inside_the_work_folder_still_resumes(
        make_server: MakeServer, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint=CHAT)
    tamper_local(out, path=str(work_dir_for(out) / "parts" / "r0-001.jsonl"))  # what older versions wrote
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=out, endpoint=CHAT)
        assert job.state.parts[0].path == "parts/r0-001.jsonl"
        summary = job.run(client, poll_interval=0.05)
    assert summary.succeeded == 10


@pytest.mark.parametrize("field", ["worker file", "climbing name", "other scheme"])
def test_a_tampered_state_on_s3_is_refused_before_anything_is_uploaded(
        field: str, s3: Any, make_server: MakeServer, tmp_path: Path) -> None:
    """The state on object storage names a worker-local file (it would be uploaded as a batch input), a
    part name that climbs out of the folder (results written outside it), or another bucket."""
    base = f"s3://{S3_BUCKET}/jobs"
    s3.put(str(write_input(tmp_path / "in.jsonl")), f"{S3_BUCKET}/jobs/in.jsonl")
    secret = tmp_path / "secret.jsonl"
    secret.write_text(SECRET)
    BatchJob.open(f"{base}/in.jsonl", output_path=f"{base}/out.jsonl", endpoint=CHAT)
    key = f"{S3_BUCKET}/jobs/out.jsonl.state.json"
    s3.invalidate_cache()
    state = json.loads(s3.cat(key))
    state["parts"][0].update({
        "worker file": {"path": str(secret)},
        "climbing name": {"name": "r0-../../../escaped"},
        "other scheme": {"path": f"s3://{S3_BUCKET}/jobs/in.jsonl"},
    }[field])
    s3.pipe(key, json.dumps(state).encode())
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(InputValidationError, match="path_outside_job"):
            BatchJob.open(f"{base}/in.jsonl", output_path=f"{base}/out.jsonl", endpoint=CHAT).run(
                client, poll_interval=0.05)
        assert uploaded(url) == []
    s3.invalidate_cache()
    assert not any("escaped" in p for p in s3.find(S3_BUCKET))


def test_a_state_that_is_not_a_job_state_is_a_clear_error(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    BatchJob.open(src, output_path=out, endpoint=CHAT)
    tamper_local(out, requests="many")
    with pytest.raises(InputValidationError, match=r"parts\.0\.requests: invalid_state"):
        BatchJob.open(src, output_path=out, endpoint=CHAT)


# -- the output is never the input ------------------------------------------------------------------

SPELLINGS: dict[str, Callable[[Path], Any]] = {
    "local://": lambda src: f"local://{src}",
    "file://": lambda src: src.as_uri(),
    "relative": lambda src: "input.jsonl",
    "./x/../": lambda src: "./x/../input.jsonl",
    "symlink": lambda src: "link.jsonl",
    "hard link": lambda src: "hard.jsonl",
    "LocalFileSystem": lambda src: storage.Location(LocalFileSystem(), str(src)),
    "local:// relative": lambda src: "local://input.jsonl",
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_the_output_is_never_the_input_however_spelled(
        spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = write_input(tmp_path / "input.jsonl")
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    out = SPELLINGS[spelling](src)
    with pytest.raises(InputValidationError, match="output_is_input"):
        BatchJob.open(src, output_path=out, endpoint=CHAT)
    with pytest.raises(InputValidationError, match="output_is_input"):  # and the other way round
        BatchJob.open(out, output_path=src, endpoint=CHAT)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.jsonl", "input.jsonl", "link.jsonl"]  # no state


def test_the_output_is_never_the_input_on_object_storage(s3: Any, tmp_path: Path) -> None:
    s3.put(str(write_input(tmp_path / "in.jsonl")), f"{S3_BUCKET}/jobs/in.jsonl")
    for out in (f"s3a://{S3_BUCKET}/jobs/in.jsonl", f"s3://{S3_BUCKET}/jobs/x/../in.jsonl",
                storage.Location(s3, f"{S3_BUCKET}/jobs/in.jsonl")):
        with pytest.raises(InputValidationError, match="output_is_input"):
            BatchJob.open(f"s3://{S3_BUCKET}/jobs/in.jsonl", output_path=out, endpoint=CHAT)
    memory = MemoryFileSystem()
    memory.pipe("/jobs-paths/in.jsonl", (tmp_path / "in.jsonl").read_bytes())
    with pytest.raises(InputValidationError, match="output_is_input"):
        BatchJob.open("memory://jobs-paths/in.jsonl", output_path=storage.Location(memory, "/jobs-paths/in.jsonl"),
                      endpoint=CHAT)
    s3.invalidate_cache()
    assert s3.find(f"{S3_BUCKET}/jobs") == [f"{S3_BUCKET}/jobs/in.jsonl"]


def test_the_input_is_not_one_of_the_jobs_own_files(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    src = write_input(tmp_path / "out.jsonl.work" / "parts" / "mine.jsonl")
    with pytest.raises(InputValidationError, match="input_is_job_file"):
        BatchJob.open(src, output_path=out, endpoint=CHAT)
    assert src.exists()

"""Files on object storage: S3 (moto's server, real HTTP on loopback) and fsspec's memory file system.

Inputs are read from, and downloads, eval requests, reports and the history written to, an
``s3://`` URL, an ``ObjectStoragePath`` or a ``UPath`` the way they are from a local path; a
missing object is bad input (nothing uploaded); a failed download puts no object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from batch_ops import AsyncBatchClient, BatchClient, InputValidationError, storage
from batch_ops.errors import NotFoundError, StorageError
from batch_ops.evals import prepare_requests, read_history, score_and_report
from batch_ops.server import ServerURL, serve_in_background

from .conftest import S3_BUCKET

KEY = "sk-storage-test-8812"
BUCKET = S3_BUCKET


@pytest.fixture(scope="module")
def api() -> Iterator[ServerURL]:
    with serve_in_background(api_key=KEY, request_latency=0.01) as url:
        yield url


def _requests(n: int) -> str:
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": "m", "input": f"text {i}"}}) + "\n" for i in range(n))


def test_submit_from_s3_and_download_to_s3(s3: Any, api: ServerURL) -> None:
    s3.pipe(f"{BUCKET}/in/requests.jsonl", _requests(5).encode())
    with BatchClient(api_key=KEY, base_url=api) as client:
        batch = client.batches.wait(client.submit(f"s3://{BUCKET}/in/requests.jsonl", endpoint="/v1/embeddings",
                                          idempotency_key="s3-run-1").id, poll_interval=0.05, timeout=60)
        assert batch.request_counts.completed == 5
        target = f"s3://{BUCKET}/out/run 1/output.jsonl"
        assert client.files.download(batch.output_file_id, target) == target
        lines = [json.loads(x) for x in s3.cat(f"{BUCKET}/out/run 1/output.jsonl").splitlines()]
        assert sorted(x["custom_id"] for x in lines) == [f"r{i}" for i in range(5)]
        # The chain is found again from the same URL: no second batch, nothing uploaded twice.
        again = client.submit(f"s3://{BUCKET}/in/requests.jsonl", endpoint="/v1/embeddings",
                              idempotency_key="s3-run-1")
        assert again.id == batch.id
        results = list(client.results(batch, input_path=f"s3://{BUCKET}/in/requests.jsonl"))
        assert [r.custom_id for r in results] == [f"r{i}" for i in range(5)]


async def test_async_client_reads_and_writes_s3(s3: Any, api: ServerURL) -> None:
    s3.pipe(f"{BUCKET}/in/a.jsonl", _requests(3).encode())
    async with AsyncBatchClient(api_key=KEY, base_url=api) as client:
        batch = await client.submit(f"s3://{BUCKET}/in/a.jsonl", endpoint="/v1/embeddings")
        batch = await client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
        uploaded = await client.files.upload(f"s3://{BUCKET}/in/a.jsonl")
        assert uploaded.bytes == len(_requests(3))
        await client.files.download(batch.output_file_id, f"s3://{BUCKET}/out/a.jsonl")
    assert len(s3.cat(f"{BUCKET}/out/a.jsonl").splitlines()) == 3


def test_missing_object_is_bad_input_and_nothing_is_uploaded(s3: Any, api: ServerURL) -> None:
    with BatchClient(api_key=KEY, base_url=api) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError) as err:
            client.submit(f"s3://{BUCKET}/nowhere/requests.jsonl", endpoint="/v1/embeddings")
        assert "file_not_found" in str(err.value) and f"s3://{BUCKET}/nowhere/requests.jsonl" in str(err.value)
        assert len(client.files.list().data) == before


def test_invalid_input_on_s3_is_refused_before_upload(s3: Any, api: ServerURL) -> None:
    s3.pipe(f"{BUCKET}/in/bad.jsonl", b'{"custom_id": "a", "method": "POST"}\n')
    with BatchClient(api_key=KEY, base_url=api) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError):
            client.submit(f"s3://{BUCKET}/in/bad.jsonl", endpoint="/v1/embeddings")
        assert len(client.files.list().data) == before


def test_a_failed_download_puts_no_object(s3: Any, api: ServerURL) -> None:
    with BatchClient(api_key=KEY, base_url=api) as client, pytest.raises(NotFoundError):
        client.files.download("file-nope", f"s3://{BUCKET}/out/never.jsonl")
    assert not s3.exists(f"{BUCKET}/out/never.jsonl")


def test_unknown_protocol_and_wrong_types_are_clear_errors() -> None:
    with pytest.raises(InputValidationError, match="invalid_path"):
        storage.location("nosuchfs://bucket/x.jsonl")
    with BatchClient(api_key=KEY, base_url="http://127.0.0.1:9/v1") as client, \
            pytest.raises(InputValidationError, match="invalid_argument"):
        client.files.download("file-1", 123)  # type: ignore[arg-type]


def test_path_objects_carry_their_file_system(s3: Any, api: ServerURL, tmp_path: Path) -> None:
    """A ``UPath`` (its own file system) and Airflow's ``ObjectStoragePath`` work as sources and targets.

    Airflow registers ``s3://`` for ``ObjectStoragePath`` through the Amazon provider, which this
    environment does not install; its local form goes through the same code path (a path object
    with a protocol), and ``UPath`` covers a remote one.
    """
    from airflow.sdk import ObjectStoragePath
    from upath import UPath

    (tmp_path / "p.jsonl").write_text(_requests(2))
    s3.pipe(f"{BUCKET}/in/u.jsonl", _requests(3).encode())
    with BatchClient(api_key=KEY, base_url=api) as client:
        local = client.batches.wait(client.submit(ObjectStoragePath(f"file://{tmp_path}/p.jsonl"),
                                                  endpoint="/v1/embeddings").id, poll_interval=0.05, timeout=60)
        remote = client.batches.wait(client.submit(UPath(f"s3://{BUCKET}/in/u.jsonl"), endpoint="/v1/embeddings").id,
                                     poll_interval=0.05, timeout=60)
        client.files.download(remote.output_file_id, UPath(f"s3://{BUCKET}/out/u.jsonl"))
        client.files.download(local.output_file_id, ObjectStoragePath(f"file://{tmp_path}/out.jsonl"))
    assert local.request_counts.completed == 2 and remote.request_counts.completed == 3
    assert len(s3.cat(f"{BUCKET}/out/u.jsonl").splitlines()) == 3
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_eval_pipeline_keeps_requests_reports_and_history_on_s3(s3: Any, api: ServerURL, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything written locally by mistake would land here
    base = f"s3://{BUCKET}/eval"
    for run_id in ("run-1", "run-2"):
        requests = prepare_requests(work_dir=f"{base}/work", run_id=run_id)
        assert requests == f"{base}/work/{run_id}/requests.jsonl"
        with BatchClient(api_key=KEY, base_url=api) as client:
            batch = client.batches.wait(client.submit(requests, endpoint="/v1/chat/completions").id,
                                poll_interval=0.05, timeout=60)
            output = client.files.download(batch.output_file_id, f"{base}/work/{run_id}/output.jsonl")
        summary = score_and_report(request_path=requests, output_path=output, error_path=None,
                                   report_dir=f"{base}/reports", run_id=run_id, pipeline="test", max_drop=1.0)
        assert summary["report"]["markdown"] == f"{base}/reports/runs/test-{run_id}/report.md"
    history = read_history(f"{base}/reports")
    assert [h["run_id"] for h in history] == ["run-1", "run-2"]
    assert s3.exists(f"{BUCKET}/eval/reports/latest.md") and len(s3.ls(f"{BUCKET}/eval/reports/history")) == 2
    assert list(tmp_path.iterdir()) == []


def test_runs_that_finish_together_keep_every_history_record(s3: Any, api: ServerURL) -> None:
    """Six runs score at the same moment into one history on S3: six records (each run writes its own
    object; a shared history file rewritten by each lost records when runs overlapped)."""
    from concurrent.futures import ThreadPoolExecutor

    base = f"s3://{BUCKET}/race"
    requests = prepare_requests(work_dir=f"{base}/work", run_id="shared")
    with BatchClient(api_key=KEY, base_url=api) as client:
        batch = client.batches.wait(client.submit(requests, endpoint="/v1/chat/completions").id,
                                    poll_interval=0.05, timeout=60)
        output = client.files.download(batch.output_file_id, f"{base}/work/shared/output.jsonl")

    def score(i: int) -> None:
        score_and_report(request_path=requests, output_path=output, error_path=None, report_dir=f"{base}/reports",
                         run_id=f"run-{i}", pipeline="race", max_drop=1.0)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(score, range(6)))
    assert sorted(h["run_id"] for h in read_history(f"{base}/reports")) == [f"run-{i}" for i in range(6)]


def test_memory_file_system_and_location() -> None:
    fs = fsspec.filesystem("memory")
    where = storage.Location(fs, "/bo-test/x.jsonl")
    storage.write_text(where, "hello\n")
    assert storage.read_text("memory://bo-test/x.jsonl") == "hello\n"
    assert storage.read_text("memory://bo-test/absent", default="none") == "none"
    assert storage.is_remote(where) and not storage.is_remote(Path(os.getcwd()))
    assert storage.display("s3://user:secret@bucket/key") == "s3://bucket/key"


def test_a_mistyped_bucket_is_an_error_not_a_new_bucket(s3: Any) -> None:
    """Writing under a bucket that does not exist fails with StorageError; it used to create the bucket
    (the parent folder was made with the file system's makedirs, which on S3 makes buckets)."""
    with pytest.raises(StorageError, match="no-such-bucket-4417"):
        storage.write_text("s3://no-such-bucket-4417/reports/latest.md", "# report\n")
    assert not s3.exists("no-such-bucket-4417")

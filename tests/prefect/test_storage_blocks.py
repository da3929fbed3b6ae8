"""Prefect file system blocks as the place of request files and downloads (moto's S3 over loopback).

A ``RemoteFileSystem`` block whose settings carry the endpoint and keys (nothing in the
environment), and a ``LocalFileSystem`` block: ``run_batch(input_path=..., storage=block)`` reads
the requests from it, ``download_batch_file(..., storage=block)`` writes the output into it.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from prefect import flow
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from batch_ops.prefect import OpenAIBatchCredentials, download_batch_file, run_batch
from batch_ops.server import ServerURL

from .conftest import SECRET, chat_requests

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def s3_settings(s3_endpoint: str) -> dict[str, object]:
    settings = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **settings)
    if not fs.exists("blocks-test"):
        fs.mkdir("blocks-test")
    return settings


def _lines(n: int) -> bytes:
    lines = [{**r, "method": "POST", "url": "/v1/chat/completions"} for r in chat_requests(n, prefix="s")]
    return "".join(json.dumps(r) + "\n" for r in lines).encode()


@flow
async def through_block(block: object, credentials: OpenAIBatchCredentials) -> tuple[object, int]:
    result = await run_batch(input_path="in/requests.jsonl", endpoint="/v1/chat/completions",
                             credentials=credentials, storage=block, poll_interval=0.05)
    where = await download_batch_file(result.output_file_id, "out/output.jsonl", credentials=credentials,
                                      storage=block)
    return where, result.request_counts.completed


async def test_remote_file_system_block(s3_settings: dict[str, object], batch_server: ServerURL) -> None:
    fs = fsspec.filesystem("s3", **s3_settings)
    fs.pipe("blocks-test/eval/in/requests.jsonl", _lines(4))
    block = RemoteFileSystem(basepath="s3://blocks-test/eval", settings=s3_settings)
    where, completed = await through_block(block, OpenAIBatchCredentials(api_key=SECRET, base_url=batch_server))
    assert str(where) == "s3://blocks-test/eval/out/output.jsonl" and completed == 4
    fs.invalidate_cache()
    assert len(fs.cat("blocks-test/eval/out/output.jsonl").splitlines()) == 4


async def test_local_file_system_block(tmp_path: Path, batch_server: ServerURL) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "requests.jsonl").write_bytes(_lines(3))
    block = LocalFileSystem(basepath=str(tmp_path))
    where, completed = await through_block(block, OpenAIBatchCredentials(api_key=SECRET, base_url=batch_server))
    assert Path(where) == tmp_path / "out" / "output.jsonl" and completed == 3
    assert len((tmp_path / "out" / "output.jsonl").read_text().splitlines()) == 3

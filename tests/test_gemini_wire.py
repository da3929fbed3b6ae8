"""The local server's Gemini Batch Mode, judged by Google's own ``google-genai`` SDK.

``genai.Client(api_key=..., http_options={"base_url": <server root>})`` runs its batch calls end to
end against ``serve_in_background()``: the resumable upload, create from a file and inline, get,
list (paged), cancel, delete and the download of the responses file. Plain HTTP checks the parts
the SDK does not show: Google's error envelope, the credentials, the faults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors

from batch_ops.server.background import ServerURL, serve_in_background

KEY = "gemini-local-key"
MODEL = "gemini-2.5-flash"


def _root(url: ServerURL) -> str:
    return str(url).removesuffix("/v1")


def _client(url: ServerURL, key: str = KEY, api_version: str | None = None) -> genai.Client:
    """The SDK at the local server: its default API version (``v1`` in 3.6.1), or ``api_version``."""
    options: dict[str, Any] = {"base_url": _root(url) + "/"}
    if api_version:
        options["api_version"] = api_version
    return genai.Client(api_key=key, http_options=options)


def _request(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "generation_config": {"max_output_tokens": 64}}


def _write_requests(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"key": f"q-{i}", "request": _request(f"question {i}")}) + "\n"
                            for i in range(n)))
    return path


def _wait(client: genai.Client, name: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state}"
        time.sleep(0.1)


@pytest.fixture
def server() -> Iterator[ServerURL]:
    with serve_in_background(api_key=KEY, seed=1) as url:
        yield url


@pytest.mark.parametrize("api_version", [None, "v1beta"])
def test_sdk_file_batch_end_to_end(server: ServerURL, tmp_path: Path, api_version: str | None) -> None:
    client = _client(server, api_version=api_version)
    uploaded = client.files.upload(file=_write_requests(tmp_path / "in.jsonl", 5),
                                   config={"mime_type": "jsonl", "display_name": "nightly"})
    assert uploaded.name and uploaded.name.startswith("files/")
    assert uploaded.size_bytes == (tmp_path / "in.jsonl").stat().st_size
    assert client.files.get(name=uploaded.name).display_name == "nightly"

    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "nightly-1"})
    assert job.name and job.name.startswith("batches/")
    assert job.display_name == "nightly-1" and job.model == f"models/{MODEL}"
    assert job.state is not None and job.state.name in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

    done = _wait(client, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    assert done.create_time is not None and done.end_time is not None
    assert done.dest is not None and done.dest.file_name and done.dest.file_name.startswith("files/")
    lines = [json.loads(x) for x in client.files.download(file=done.dest.file_name).decode().splitlines()]
    assert sorted(line["key"] for line in lines) == [f"q-{i}" for i in range(5)]
    first = next(line for line in lines if line["key"] == "q-3")
    assert first["response"]["candidates"][0]["content"]["parts"][0]["text"] == "question 3"
    assert first["response"]["usageMetadata"]["totalTokenCount"] > 0
    # The SDK reads a responses line as its own type.
    parsed = genai.types.GenerateContentResponse.model_validate(first["response"])
    assert parsed.text == "question 3"


def test_sdk_inline_batch_keeps_order_and_metadata(server: ServerURL) -> None:
    client = _client(server)
    src = [{"contents": [{"role": "user", "parts": [{"text": f"inline {i}"}]}], "metadata": {"key": f"k{i}"}}
           for i in range(4)]
    job = client.batches.create(model=MODEL, src=src, config={"display_name": "inline"})
    done = _wait(client, str(job.name))
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    assert done.dest is not None and done.dest.inlined_responses is not None
    answers = done.dest.inlined_responses
    assert [a.metadata for a in answers] == [{"key": f"k{i}"} for i in range(4)]
    assert [a.response.text for a in answers if a.response] == [f"inline {i}" for i in range(4)]


def test_sdk_list_pages_cancel_and_delete(tmp_path: Path) -> None:
    with serve_in_background(api_key=KEY, request_latency=0.5, max_running=1) as url:
        client = _client(url)
        uploaded = client.files.upload(file=_write_requests(tmp_path / "in.jsonl", 3), config={"mime_type": "jsonl"})
        jobs = [client.batches.create(model=MODEL, src=str(uploaded.name), config={"display_name": f"b{i}"})
                for i in range(3)]
        listed = list(client.batches.list(config={"page_size": 2}))
        assert [j.name for j in listed] == [j.name for j in reversed(jobs)]  # newest first, over two pages
        raw = httpx.get(f"{_root(url)}/v1beta/batches", params={"pageSize": 2}, headers={"x-goog-api-key": KEY})
        assert raw.status_code == 200 and "nextPageToken" in raw.json() and len(raw.json()["operations"]) == 2

        client.batches.cancel(name=str(jobs[-1].name))
        assert _wait(client, str(jobs[-1].name)).state.name == "JOB_STATE_CANCELLED"
        client.batches.delete(name=str(jobs[-1].name))
        with pytest.raises(genai_errors.ClientError) as gone:
            client.batches.get(name=str(jobs[-1].name))
        assert gone.value.code == 404
        assert str(jobs[-1].name) not in [j.name for j in client.batches.list()]


def test_google_error_envelope_and_credentials(server: ServerURL) -> None:
    root = _root(server)
    missing = httpx.get(f"{root}/v1beta/batches/batch_nope", headers={"x-goog-api-key": KEY})
    assert missing.status_code == 404
    assert missing.json()["error"] == {"code": 404, "message": "Batch batches/batch_nope not found.",
                                       "status": "NOT_FOUND"}
    assert httpx.get(f"{root}/v1beta/batches", params={"key": KEY}).status_code == 200  # ?key= works too
    no_key = httpx.get(f"{root}/v1beta/batches")
    assert no_key.status_code == 403 and no_key.json()["error"]["status"] == "PERMISSION_DENIED"
    wrong = httpx.get(f"{root}/v1beta/batches", headers={"x-goog-api-key": "wrong"})
    assert wrong.status_code == 400 and "wrong" not in wrong.text
    wrong_client = _client(server, key="wrong")
    with pytest.raises(genai_errors.ClientError):
        wrong_client.batches.list()
    # Only generated files can be read back (as the SDK says of the real API).
    client = _client(server)
    bad = client.batches.create
    with pytest.raises(genai_errors.ClientError) as refused:
        bad(model=MODEL, src="files/file-nope", config={"display_name": "x"})
    assert refused.value.code == 403


def test_create_refuses_a_line_that_is_not_a_gemini_request(server: ServerURL, tmp_path: Path) -> None:
    client = _client(server)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"key": "a", "request": _request("x")}) + "\n" + json.dumps({"request": {}}) + "\n")
    uploaded = client.files.upload(file=path, config={"mime_type": "jsonl"})
    with pytest.raises(genai_errors.ClientError) as refused:
        client.batches.create(model=MODEL, src=str(uploaded.name), config={"display_name": "bad"})
    assert refused.value.code == 400 and "Line 2" in str(refused.value.message)


def test_faults_apply_to_gemini_batches(tmp_path: Path) -> None:
    """--fail-requests fails lines (written as Google errors); --expire-after expires the batch;
    --create-failures answers 503 and creates nothing."""
    with serve_in_background(api_key=KEY, fail_requests=0.5, seed=3, create_failures=1) as url:
        client = _client(url)
        uploaded = client.files.upload(file=_write_requests(tmp_path / "in.jsonl", 20), config={"mime_type": "jsonl"})
        with pytest.raises(genai_errors.ServerError) as unavailable:
            client.batches.create(model=MODEL, src=str(uploaded.name), config={"display_name": "f"})
        assert unavailable.value.code == 503
        assert list(client.batches.list()) == []
        job = client.batches.create(model=MODEL, src=str(uploaded.name), config={"display_name": "f"})
        done = _wait(client, str(job.name))
        assert done.dest is not None and done.dest.file_name
        lines = [json.loads(x) for x in client.files.download(file=done.dest.file_name).decode().splitlines()]
        errors = [line for line in lines if "error" in line]
        assert 0 < len(errors) < 20 and errors[0]["error"]["code"] == 500 and errors[0]["error"]["status"] == "INTERNAL"
        stats = httpx.get(f"{_root(url)}/v1beta/{job.name}", headers={"x-goog-api-key": KEY}).json()
        assert stats["metadata"]["batchStats"]["failedRequestCount"] == str(len(errors))
    with serve_in_background(api_key=KEY, expire_after=0.5, request_latency=0.5) as url:
        client = _client(url)
        uploaded = client.files.upload(file=_write_requests(tmp_path / "in.jsonl", 20), config={"mime_type": "jsonl"})
        job = client.batches.create(model=MODEL, src=str(uploaded.name), config={"display_name": "late"})
        assert _wait(client, str(job.name)).state.name == "JOB_STATE_EXPIRED"


def test_chunked_resumable_upload(server: ServerURL) -> None:
    """Several ``upload`` chunks at their offsets, then ``finalize``; a wrong offset is refused."""
    root, headers = _root(server), {"x-goog-api-key": KEY}
    body = b"".join(json.dumps({"key": f"c{i}", "request": _request("x" * 100)}).encode() + b"\n" for i in range(50))
    start = httpx.post(f"{root}/upload/v1beta/files", json={"file": {"displayName": "chunks"}},
                       headers={**headers, "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                                "X-Goog-Upload-Header-Content-Length": str(len(body))})
    upload_url = start.headers["x-goog-upload-url"]
    half = len(body) // 2
    first = httpx.post(upload_url, content=body[:half],
                       headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"})
    assert first.headers["x-goog-upload-status"] == "active"
    wrong = httpx.post(upload_url, content=body[half:],
                       headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "1"})
    assert wrong.status_code == 400
    last = httpx.post(upload_url, content=body[half:],
                      headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": str(half)})
    assert last.headers["x-goog-upload-status"] == "final"
    assert last.json()["file"]["sizeBytes"] == str(len(body))


def test_an_inline_create_over_20_mb_is_refused_as_it_arrives(server: ServerURL) -> None:
    """Chunked (no length declared): counted as it arrives and refused past 20 MB, never held whole."""
    def body() -> Iterator[bytes]:
        yield b'{"batch": {"displayName": "big", "inputConfig": {"requests": {"requests": ['
        for _ in range(22):
            yield b'{"request": {"contents": [{"parts": [{"text": "' + b"x" * (1 << 20) + b'"}]}]}},'
        yield b"{}]}}}}"

    reply = httpx.post(f"{_root(server)}/v1beta/models/{MODEL}:batchGenerateContent", content=body(),
                       headers={"x-goog-api-key": KEY}, timeout=30)
    assert reply.status_code == 400 and "exceeds the limit" in reply.json()["error"]["message"]

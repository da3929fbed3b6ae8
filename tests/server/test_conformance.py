"""Conformance: every answer of the local server, over every Files and Batches operation, against the
official schema (``tests/data/openai_files_batches.json``) and the official SDK's types.

The schema is applied strictly where it is strict: required fields present and of the right type,
enums, ``first_id``/``last_id`` strings. Optional fields may be null (the API sends null for
``output_file_id`` and friends until a batch has them; the SDK's models say so, the schema does
not). Error answers follow ``ErrorResponse``. Our own client parses every answer too.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types import Batch as SDKBatch
from openai.types import FileDeleted as SDKFileDeleted
from openai.types import FileObject as SDKFileObject

from batch_ops.models import Batch, BatchList, FileList, FileObject
from batch_ops.server.hostile import AZURE_BATCH

SPEC = json.loads((Path(__file__).resolve().parents[1] / "data" / "openai_files_batches.json").read_text())
MakeServer = Callable[..., AbstractContextManager[Any]]
CHAT = "/v1/chat/completions"


def _nullable_optionals(schema: Any) -> Any:
    """The schema with every optional property also allowed to be null (what the API really sends)."""
    if isinstance(schema, dict):
        out = {k: _nullable_optionals(v) for k, v in schema.items()}
        props = out.get("properties")
        if isinstance(props, dict):
            required = set(out.get("required", []))
            out["properties"] = {name: (sub if name in required else {"anyOf": [sub, {"type": "null"}]})
                                 for name, sub in props.items()}
        return out
    if isinstance(schema, list):
        return [_nullable_optionals(x) for x in schema]
    return schema


def _validator(ref: str) -> jsonschema.protocols.Validator:
    root = {"components": _nullable_optionals(copy.deepcopy(SPEC["components"])), "$ref": ref}
    cls = jsonschema.validators.validator_for({})
    return cls(root)


def _response_ref(method: str, path: str) -> str:
    op = SPEC["paths"][path][method.lower()]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    return str(schema["$ref"])


def _check(method: str, path: str, answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text
    data = answer.json()
    errors = sorted(_validator(_response_ref(method, path)).iter_errors(data), key=str)
    assert not errors, f"{method} {path}: " + "; ".join(e.message for e in errors[:5])
    return dict(data)


def _check_error(answer: httpx.Response) -> None:
    assert answer.status_code >= 400
    errors = list(_validator("#/components/schemas/ErrorResponse").iter_errors(answer.json()))
    assert not errors, [e.message for e in errors]


@pytest.fixture
def api(make_server: MakeServer) -> Iterator[httpx.Client]:
    # One request at a time, 50 ms each: a 40-request batch is still running when it is cancelled.
    with make_server(concurrency=1, request_latency=0.05) as url, \
            httpx.Client(base_url=str(url), headers={"Authorization": "Bearer local"}, timeout=30) as client:
        yield client


def _upload(api: httpx.Client, tmp_path: Path, n: int = 3, **form: str) -> dict[str, Any]:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": CHAT,
                                        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
                            + "\n" for i in range(n)))
    with path.open("rb") as fh:
        answer = api.post("/files", data={"purpose": "batch", **form}, files={"file": ("in.jsonl", fh)})
    return _check("POST", "/files", answer)


def _wait_done(api: httpx.Client, batch_id: str) -> dict[str, Any]:
    import time

    for _ in range(200):
        batch = _check("GET", "/batches/{batch_id}", api.get(f"/batches/{batch_id}"))
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.05)
    raise AssertionError("the batch did not end")


def test_every_answer_of_every_operation_matches_the_schema_and_the_sdk(api: httpx.Client, tmp_path: Path) -> None:
    # Empty lists first: first_id/last_id are strings where present (and required for files).
    _check("GET", "/files", api.get("/files"))
    _check("GET", "/batches", api.get("/batches"))
    empty = api.get("/batches", params={"after": ""})  # an empty cursor is no cursor
    _check("GET", "/batches", empty)

    uploaded = _upload(api, tmp_path)
    SDKFileObject.model_validate(uploaded, strict=True)
    _check("GET", "/files/{file_id}", api.get(f"/files/{uploaded['id']}"))
    files = _check("GET", "/files", api.get("/files", params={"purpose": "batch", "order": "asc", "limit": 5}))
    assert files["first_id"] == uploaded["id"]

    created = _check("POST", "/batches", api.post("/batches", json={
        "input_file_id": uploaded["id"], "endpoint": CHAT, "completion_window": "24h",
        "metadata": {"run": "conformance"}, "output_expires_after": {"anchor": "created_at", "seconds": 3600}}))
    done = _wait_done(api, created["id"])
    for answer in (created, done):
        SDKBatch.model_validate(answer, strict=True)
        Batch.model_validate(answer)
    listed = _check("GET", "/batches", api.get("/batches", params={"limit": 1}))
    BatchList.model_validate(listed)
    assert listed["first_id"] == listed["last_id"] == created["id"]

    content = api.get(f"/files/{done['output_file_id']}/content")
    assert content.status_code == 200 and all(json.loads(line)["custom_id"] for line in content.text.splitlines())

    other = _upload(api, tmp_path, n=40)
    second = _check("POST", "/batches", api.post("/batches", json={
        "input_file_id": other["id"], "endpoint": CHAT, "completion_window": "24h"}))
    cancelled = _check("POST", "/batches/{batch_id}/cancel", api.post(f"/batches/{second['id']}/cancel"))
    SDKBatch.model_validate(cancelled, strict=True)

    deleted = _check("DELETE", "/files/{file_id}", api.delete(f"/files/{other['id']}"))
    SDKFileDeleted.model_validate(deleted, strict=True)
    FileList.model_validate(_check("GET", "/files", api.get("/files")))
    FileObject.model_validate(uploaded)


def test_error_answers_follow_the_error_schema(api: httpx.Client) -> None:
    for answer in (api.get("/batches/batch_nope"), api.get("/files/file-nope"), api.delete("/files/file-nope"),
                   api.post("/batches", json={"endpoint": CHAT}), api.get("/batches", params={"limit": 1000}),
                   api.post("/batches/batch_nope/cancel")):
        _check_error(answer)


def test_output_expires_after_needs_its_anchor(api: httpx.Client, tmp_path: Path) -> None:
    uploaded = _upload(api, tmp_path)
    answer = api.post("/batches", json={"input_file_id": uploaded["id"], "endpoint": CHAT,
                                        "completion_window": "24h", "output_expires_after": {"seconds": 3600}})
    assert answer.status_code == 400
    _check_error(answer)
    assert "anchor" in answer.json()["error"]["message"]


def test_upload_expires_after_sets_expires_at(make_server: MakeServer, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m"}}) + "\n")
    with make_server() as url, openai.OpenAI(api_key="local", base_url=str(url)) as sdk:
        with path.open("rb") as fh:
            f = sdk.files.create(file=fh, purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200})
        assert f.expires_at == f.created_at + 7200
        with path.open("rb") as fh, pytest.raises(openai.BadRequestError):
            sdk.files.create(file=fh, purpose="batch", expires_after={"anchor": "created_at", "seconds": 5})


def test_an_upload_over_200_mb_is_refused_before_it_is_stored(make_server: MakeServer) -> None:
    with make_server() as url:
        host, port = str(url).split("://", 1)[1].split("/", 1)[0].split(":")
        head = ("POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer local\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 262144000\r\n\r\n")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + b"--b\r\n")  # a 250 MB body announced, a few bytes sent
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert status == 400 and body["error"]["code"] == "file_too_large"
        with openai.OpenAI(api_key="local", base_url=str(url)) as sdk:
            assert list(sdk.files.list()) == []


def test_our_client_reads_azures_documented_batch() -> None:
    batch = Batch.model_validate(AZURE_BATCH)
    assert batch.endpoint is None and batch.request_counts.total == 0 and batch.status.value == "validating"
    # ...and the official SDK agrees that it is a batch, but for the fields Azure leaves null or out.
    assert AZURE_BATCH["object"] == SDKBatch.model_construct(**AZURE_BATCH).object

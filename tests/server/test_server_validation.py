"""Failed batches (one per validation code) and the 400/401/404 answers, as the real API gives them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def _line(cid: str, *, url: str = CHAT, model: str = "gpt-4o-mini") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


_CASES: dict[str, tuple[list[str], int | None]] = {
    # code: (file lines, line the error names)
    "invalid_json_line": ([_line("a"), '{"custom_id": "b", "method": "POST",'], 2),
    "duplicate_custom_id": ([_line("a"), _line("b"), _line("a")], 3),
    "url_mismatch": ([_line("a"), _line("b", url=EMB)], 2),
    "model_mismatch": ([_line("a"), _line("b", model="gpt-4o")], 2),
}


@pytest.mark.parametrize("code", sorted(_CASES))
def test_invalid_lines_fail_the_batch(server_url: str, kit: Any, code: str) -> None:
    lines, line_no = _CASES[code]
    client = kit.sdk(server_url)
    done = kit.wait(client, kit.submit(client, kit.write(lines)).id)
    assert done.status == "failed" and done.failed_at is not None and done.in_progress_at is None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.object == "list"
    found = {(e.code, e.line) for e in done.errors.data}
    assert (code, line_no) in found, found
    assert all(e.message for e in done.errors.data)


def test_empty_file_fails(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    path = kit.tmp / "empty.jsonl"
    path.write_bytes(b"")
    done = kit.wait(client, kit.submit(client, path).id)
    assert done.status == "failed" and [e.code for e in done.errors.data] == ["empty_file"]


def test_too_many_tasks_fails(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    line = '{"custom_id":"%d","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}\n'
    path = kit.tmp / "big.jsonl"
    path.write_text("".join(line % i for i in range(50_001)))
    done = kit.wait(client, kit.submit(client, path, endpoint=EMB).id)
    assert done.status == "failed" and "too_many_tasks" in [e.code for e in done.errors.data]
    assert done.request_counts.total == 0


def test_token_limit_failures_fail_the_first_batches(make_server: Any, kit: Any) -> None:
    with make_server(token_limit_failures=1) as url:
        client = kit.sdk(url)
        src = kit.chat_file(2)
        first = kit.wait(client, kit.submit(client, src).id)
        assert first.status == "failed"
        [error] = first.errors.data
        assert error.code == "token_limit_exceeded" and error.line is None
        assert error.message.startswith("Enqueued token limit reached for gpt-4o-mini")
        assert kit.wait(client, kit.submit(client, src).id).status == "completed"  # retry later works


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/chat"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after.seconds"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_invalid_create_body_is_400(server_url: str, kit: Any, change: dict[str, Any], param: str) -> None:
    client = kit.sdk(server_url)
    uploaded = client.files.create(file=kit.chat_file(1).open("rb"), purpose="batch")
    body = {"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h", **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/batches", body=body, cast_to=httpx.Response)
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]
    assert all(b.input_file_id != uploaded.id for b in client.batches.list(limit=100).data)


def test_input_file_must_exist_and_be_a_batch_file(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    user_file = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(input_file_id=user_file.id, endpoint=CHAT, completion_window="24h")


def test_upload_rules(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        client.files.create(file=("in.txt", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"  # type: ignore[index]
    answer = httpx.post(server_url + "/files", data={"purpose": "batch"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"


def test_unknown_ids_are_404_in_the_envelope(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    for call in (
        lambda: client.batches.retrieve("batch_nope"),
        lambda: client.batches.cancel("batch_nope"),
        lambda: client.files.retrieve("file-nope"),
        lambda: client.files.delete("file-nope"),
        lambda: client.files.content("file-nope"),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert set(info.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    answer = httpx.get(server_url + "/nothing/here")
    assert answer.status_code == 404 and answer.json()["error"]["message"] == "Invalid URL (GET /v1/nothing/here)"
    bad_json = httpx.post(server_url + "/batches", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert httpx.get(server_url + "/batches", params={"after": "batch_nope"}).status_code == 400


def test_api_key_is_enforced_when_set(make_server: Any, kit: Any) -> None:
    with make_server(api_key="sk-right") as url:
        assert "sk-right" not in url.options.to_argv()  # never on the command line
        with pytest.raises(openai.AuthenticationError) as info:
            kit.sdk(url, key="sk-wrong").batches.list()
        assert info.value.code == "invalid_api_key"
        assert "sk-right" not in str(info.value.body) and "sk-wrong" not in str(info.value.body)
        missing = httpx.get(url + "/batches")  # no header at all
        assert missing.status_code == 401 and "didn't provide an API key" in missing.json()["error"]["message"]
        assert kit.sdk(url, key="sk-right").batches.list().data == []
        assert httpx.get(url + "/batches", headers={"api-key": "sk-right"}).status_code == 200  # Azure style
        assert httpx.get(url.replace("/v1", "/healthz")).status_code == 200  # health needs no key
        assert "sk-right" not in url.log_path.read_text()

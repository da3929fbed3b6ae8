"""The replay and upstream engines; a local server is the upstream of another, all offline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from batch_ops.server.background import free_port


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_answers_from_a_recorded_run(make_server: Any, kit: Any) -> None:
    with make_server(fail_requests=0.3, seed=2) as recorder:
        client = kit.sdk(recorder)
        recorded = kit.wait(client, kit.submit(client, kit.chat_file(30)).id)
        out_path, err_path = kit.tmp / "out.jsonl", kit.tmp / "err.jsonl"
        client.files.content(recorded.output_file_id).write_to_file(out_path)
        client.files.content(recorded.error_file_id).write_to_file(err_path)
    recorded_out, recorded_err = _read(out_path), _read(err_path)
    assert recorded_out and recorded_err

    replay_src = kit.write([*(kit.chat_line(i) for i in range(30)), kit.chat_line(99, prefix="new")], "replay.jsonl")
    with make_server(engine="replay", replay_files=[str(out_path), str(err_path)]) as url:
        client = kit.sdk(url)
        done = kit.wait(client, kit.submit(client, replay_src).id)
        assert done.status == "completed"
        out, err = kit.results(client, done)
    # The same successes with the same bodies, the same failures, and nothing invented.
    replayed = {x["custom_id"]: x["response"]["body"] for x in out}
    assert replayed == {x["custom_id"]: x["response"]["body"] for x in recorded_out}
    failed = {x["custom_id"]: x["response"]["status_code"] for x in err}
    assert failed.pop("new-99") == 404
    assert failed == {x["custom_id"]: 500 for x in recorded_err}
    assert done.usage.total_tokens == recorded.usage.total_tokens


def test_upstream_forwards_to_another_server(server_url: str, make_server: Any, kit: Any) -> None:
    with make_server(engine="upstream", upstream_url=server_url, upstream_model="local-llm") as url:
        client = kit.sdk(url)
        done = kit.wait(client, kit.submit(client, kit.chat_file(20)).id)
        assert done.status == "completed" and done.request_counts.completed == 20
        out, _ = kit.results(client, done)
    for line in out:
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "local-llm"
        assert body["choices"][0]["message"]["content"] == "question " + line["custom_id"].split("-")[1]
    assert done.usage.total_tokens == sum(x["response"]["body"]["usage"]["total_tokens"] for x in out) > 0


def test_upstream_retries_through_upstream_faults(make_server: Any, kit: Any) -> None:
    faults = {"http_429": 0.2, "http_500": 0.1, "drop": 0.05, "retry_after": 0.01, "seed": 3}
    with (
        make_server(**faults) as upstream,
        make_server(engine="upstream", upstream_url=upstream, upstream_retries=8, concurrency=4) as url,
    ):
        client = kit.sdk(url)
        done = kit.wait(client, kit.submit(client, kit.chat_file(30)).id)
        assert done.status == "completed"
        assert done.request_counts.completed == 30, kit.lines(client, done.error_file_id)[:2]


def test_upstream_concurrency_is_bounded(make_server: Any, kit: Any) -> None:
    with (
        make_server(latency=0.2) as upstream,
        make_server(engine="upstream", upstream_url=upstream, concurrency=2) as url,
    ):
        client = kit.sdk(url)
        batch = kit.submit(client, kit.chat_file(6))
        start = time.perf_counter()
        done = kit.wait(client, batch.id)
        # Six 0.2 s calls, two at a time, take at least 0.6 s; unbounded they would take 0.2 s.
        assert done.status == "completed" and time.perf_counter() - start >= 0.55


def test_upstream_key_is_forwarded(make_server: Any, kit: Any) -> None:
    with make_server(api_key="sk-upstream") as upstream:
        with make_server(engine="upstream", upstream_url=upstream, upstream_api_key="sk-upstream") as url:
            client = kit.sdk(url)
            assert kit.wait(client, kit.submit(client, kit.chat_file(3)).id).request_counts.completed == 3
        with make_server(engine="upstream", upstream_url=upstream) as url:
            client = kit.sdk(url)
            done = kit.wait(client, kit.submit(client, kit.chat_file(3)).id)
            assert done.request_counts.failed == 3
            assert {x["response"]["status_code"] for x in kit.lines(client, done.error_file_id)} == {401}
            assert "sk-upstream" not in url.log_path.read_text()


def test_unreachable_upstream_fails_requests_not_the_batch(make_server: Any, kit: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with make_server(engine="upstream", upstream_url=dead, upstream_retries=1) as url:
        client = kit.sdk(url)
        done = kit.wait(client, kit.submit(client, kit.chat_file(4)).id)
        assert done.status == "completed" and done.output_file_id is None  # every request failed
        err = kit.lines(client, done.error_file_id)
        assert len(err) == 4
        for line in err:
            assert line["response"]["status_code"] == 502
            assert line["response"]["body"]["error"]["code"] == "upstream_unavailable"

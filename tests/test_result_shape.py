"""One result shape whatever the provider: ``text``, ``usage``, ``body``, ``error`` and ``raw`` on ``ResultLine``,
read from each API's answer by its shape, and the same dicts from ``result_records`` (what XCom and task
results carry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, BatchOpsError, ClientSettings, ResultLine
from batch_ops.evals.scoring import extract_answer
from batch_ops.jobs.harvest import UsageTotals
from batch_ops.results import iter_result_lines, result_records, rewrite_results

CHAT = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}}
RESPONSES = {"id": "resp_1", "object": "response", "status": "completed",
             "output": [{"type": "reasoning", "summary": []},
                        {"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": "Par", "annotations": []},
                                     {"type": "output_text", "text": "is", "annotations": []}]}],
             "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}
ANTHROPIC = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
             "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                         {"type": "text", "text": "Paris"}, {"type": "tool_use", "id": "t", "name": "f", "input": {}}],
             "stop_reason": "end_turn",
             "usage": {"input_tokens": 8, "cache_read_input_tokens": 2, "output_tokens": 3}}
GEMINI = {"candidates": [{"content": {"role": "model", "parts": [{"text": "thinking...", "thought": True},
                                                                 {"text": "Paris"}]},
                          "finishReason": "STOP"}],
          "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1, "thoughtsTokenCount": 4,
                            "totalTokenCount": 12},
          "modelVersion": "gemini-2.5-flash"}
EMBEDDING = {"object": "list", "data": [{"object": "embedding", "embedding": [0.1, 0.2]}],
             "usage": {"prompt_tokens": 3, "total_tokens": 3}}


def _ok(body: Any, **fields: Any) -> ResultLine:
    return ResultLine.model_validate({"custom_id": "q", "response": {"status_code": 200, "body": body}, **fields})


@pytest.mark.parametrize(("body", "text", "usage"), [
    (CHAT, "Paris", (12, 1, 13)),
    (RESPONSES, "Paris", (10, 5, 15)),
    (ANTHROPIC, "Paris", (10, 3, 13)),
    (GEMINI, "Paris", (7, 5, 12)),
    (EMBEDDING, None, (3, 0, 3)),
    ({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}, "ab",
     None),
    ({"choices": [{"text": "legacy"}]}, "legacy", None),
])
def test_text_and_usage_are_read_from_every_apis_answer(body: dict[str, Any], text: str | None,
                                                        usage: tuple[int, int, int] | None) -> None:
    line = _ok(body)
    assert line.text == text
    got = line.usage
    assert (None if got is None else (got.input_tokens, got.output_tokens, got.total_tokens)) == usage
    record = line.record()
    assert record["text"] == text and record["ok"] and record["error"] is None and record["body"] == body
    assert record["usage"] == (None if usage is None else dict(zip(("input_tokens", "output_tokens",
                                                                     "total_tokens"), usage, strict=True)))


def test_failures_have_an_error_and_no_text() -> None:
    expired = ResultLine(custom_id="a", error={"code": "batch_expired", "message": "not run in time"})
    refused = ResultLine.model_validate({"custom_id": "b", "response": {"status_code": 400, "body": {
        "error": {"type": "invalid_request_error", "message": "max_tokens: required"}}}})
    assert expired.record() == {"custom_id": "a", "ok": False, "text": None, "body": None, "usage": None,
                                "error": {"code": "batch_expired", "message": "not run in time"}, "raw": None}
    assert refused.record()["error"] == {"code": "invalid_request_error", "message": "max_tokens: required"}
    assert refused.text is None


def test_a_rewritten_providers_line_is_kept_under_raw(tmp_path: Path) -> None:
    # How a dialect that rewrites results does it (Anthropic's own result line as the example).
    native = {"custom_id": "q-1", "result": {"type": "succeeded", "message": ANTHROPIC}}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(native) + "\n")
    rewrite_results(path, lambda o: {"custom_id": o["custom_id"], "response": {
        "status_code": 200, "body": o["result"]["message"]}, "raw": o})
    (line,) = iter_result_lines(path)
    assert line.raw == native and line.text == "Paris"
    assert line.record()["raw"] == native and "raw" not in line.record(raw=False)


def test_records_are_capped(tmp_path: Path) -> None:
    lines = [_ok(CHAT) for _ in range(3)]
    assert len(result_records(lines, limit=3)) == 3
    with pytest.raises(BatchOpsError, match="more than 2 results"):
        result_records(iter(lines), limit=2)


def test_evals_and_job_usage_read_every_api() -> None:
    assert [extract_answer(b) for b in (CHAT, RESPONSES, ANTHROPIC, GEMINI)] == ["Paris"] * 4
    totals = UsageTotals()
    totals.add(GEMINI)
    assert totals.per_model == {"gemini-2.5-flash": {"input": 7, "cached": 0, "output": 5, "reasoning": 0}}


def test_client_results_give_the_one_shape_end_to_end(server_url: str) -> None:
    requests = [{"custom_id": f"q-{i}", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{i}+1?"}]}
                for i in range(3)]
    with BatchClient(settings=ClientSettings(api_key="k", base_url=server_url)) as client:
        batch = client.submit(requests, endpoint="/v1/chat/completions")
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
        records = result_records(client.results(done))
    assert [r["custom_id"] for r in records] == ["q-0", "q-1", "q-2"]
    for r in records:
        assert r["ok"] and isinstance(r["text"], str) and r["text"]
        assert r["usage"]["total_tokens"] == r["usage"]["input_tokens"] + r["usage"]["output_tokens"] > 0
        assert r["text"] == r["body"]["choices"][0]["message"]["content"]
        json.dumps(r)  # plain JSON: an XCom, a task result

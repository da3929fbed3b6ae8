"""The Prefect results task returns the one result shape (custom_id, ok, text, body, usage, error, raw)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from batch_ops.prefect import OpenAIBatchCredentials, read_batch_results, run_batch


async def test_read_batch_results_returns_the_one_shape(batch_server: str, secret: str) -> None:
    credentials = OpenAIBatchCredentials(api_key=secret, base_url=batch_server)
    requests = [{"custom_id": f"q-{i}", "model": "m", "max_tokens": 8,
                 "messages": [{"role": "user", "content": "2+2?"}]} for i in range(3)]

    @flow
    async def evals() -> list[dict[str, Any]]:
        done = await run_batch(requests=requests, endpoint="/v1/chat/completions", credentials=credentials,
                               poll_interval=0.05)
        return await read_batch_results(done, credentials=credentials)

    records = await evals()
    assert [r["custom_id"] for r in records] == ["q-0", "q-1", "q-2"]
    assert all(r["ok"] and r["text"] and r["error"] is None and r["usage"]["output_tokens"] > 0 for r in records)
    assert set(records[0]) == {"custom_id", "ok", "text", "body", "usage", "error", "raw"}

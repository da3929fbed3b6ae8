"""The hook hands results on in the one shape (custom_id, ok, text, body, usage, error, raw): what a task returns
as its XCom, whatever the provider."""

from __future__ import annotations

import json
from typing import Any

from batch_ops import BatchClient, ClientSettings
from batch_ops.airflow import OpenAIBatchHook


def test_hook_results_are_plain_records_of_the_whole_chain(server_url: str, use_server: Any) -> None:
    use_server(server_url)
    requests = [{"custom_id": f"q-{i}", "model": "m", "messages": [{"role": "user", "content": "hi"}]}
                for i in range(2)]
    with BatchClient(settings=ClientSettings(api_key="k", base_url=server_url)) as client:
        batch = client.submit(requests, endpoint="/v1/chat/completions")
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
    hook = OpenAIBatchHook()
    by_id = hook.get_results(done.id)
    # The operator's XCom (batch_ids: the chain) works as well.
    by_xcom = hook.get_results({"batch_id": done.id, "batch_ids": [done.id]})
    assert by_id == by_xcom
    assert [set(r) for r in by_id] == [{"custom_id", "ok", "text", "body", "usage", "error", "raw"}] * 2
    assert all(r["ok"] and r["text"] and r["usage"]["total_tokens"] > 0 for r in by_id)
    json.dumps(by_id)

"""A plain OpenAIBatchOperator given a file of provider-neutral chat requests (``dag.test()``): translated
for the connection's provider, paid for once, and its results read back in the one shape (what a task
returns as its XCom)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batch_ops.airflow import OpenAIBatchHook


def test_the_operator_runs_neutral_requests_and_the_hook_reads_records(
    server_url: Any, use_server: Any, dagbag: Any, af: Any, tmp_path: Path, oracle: Any
) -> None:
    use_server(server_url)
    path = tmp_path / "evals.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"e-{i}", "model": "gpt-4o-mini", "max_tokens": 8,
                                        "system": "Answer in one word.",
                                        "messages": [{"role": "user", "content": f"{i}+1?"}]}) + "\n"
                            for i in range(3)))
    logical = datetime.now(timezone.utc).replace(microsecond=0)
    run = dagbag.get_dag("bo_retry_failed").test(run_after=logical, logical_date=logical,
                                                 run_conf={"input_path": str(path)})
    assert af.state(run, "batch") == "success"
    summary = af.xcom(run, "batch")
    sent = oracle(server_url).files.content(
        oracle(server_url).batches.retrieve(summary["batch_id"]).input_file_id).text.splitlines()
    first = json.loads(sent[0])
    assert first["url"] == "/v1/chat/completions" and first["body"]["messages"][0]["role"] == "system"
    records = OpenAIBatchHook().get_results(summary)
    assert [r["custom_id"] for r in records] == ["e-0", "e-1", "e-2"]
    assert all(r["ok"] and r["text"] and r["usage"]["total_tokens"] > 0 for r in records)

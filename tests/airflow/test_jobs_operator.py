"""OpenAIBatchJobOperator under dag.test(): deferred steps until every request is accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_job_operator_defers_until_the_job_is_done(make_server: Any, use_server: Any, run_dag: Any, af: Any,
                                                   oracle: Any, tmp_path: Path, api_key: str) -> None:
    src = af.write_requests(tmp_path / "in.jsonl", 150)
    out = tmp_path / "out.jsonl"
    with make_server(fail_requests=0.1, token_limit_failures=1, seed=8, api_key=api_key) as url:
        use_server(url)
        dr = run_dag("batch_ops_job", {"input_path": str(src), "output_path": str(out)})
        summary = af.xcom(dr, "job")
        on_server = [b.id for b in oracle(url).with_options(api_key=api_key).batches.list(limit=100)]
    assert af.state(dr, "job") == "success", summary
    assert summary["total"] == 150 and summary["succeeded"] + summary["failed"] == 150
    assert summary["batches"] == len(on_server) and summary["resubmitted"] > 0
    assert summary["output_path"] == str(out.resolve())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(150)]
    assert api_key not in json.dumps(summary)

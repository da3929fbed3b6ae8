"""OpenAIBatchJobOperator with a response model and ``repair_rounds=1`` under dag.test(): each part's invalid
answers (a fifth, spoiled by the server) are resubmitted, only they, and the merged output is typed. The
operator keeps its config as a dict (for Jinja) and opens the job with it: the schema survives that."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batch_ops.models import ResultLine
from batch_ops.structured import ResponseSchema, parse_line

CITY = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


def test_the_job_operator_repairs_each_parts_invalid_answers(make_server: Any, use_server: Any, run_dag: Any,
                                                             af: Any, oracle: Any, tmp_path: Path,
                                                             api_key: str) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "gpt-4o-mini", "max_tokens": 15,
                                                "messages": [{"role": "user", "content": f"City {i}?"}]}}) + "\n"
                           for i in range(20)))
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11, api_key=api_key) as url:
        use_server(url)
        dr = run_dag("batch_ops_job_repair", {"input_path": str(src), "output_path": str(out)})
        summary = af.xcom(dr, "job")
        on_server = list(oracle(url).with_options(api_key=api_key).batches.list(limit=100))
    assert af.state(dr, "job") == "success", summary
    repairs = summary["repairs"]
    assert repairs["batches"] == 2 and repairs["repaired"] == repairs["invalid"] > 0, repairs
    assert repairs["still_invalid"] == 0 and repairs["refused"] == 0
    carried = {b.id: b.request_counts.total for b in on_server}
    for rounds in repairs["parts"].values():
        (record,) = rounds
        assert carried[record["batch_id"]] == record["carried"] == sum(record["invalid"].values())
    assert summary["batches"] == len(on_server) == 4 and summary["succeeded"] == 20
    schema = ResponseSchema.of(CITY)
    lines = [ResultLine.model_validate_json(raw) for raw in out.read_text().splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)

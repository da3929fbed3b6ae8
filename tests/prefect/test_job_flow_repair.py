"""run_batch_job with a response schema and ``repair_rounds=1`` (a JobConfig, as a deployment's parameters carry
it): each part's invalid answers are resubmitted, only they, and the merged output is typed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai

from batch_ops.jobs import JobConfig
from batch_ops.models import ResultLine
from batch_ops.prefect import OpenAIBatchCredentials, run_batch_job
from batch_ops.structured import ResponseSchema, parse_line

CITY = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


def test_the_job_flow_repairs_each_parts_invalid_answers(make_server: Any, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "gpt-4o-mini", "max_tokens": 15,
                                                "messages": [{"role": "user", "content": f"City {i}?"}]}}) + "\n"
                           for i in range(20)))
    key = "sk-job-flow-repair-77"
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11, api_key=key) as url:
        creds = OpenAIBatchCredentials(api_key=key, base_url=url)
        config = JobConfig(endpoint="/v1/chat/completions", max_lines=10, max_concurrent=2, response_schema=CITY,
                           repair_rounds=1, prices={"gpt-4o-mini": {"input": 0.001, "output": 100}})
        summary = asyncio.run(run_batch_job(str(src), str(out), config, credentials=creds, poll_interval=0.05))
        on_server = list(openai.OpenAI(api_key=key, base_url=url).batches.list(limit=100))
    repairs = summary["repairs"]
    assert repairs["batches"] == 2 and repairs["repaired"] == repairs["invalid"] > 0 and repairs["still_invalid"] == 0
    assert summary["batches"] == len(on_server) == 4 and summary["succeeded"] == 20
    schema = ResponseSchema.of(CITY)
    lines = [ResultLine.model_validate_json(raw) for raw in out.read_text().splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)
    assert key not in json.dumps(summary)

"""A job's budget (``max_cost_usd`` on ``BatchJob``): parts are submitted while the job's spend (actual once
harvested, else the part's upper bound) plus the next part's upper bound fits; then it stops submitting, its
remaining requests end as ``budget_exceeded`` failures, and the summary says how far it got."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai

from batch_ops import BatchClient
from batch_ops.cost import estimate
from batch_ops.jobs import BatchJob

CHAT = "/v1/chat/completions"
PRICES = {"gpt-4": {"input": 10, "output": 30}}


def test_a_job_stops_submitting_at_its_budget_and_says_how_far_it_got(make_server: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": {
        "model": "gpt-4", "max_tokens": 100, "messages": [{"role": "user", "content": f"question {i}"}]}}) + "\n"
        for i in range(40)))
    part_upper = float(estimate([json.loads(x) for x in src.read_text().splitlines()[:10]], prices=PRICES).upper)
    # All four parts may start at once: while none has ended each counts with its upper bound, so two fit.
    budget = part_upper * 2.5
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_lines=10, max_concurrent=4,
                            max_rounds=0, prices=PRICES, max_cost_usd=budget)
        summary = job.run(client, poll_interval=0.05)
        with openai.OpenAI(api_key="x", base_url=str(url)) as sdk:
            batches = list(sdk.batches.list())
    assert summary.budget_stop is not None and "of 4 parts submitted" in summary.budget_stop, summary
    submitted = len(batches)
    assert submitted == 2 and summary.batches == submitted
    assert summary.succeeded == 10 * submitted and summary.failed == 40 - 10 * submitted
    assert summary.cost_usd is not None and summary.cost_usd <= budget
    codes = {json.loads(x)["error"]["code"] for x in (tmp_path / "out.jsonl").read_text().splitlines()
             if json.loads(x).get("error")}
    assert codes == {"budget_exceeded"}

"""A DAG for tests/airflow/test_repair_budget_airflow.py (``dag.test()``): a repair round under a budget.

The server spoils a fifth of the structured answers. Output dominates the price (``PRICES``) and each
request's output limit is exactly the valid answer's 15 tokens, so attempt 0's actual cost is close to its
upper bound: ``tight`` (a budget just above attempt 0's upper bound) has no room for the repair round's upper
bound and the round is refused; ``roomy`` has room for both and repairs. ``typed`` reads both chains' answers.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task
from pydantic import BaseModel

from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator

CONN = "bo_repair_budget"
MODEL = "gpt-4o-mini"
#: Input nearly free, output dear: a batch's cost is its answers' tokens (USD per 1M tokens).
PRICES = {MODEL: {"input": 0.001, "output": 100}}
#: The cl100k tokens of the server's valid answer ``{"name": "", "population": 0, "tags": []}``.
ANSWER_TOKENS = 15
N = 20
#: Attempt 0's upper bound is N x 15 output tokens ($0.03) plus ~$0.00001 of input: the tight budget covers it
#: and nothing more; the roomy one also covers the repair round's (a few requests x 15 tokens).
TIGHT, ROOMY = 0.0301, 0.05


class City(BaseModel):
    name: str
    population: int
    tags: list[str]


def requests(prefix: str) -> list[dict[str, Any]]:
    """Neutral chat requests; each task its own ids (the server spoils a request once, by its id)."""
    return [{"custom_id": f"{prefix}-{i}", "model": MODEL, "max_tokens": ANSWER_TOKENS,
             "messages": [{"role": "user", "content": f"City {i}?"}]} for i in range(N)]


@dag(dag_id="batch_ops_repair_budget", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, tags=["batch_ops-test"])
def repair_budget() -> None:
    common: dict[str, Any] = {"conn_id": CONN, "poll_interval": 0.1, "response_model": City, "repair_rounds": 1,
                              "repair_feedback": True, "prices": PRICES}
    tight = OpenAIBatchOperator(task_id="tight", requests=requests("t"), max_cost_usd=TIGHT, **common)
    roomy = OpenAIBatchOperator(task_id="roomy", requests=requests("r"), max_cost_usd=ROOMY, **common)

    @task
    def typed(tight: dict[str, Any], roomy: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, summary in (("tight", tight), ("roomy", roomy)):
            records = OpenAIBatchHook(CONN).get_results(summary, raw=False)
            out[name] = {"summary": summary, "parsed": sum(r["parsed"] is not None for r in records),
                         "invalid": sorted(r["custom_id"] for r in records if r["invalid"] is not None),
                         "records": len(records)}
        return out

    typed(tight.output, roomy.output)


repair_budget()

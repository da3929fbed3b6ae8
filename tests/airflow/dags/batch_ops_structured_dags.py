"""Structured outputs with one repair round, on every connection (tests/airflow/test_structured_airflow.py).

``batch`` (mapped over the connections) asks for answers that follow ``City``; the server spoils a share of
them; the operator repairs only those (deferring again) and hands on the chain's summary. ``typed`` reads
every connection's results against the schema the XCom carries.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import dag, task
from pydantic import BaseModel

from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator

#: The test points each at the local server (``AIRFLOW_CONN_BO_STRUCTURED_*``).
CONNECTIONS = ["bo_structured_openai", "bo_structured_anthropic", "bo_structured_gemini"]
REQUESTS = [{"custom_id": f"c-{i}", "max_tokens": 200, "messages": [{"role": "user", "content": f"City {i}?"}]}
            for i in range(20)]


class City(BaseModel):
    name: str
    population: int
    tags: list[str]


@dag(dag_id="structured_outputs", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def structured_outputs() -> None:
    runs = OpenAIBatchOperator.partial(task_id="batch", requests=REQUESTS, poll_interval=0.1, response_model=City,
                                       repair_rounds=1, repair_feedback=True).expand(conn_id=CONNECTIONS)

    @task
    def typed(summaries: list[dict[str, Any]]) -> dict[str, Any]:
        out = {}
        for conn_id, summary in zip(CONNECTIONS, summaries, strict=True):
            records = OpenAIBatchHook(conn_id).get_results(summary, raw=False)
            out[conn_id] = {"summary": summary, "parsed": sum(r["parsed"] is not None for r in records),
                            "invalid": [r["invalid"] for r in records if r["invalid"] is not None],
                            "first": records[0]["parsed"]}
        return out

    typed(runs.output)


structured_outputs()

"""
# Compare providers

One eval set, run as a batch on several vendors at once, each deferred to the triggerer; then one
table of every answer side by side. The DAG names no vendor, endpoint or model: each comes from a
connection, so adding a vendor is adding a connection.

1. `batch` (`OpenAIBatchOperator`, mapped over the connections) submits the same provider-neutral
   chat requests through each connection: the requests are written in that provider's own words
   (OpenAI chat completions, Anthropic Messages, Gemini GenerateContent) and sent to its own batch
   API. A retried try re-attaches to the batch it created; a retry after a failed or expired batch
   pays only for the requests without an answer.
2. `compare` reads every provider's results in one shape (custom_id, ok, text, usage, error) and
   returns, per request, what each provider answered, and per provider the tokens it used.

## Configuration

- `BATCH_OPS_COMPARE_CONNS`: the connection ids, comma separated (default
  `batch_ops_openai,batch_ops_anthropic,batch_ops_gemini`). Each is an `openaibatch` connection
  whose *Provider* is `openai`, `anthropic`, `gemini`, … and whose *Model* names the model its
  requests run on; password = that vendor's key; host empty for the vendor's own API (or the local
  server: `http://127.0.0.1:8765/v1`, Gemini `http://127.0.0.1:8765/v1beta`). Anthropic keeps no
  batch metadata: its connection's *Key ledger* must be a folder or `s3://` URL all workers share
  (see docs/providers.md).
- `BATCH_OPS_COMPARE_POLL_INTERVAL`: seconds between status polls (default 60).
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import dag, task

from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator

CONNECTIONS = [c.strip() for c in os.environ.get(
    "BATCH_OPS_COMPARE_CONNS", "batch_ops_openai,batch_ops_anthropic,batch_ops_gemini").split(",") if c.strip()]
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_COMPARE_POLL_INTERVAL", "60"))

#: The eval set, said once for every vendor: no model, no endpoint (the connections name them).
QUESTIONS = ["What is 2 + 2? Answer with a number.", "Name the capital of France in one word.",
             "Is 17 a prime number? Answer yes or no."]
REQUESTS = [{"custom_id": f"q-{i}", "system": "Answer as briefly as possible.", "max_tokens": 16,
             "messages": [{"role": "user", "content": question}]} for i, question in enumerate(QUESTIONS)]


@dag(
    dag_id="compare_providers",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["batch_ops", "eval"],
    description="The same eval set as a batch on every vendor's batch API (a connection each), compared",
    doc_md=__doc__,
)
def compare_providers() -> None:
    runs = OpenAIBatchOperator.partial(task_id="batch", requests=REQUESTS, poll_interval=POLL_INTERVAL).expand(
        conn_id=CONNECTIONS)

    @task
    def compare(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        answers: dict[str, dict[str, Any]] = {}
        tokens: dict[str, int] = {}
        for conn_id, outcome in zip(CONNECTIONS, outcomes, strict=True):
            records = OpenAIBatchHook(conn_id=conn_id).get_results(outcome)
            tokens[conn_id] = sum((r["usage"] or {}).get("total_tokens", 0) for r in records)
            for record in records:
                answers.setdefault(record["custom_id"], {})[conn_id] = (
                    record["text"] if record["ok"] else f"error: {record['error']}")
        return {"answers": answers, "tokens": tokens}

    compare(runs.output)


compare_providers()

"""DAGs for the end-to-end test: a real scheduler, LocalExecutor and triggerer run them.

Each runs once (``@once``) when the test unpauses it, after the API server answers. Every DAG
has a connection (``AIRFLOW_CONN_OPENAI_BATCH_*``) to a server of its own, so one DAG's batches
never slow down or muddle another's audit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from batch_ops.airflow import OpenAIBatchOperator

CHAT = "/v1/chat/completions"


def _requests(n: int, tag: str) -> list[dict]:
    return [
        {"custom_id": f"{tag}-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": f"{tag} {i}"}]}}
        for i in range(n)
    ]


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id, schedule="@once", start_date=datetime(2025, 1, 1), catchup=False,
               is_paused_upon_creation=True, tags=["batch_ops-e2e"])


# Deferred while the batch runs (long enough for the scheduler to see the deferral), then success.
with _dag("bo_e2e"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests(30, "e2e"), poll_interval=0.5)

# Killed by a user while deferred: the trigger's on_kill cancels the batch.
with _dag("bo_e2e_kill"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests(400, "kill"), poll_interval=0.5,
                        conn_id="openai_batch_kill", cancel_on_kill=True)

# Retried by the scheduler, each try in a new task process, after the outcome that calls for it:
# request failures (fail_on_request_failures=True), and a batch that expired half done. Every try
# makes the next attempt of the chain, carrying only the requests without a success.
with _dag("bo_e2e_retry_failures"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests(20, "rf"), poll_interval=0.3,
                        conn_id="openai_batch_failures", fail_on_request_failures=True, retries=8,
                        retry_delay=timedelta(seconds=0))

with _dag("bo_e2e_retry_expired"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests(12, "ex"), poll_interval=0.3,
                        conn_id="openai_batch_expiring", retries=8, retry_delay=timedelta(seconds=0))

"""DAGs for the end-to-end test: a real scheduler, LocalExecutor and triggerer run them.

Both run once (``@once``) when the test unpauses them, after the API server answers.
Connections come from ``AIRFLOW_CONN_OPENAI_BATCH_DEFAULT`` and ``AIRFLOW_CONN_OPENAI_BATCH_KILL``
(two servers, so the batch that gets killed does not slow the other one down).
"""

from __future__ import annotations

from datetime import datetime

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

"""DAGs for the end-to-end test: a real scheduler, LocalExecutor and triggerer run them.

Each runs once (``@once``) when the test unpauses it, after the API server answers. Every DAG
has a connection (``AIRFLOW_CONN_OPENAI_BATCH_*``) to a server of its own, so one DAG's batches
never slow down or muddle another's audit.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator

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


# The same scenarios on the other batch APIs: Anthropic's Message Batches and Gemini's Batch Mode (and,
# with BATCH_OPS_E2E_PROVIDERS=anthropic,gemini,groq, an OpenAI-shaped profile). The requests are
# provider-neutral (no endpoint, no model: each connection names its provider and model), so one DAG
# definition serves every provider; the connections are ``bo_<provider>_<scenario>``
# (``AIRFLOW_CONN_BO_...``), a server of its own each.
PROVIDERS = [p for p in os.environ.get("BATCH_OPS_E2E_PROVIDERS", "anthropic,gemini").split(",") if p]


def _neutral(n: int, tag: str) -> list[dict]:
    return [{"custom_id": f"{tag}-{i}", "max_tokens": 16, "messages": [{"role": "user", "content": f"{tag} {i}"}]}
            for i in range(n)]


@task
def joined(outcome: dict, conn_id: str) -> dict:
    """The chain's results joined by custom_id, the way users read them: ``{custom_id: [ok, text]}``."""
    return {r["custom_id"]: [r["ok"], r["text"]] for r in OpenAIBatchHook(conn_id=conn_id).get_results(outcome)}


for provider in PROVIDERS:
    with _dag(f"bo_e2e_{provider}_kill"):
        OpenAIBatchOperator(task_id="batch", requests=_neutral(400, "kill"), poll_interval=0.5,
                            conn_id=f"bo_{provider}_kill", cancel_on_kill=True)

    with _dag(f"bo_e2e_{provider}_retry_failures"):
        conn = f"bo_{provider}_failures"
        failures = OpenAIBatchOperator(task_id="batch", requests=_neutral(20, "rf"), poll_interval=0.3,
                                       conn_id=conn, fail_on_request_failures=True, retries=8,
                                       retry_delay=timedelta(seconds=0))
        joined.override(task_id="joined")(failures.output, conn)

    with _dag(f"bo_e2e_{provider}_retry_expired"):
        conn = f"bo_{provider}_expiring"
        expiring = OpenAIBatchOperator(task_id="batch", requests=_neutral(12, "ex"), poll_interval=0.3,
                                       conn_id=conn, retries=8, retry_delay=timedelta(seconds=0))
        joined.override(task_id="joined")(expiring.output, conn)

"""DAGs of the cluster drill (``python -m drills.cluster``), run by a CeleryExecutor deployment.

The drill copies this file and ``dags/nightly_eval.py`` into a DAG folder that both Celery workers
read. Each DAG uses a connection of its own, which the drill points at a local Batch API server of
its own through ``AIRFLOW_CONN_*`` variables. No schedule: nothing runs unless the drill triggers it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from batch_ops.airflow import OpenAIBatchOperator

CHAT = "/v1/chat/completions"
START = datetime(2025, 1, 1)
#: Mapped tasks in the triggerer drill (the drill reads the same variable).
MAPPED = int(os.environ.get("BATCH_OPS_CLUSTER_MAPPED", "40"))


def _requests(tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{tag}-{i}", "body": {"model": "gpt-4o-mini",
                                             "messages": [{"role": "user", "content": f"{tag} question {i}"}]}}
        for i in range(n)
    ]


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, tags=["batch_ops-drill", "cluster"],
               **kwargs)


# Row 2: forty deferrable batches from one mapped task, waited on by two triggerers, one of which is
# killed with kill -9 while all forty are deferred.
with _dag("cluster_mapped", max_active_tasks=MAPPED, default_args={"retries": 1, "retry_delay": timedelta(seconds=1)}):
    OpenAIBatchOperator.partial(
        task_id="batch", endpoint=CHAT, conn_id="cluster_mapped", poll_interval=1.0, timeout=timedelta(minutes=10),
    ).expand(requests=[_requests(f"cm{i}", 2) for i in range(MAPPED)])

# Row 3: a Celery worker is killed (its whole process tree) while the task's create is in flight
# (the answer held back by a proxy); the retry runs on the other worker and must re-attach.
with _dag("cluster_worker_kill"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("cwk", 20), conn_id="cluster_hold",
                        poll_interval=0.5, retries=1, retry_delay=timedelta(seconds=1),
                        timeout=timedelta(minutes=5))

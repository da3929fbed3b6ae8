"""DAGs of the cluster drill (``python -m drills.cluster``), run by a CeleryExecutor deployment.

The drill copies this file and ``dags/nightly_eval.py`` into a DAG folder that both Celery workers
read. Each DAG uses a connection of its own, which the drill points at a local Batch API server of
its own through ``AIRFLOW_CONN_*`` variables. No schedule: nothing runs unless the drill triggers it.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, get_current_context, task

from batch_ops.airflow import OpenAIBatchJobOperator, OpenAIBatchOperator

CHAT = "/v1/chat/completions"
START = datetime(2025, 1, 1)
#: Mapped tasks in the triggerer drill (the drill reads the same variable).
MAPPED = int(os.environ.get("BATCH_OPS_CLUSTER_MAPPED", "40"))
#: Requests of the job row, and the bucket its files go to (the drill sets both).
JOB_REQUESTS = int(os.environ.get("BATCH_OPS_CLUSTER_JOB_REQUESTS", "400"))
JOB_DIR = f"s3://{os.environ.get('BATCH_OPS_CLUSTER_BUCKET', 'batch-ops-cluster')}/job/{{{{ run_id }}}}"


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


# Row 5: a job over many batches. An upstream task writes its input to S3; the job keeps its state,
# parts and results next to its output on S3, and each deferred step (on whichever worker Celery
# picks) resumes it from there.
class _StepHostJobOperator(OpenAIBatchJobOperator):
    """The job operator, logging the host of every step so that the drill sees steps cross workers."""

    def _step(self, job: Any, client: Any, deadline: float | None) -> Any:
        self.log.info("batch_ops drill: job step on host %s", socket.gethostname())
        return super()._step(job, client, deadline)


with _dag("cluster_job"):

    @task
    def write_input() -> str:
        from batch_ops import storage
        from batch_ops.jsonl import request_line, write_requests

        target = f"{JOB_DIR.split('{{')[0]}{get_current_context()['run_id']}/in.jsonl"
        with storage.local_output(target) as path:
            write_requests((request_line(f"cj-{i}", r["body"], endpoint=CHAT)
                            for i, r in enumerate(_requests("cj", JOB_REQUESTS))), path)
        return target

    write_input() >> _StepHostJobOperator(
        task_id="job", input_path=f"{JOB_DIR}/in.jsonl", output_path=f"{JOB_DIR}/out.jsonl", conn_id="cluster_job",
        endpoint=CHAT, max_lines=50, max_concurrent=4, poll_interval=0.5, retries=1, retry_delay=timedelta(seconds=1),
        timeout=timedelta(minutes=8),
    )

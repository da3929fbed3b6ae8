"""DAGs run by tests/airflow (``dag.test()``) and by the end-to-end test (scheduler + triggerer).

Inputs come from ``dag_run.conf`` so the same DAG runs against whichever local server and
request files a test prepared; the connection comes from ``AIRFLOW_CONN_OPENAI_BATCH_DEFAULT``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, task

from batch_ops.airflow import OpenAIBatchOperator, OpenAIBatchSensor

CHAT = "/v1/chat/completions"
POLL = 0.2
START = datetime(2025, 1, 1)
INPUT = "{{ dag_run.conf['input_path'] }}"


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, tags=["batch_ops-test"], **kwargs)


class CrashOnceOperator(OpenAIBatchOperator):
    """Loses its first try after the batch exists, as a worker killed mid-wait would."""

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        if context["ti"].try_number == 1:
            raise RuntimeError("simulated worker loss after the batch was created")
        return super().execute_complete(context, event)


@task
def read_output(result: dict[str, Any]) -> dict[str, Any]:
    """A downstream task: proves both file ids arrive through XCom."""
    return {"output_file_id": result["output_file_id"], "error_file_id": result["error_file_id"]}


@task(trigger_rule="all_done")
def salvage(**context: Any) -> Any:
    """Runs even when the batch task failed: the partial output id is still in XCom."""
    return context["ti"].xcom_pull(task_ids="batch", key="batch")


@task
def request_files(**context: Any) -> list[str]:
    return list(context["dag_run"].conf["input_paths"])


@task
def make_requests(**context: Any) -> list[dict[str, Any]]:
    n = int(context["dag_run"].conf.get("n", 3))
    return [
        {"custom_id": f"x-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": f"xcom {i}"}]}}
        for i in range(n)
    ]


# Success: templated input path, endpoint and metadata; downstream reads both file ids.
with _dag("bo_success"):
    result = OpenAIBatchOperator(
        task_id="batch",
        endpoint="{{ dag_run.conf.get('endpoint', '/v1/chat/completions') }}",
        input_path=INPUT,
        metadata={"run": "{{ run_id }}", "dag": "{{ dag.dag_id }}"},
        output_expires_after={"anchor": "created_at", "seconds": "{{ 3600 * 2 }}"},
        poll_interval=POLL,
    )
    read_output(result.output)

# The failure policy: a completed batch with failed requests fails the task when asked to.
with _dag("bo_policy"):
    OpenAIBatchOperator(
        task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL, fail_on_request_failures=True
    ) >> salvage()

# Expired / cancelled / timed out: the task fails, the partial output id stays in XCom.
with _dag("bo_outcome"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL) >> salvage()

with _dag("bo_timeout"):
    OpenAIBatchOperator(
        task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL, timeout=1.5, cancel_on_timeout=True
    )

with _dag("bo_timeout_sync"):
    OpenAIBatchOperator(
        task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL, timeout=1.0, deferrable=False
    )

# A retry re-attaches to the batch the first try created.
with _dag("bo_retry", default_args={"retries": 1, "retry_delay": timedelta(seconds=0)}):
    CrashOnceOperator(task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL)

# A retry after a failed batch (token_limit_exceeded: "try again later") creates a new one.
with _dag("bo_retry_failed", default_args={"retries": 1, "retry_delay": timedelta(seconds=0)}):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL)

# Validation happens before anything is uploaded.
with _dag("bo_invalid", default_args={"retries": 2, "retry_delay": timedelta(seconds=0)}):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, input_path=INPUT, poll_interval=POLL)

# Create without waiting, then wait with sensors: deferred, poking on the worker, and rescheduled.
with _dag("bo_sensor"):
    create = OpenAIBatchOperator(
        task_id="create", endpoint=CHAT, input_path=INPUT, poll_interval=POLL, wait_for_completion=False
    )
    batch_id = "{{ ti.xcom_pull(task_ids='create', key='batch_id') }}"
    create >> [
        OpenAIBatchSensor(task_id="wait_deferred", batch_id=batch_id, poke_interval=POLL),
        OpenAIBatchSensor(task_id="wait_poke", batch_id=batch_id, poke_interval=POLL, deferrable=False),
        OpenAIBatchSensor(task_id="wait_reschedule", batch_id=batch_id, poke_interval=POLL, deferrable=False,
                          mode="reschedule"),
    ]

# Dynamic task mapping over request files.
with _dag("bo_mapped"):
    OpenAIBatchOperator.partial(task_id="batch", endpoint=CHAT, poll_interval=POLL).expand(
        input_path=request_files()
    )

# Requests from an upstream task (XComArg), and literal requests that must not meet Jinja.
with _dag("bo_requests"):
    OpenAIBatchOperator(task_id="from_xcom", endpoint=CHAT, requests=make_requests(), poll_interval=POLL)
    OpenAIBatchOperator(
        task_id="literal",
        endpoint=CHAT,
        requests=[
            {"custom_id": "j-1", "body": {"model": "m", "messages": [{"role": "user", "content": "keep {{ ds }}"}]}}
        ],
        poll_interval=POLL,
    )


# The connection id is templated: this DAG names it in dag_run.conf only.
with _dag("batch_ops_templated_conn"):
    OpenAIBatchOperator(
        task_id="batch",
        conn_id="{{ dag_run.conf['conn_id'] }}",
        endpoint=CHAT,
        requests=[{"custom_id": "t-0", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}],
        poll_interval=POLL,
    )

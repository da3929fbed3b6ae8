"""Hourly orphan sweep: cancel batches whose Airflow DAG run ended without them.

A task instance that died hard (its worker lost, the task marked failed while deferred and the
triggerer down) can leave its batch running with nobody to collect it. Every batch the
operators create names its task instance in metadata; this DAG asks Airflow for the state of
each one's DAG run and cancels the batches whose run has ended (success or failed). Runs still
queued or running keep their batches: a task, a sensor or a retry will collect them. Batches
younger than 10 minutes, made outside Airflow, naming a run Airflow does not know, or made by
another deployment sharing the API project (staging beside production: same DAGs, same run ids)
are reported in the log and the XCom, never cancelled. Batches made by an earlier batch_ops name
no deployment: reported as unproven, cancelled only with `BATCH_OPS_SWEEP_UNPROVEN=1`.

Configuration:

- connection `openai_batch_default`: the account to sweep;
- `BATCH_OPS_SWEEP_CANCEL=0`: report only;
- `BATCH_OPS_SWEEP_MIN_AGE`: seconds a batch must have run before it may be cancelled (600);
- `BATCH_OPS_SWEEP_UNPROVEN=1`: also cancel ended batches naming no deployment (only when no other
  Airflow deployment uses the API project).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag

from batch_ops.airflow import OpenAIBatchOrphanSweepOperator


@dag(
    dag_id="batch_ops_orphan_sweep",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["batch_ops", "maintenance"],
    description="Cancel OpenAI batches whose Airflow DAG run ended without them; report the rest",
    doc_md=__doc__,
)
def batch_ops_orphan_sweep() -> None:
    OpenAIBatchOrphanSweepOperator(
        task_id="sweep",
        cancel=os.environ.get("BATCH_OPS_SWEEP_CANCEL", "1") != "0",
        min_age=float(os.environ.get("BATCH_OPS_SWEEP_MIN_AGE", "600")),
        lookback=timedelta(days=3),
        sweep_unproven=os.environ.get("BATCH_OPS_SWEEP_UNPROVEN", "0") == "1",
    )


batch_ops_orphan_sweep()

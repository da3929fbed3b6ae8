"""
# Eval, event-driven: submit in one DAG, process in another, no task waits

Two DAGs joined by an asset that batch webhooks update:

1. `eval_submit` (daily) writes the eval set's requests and creates the batch with
   `OpenAIBatchOperator(wait_for_completion=False)`, tagged with
   `metadata={"pipeline": "eval_assets", "run": <run id>}`. It ends as soon as the batch exists.
2. When that batch ends, OpenAI sends a webhook; the receiver (`batch-ops webhooks serve`) keeps it;
   the `AssetWatcher` of asset `openai_batch_eval_assets` (an `OpenAIBatchEventTrigger` in the
   triggerer) turns it into an asset event carrying the batch's file ids and metadata.
3. `eval_process` is scheduled on that asset: it downloads the batch's output, scores it and
   writes the report. A batch that failed or was cancelled fails the run, naming the batch.

Several batches that end before the scheduler starts `eval_process` arrive in one run (its
`triggering_asset_events`); each is processed.

## Configuration

- connection `openai_batch_default` (or `BATCH_OPS_EVAL_CONN_ID`): host, key, and the extra
  `events_url` (the receiver's `/events`, e.g. `http://receiver:8780/events`) with `events_token`
  when the receiver has one. See docs/webhooks.md for the receiver and registering it with OpenAI.
- `BATCH_OPS_EVAL_STORAGE`: where requests, downloads and reports go (object storage URL or a
  folder every worker sees; default `$AIRFLOW_HOME/eval_runs`). Both DAGs must see it.
- `BATCH_OPS_EVAL_MODEL`: the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetWatcher, dag, task

from batch_ops import storage
from batch_ops.airflow import OpenAIBatchEventTrigger, OpenAIBatchHook, OpenAIBatchOperator
from batch_ops.errors import BatchOutcomeError
from batch_ops.evals import prepare_requests, run_dir, score_and_report

PIPELINE = "eval_assets"
CONN_ID = os.environ.get("BATCH_OPS_EVAL_CONN_ID", "openai_batch_default")
STORAGE = os.environ.get("BATCH_OPS_EVAL_STORAGE") or str(
    Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "eval_runs")

#: Updated each time a batch of this pipeline ends (any way it ends: the processing DAG decides).
BATCH_ENDED = Asset(
    f"openai_batch_{PIPELINE}",
    watchers=[AssetWatcher(
        name=f"{PIPELINE}_batches",
        trigger=OpenAIBatchEventTrigger(conn_id=CONN_ID, statuses=["completed", "expired", "failed", "cancelled"],
                                        metadata={"pipeline": PIPELINE}),
    )],
)


@dag(dag_id="eval_submit", schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     tags=["batch_ops", "eval", "assets"], doc_md=__doc__,
     description="Create the eval batch and end; eval_process runs when the batch ends")
def eval_submit() -> None:
    @task
    def build_requests(run_id: str | None = None) -> str:
        assert run_id is not None
        return str(prepare_requests(work_dir=storage.join(STORAGE, "work"), run_id=run_id))

    OpenAIBatchOperator(
        task_id="submit",
        conn_id=CONN_ID,
        endpoint="/v1/chat/completions",
        input_path=build_requests(),
        metadata={"pipeline": PIPELINE, "run": "{{ run_id }}"},
        wait_for_completion=False,
    )


@dag(dag_id="eval_process", schedule=[BATCH_ENDED], start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, tags=["batch_ops", "eval", "assets"], doc_md=__doc__,
     description="Score each eval batch when its webhook arrives")
def eval_process() -> None:
    @task
    def score(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        reports = []
        for event in triggering_asset_events[BATCH_ENDED]:
            batch = event.extra["payload"]
            if batch["status"] not in ("completed", "expired"):  # nothing to score: say which and why
                raise BatchOutcomeError(f"{batch['message']}; see the batch's errors in the OpenAI dashboard")
            submitted_by = batch["metadata"]["run"]
            folder = run_dir(storage.join(STORAGE, "work"), submitted_by)
            files: dict[str, Any] = {"output_file_id": None, "error_file_id": None}
            with OpenAIBatchHook(conn_id=CONN_ID).get_client() as client:
                for key, name in (("output_file_id", "output.jsonl"), ("error_file_id", "errors.jsonl")):
                    if batch[key]:
                        files[key] = client.files.download(batch[key], storage.join(folder, name))
            reports.append(score_and_report(
                request_path=storage.join(folder, "requests.jsonl"), output_path=files["output_file_id"],
                error_path=files["error_file_id"], report_dir=storage.join(STORAGE, "reports"),
                run_id=submitted_by, pipeline=PIPELINE, batch=batch,
            ) | {"batch_id": batch["batch_id"]})
        return reports

    score()


eval_submit()
eval_process()

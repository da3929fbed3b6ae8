"""Nightly eval, as an Airflow DAG: build requests -> run the batch (deferred) -> download -> score.

Every night at 00:00 UTC:

1. ``build_requests`` writes the eval set's chat requests (validated) into the run's directory;
2. ``run_batch`` (:class:`~batch_ops.airflow.OpenAIBatchOperator`) creates the batch and defers
   to the triggerer until it ends, holding no worker slot; a retried try re-attaches to the
   batch it created instead of paying for a second one; it returns the file ids via XCom;
3. ``download_results`` streams the output and error files next to the requests;
4. ``score_and_report`` scores every item, writes markdown + JSON + a trend chart, and fails the
   run when the score dropped more than ``max_drop`` versus the previous run.

Configuration (environment of the scheduler/workers):
    connection ``openai_batch_default``: host = base URL (e.g. http://127.0.0.1:8765/v1 for the
        local server, empty for OpenAI), password = API key.
    BATCH_OPS_EVAL_DIR: where requests, downloads and reports go (default ./eval_runs).
    BATCH_OPS_EVAL_MODEL: the model (Azure: the deployment name).
    BATCH_OPS_EVAL_POLL_INTERVAL: seconds between status polls (default 60).

Files pass between tasks as paths under BATCH_OPS_EVAL_DIR, which must be shared by the
workers (a local disk is fine with the LocalExecutor; use a shared volume otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag, task

from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator
from batch_ops.evals import DEFAULT_MAX_DROP, prepare_requests, run_dir, score_and_report

EVAL_DIR = Path(os.environ.get("BATCH_OPS_EVAL_DIR", "eval_runs")).resolve()
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))


@dag(
    dag_id="nightly_eval",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["batch_ops", "eval"],
    params={"max_drop": DEFAULT_MAX_DROP},
    doc_md=__doc__,
)
def nightly_eval() -> None:
    @task
    def build_requests(run_id: str | None = None) -> str:
        assert run_id is not None
        return str(prepare_requests(work_dir=EVAL_DIR / "work", run_id=run_id))

    requests_path = build_requests()

    batch = OpenAIBatchOperator(
        task_id="run_batch",
        endpoint="/v1/chat/completions",
        input_path=requests_path,
        metadata={"pipeline": "nightly_eval", "run": "{{ run_id }}"},
        poll_interval=POLL_INTERVAL,
        timeout=pendulum.duration(hours=26),
        retries=2,
    )

    @task
    def download_results(batch: dict[str, Any], run_id: str | None = None) -> dict[str, str | None]:
        assert run_id is not None
        folder = run_dir(EVAL_DIR / "work", run_id)
        with OpenAIBatchHook().get_client() as client:
            files: dict[str, str | None] = {"output": None, "errors": None}
            if batch["output_file_id"]:
                files["output"] = str(client.files.download(batch["output_file_id"], folder / "output.jsonl"))
            if batch["error_file_id"]:
                files["errors"] = str(client.files.download(batch["error_file_id"], folder / "errors.jsonl"))
        return files

    @task
    def report(requests_path: str, files: dict[str, str | None], batch: dict[str, Any],
               run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert run_id is not None
        return score_and_report(
            request_path=requests_path, output_path=files["output"], error_path=files["errors"],
            report_dir=EVAL_DIR / "reports", run_id=run_id, pipeline="airflow", batch=batch,
            max_drop=float((params or {}).get("max_drop", DEFAULT_MAX_DROP)),
        )

    files = download_results(batch.output)
    report.override(task_id="score_and_report")(requests_path, files, batch.output)


nightly_eval()

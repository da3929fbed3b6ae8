"""
# Nightly eval

Build requests → run the batch (deferred) → download → score. Every night at 00:00 UTC:

1. `build_requests` writes the eval set's chat requests (validated) into the run's folder.
2. `run_batch` (`OpenAIBatchOperator`) creates the batch and defers to the triggerer until it
   ends, holding no worker slot. A retried try re-attaches to the batch it created instead of
   paying for a second one. It returns the file ids through XCom.
3. `download_results` streams the output and error files next to the requests.
4. `score_and_report` scores every item, writes Markdown, JSON and a trend chart, and fails the
   run when the score dropped more than `max_drop` (a DAG param) below the previous run.

## Configuration

Set in the environment of the scheduler and the workers:

- connection `openai_batch_default`: host = the base URL (`http://127.0.0.1:8765/v1` for the
  local server, empty for OpenAI), password = the API key. Start the local server with
  `batch-ops serve --eval-sample` so that it answers from a recorded run: its default echo engine
  repeats the prompts, which scores 0% (the report then says so).
- `BATCH_OPS_EVAL_STORAGE`: where requests, downloads, reports and the score history go: an
  object storage URL (`s3://bucket/eval`, `gs://…`, `az://…`) or a local folder (default
  `$AIRFLOW_HOME/eval_runs`, or `BATCH_OPS_EVAL_DIR` when set).
- `BATCH_OPS_EVAL_STORAGE_CONN_ID`: the Airflow connection of that storage (e.g. `aws_default`);
  unset: the file system's own defaults (environment, instance role).
- `BATCH_OPS_EVAL_MODEL`: the model (Azure: the deployment name).
- `BATCH_OPS_EVAL_POLL_INTERVAL`: seconds between status polls (default 60).

## Workers that share no disk

Files pass between tasks by their URL under `BATCH_OPS_EVAL_STORAGE`. With the Celery or
Kubernetes executor the tasks of one run land on different workers that share no disk: use an
object storage URL (or a volume every worker mounts at the same path). A local folder is fine
with the LocalExecutor. The history that the regression gate compares against lives there too,
so it must outlive the workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import ObjectStoragePath, dag, task

from batch_ops import storage
from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchOperator
from batch_ops.evals import DEFAULT_MAX_DROP, prepare_requests, run_dir, score_and_report

_LOCAL_DEFAULT = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "eval_runs"
STORAGE = os.environ.get("BATCH_OPS_EVAL_STORAGE") or str(
    Path(os.environ.get("BATCH_OPS_EVAL_DIR") or _LOCAL_DEFAULT).resolve())
STORAGE_CONN_ID = os.environ.get("BATCH_OPS_EVAL_STORAGE_CONN_ID") or None
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))


def _at(url: str) -> Any:
    """``url`` as the tasks read and write it: with the storage connection's credentials, when one is set."""
    if STORAGE_CONN_ID and storage.is_url(url):
        return ObjectStoragePath(url, conn_id=STORAGE_CONN_ID)
    return url


@dag(
    dag_id="nightly_eval",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["batch_ops", "eval"],
    params={"max_drop": DEFAULT_MAX_DROP},
    description="Nightly eval: build requests, run one OpenAI batch (deferred), download, score and gate on "
    "regressions",
    doc_md=__doc__,
)
def nightly_eval() -> None:
    @task
    def build_requests(run_id: str | None = None) -> str:
        assert run_id is not None
        return str(prepare_requests(work_dir=storage.join(_at(STORAGE), "work"), run_id=run_id))

    requests_path = build_requests()

    batch = OpenAIBatchOperator(
        task_id="run_batch",
        endpoint="/v1/chat/completions",
        input_path=requests_path,
        storage_conn_id=STORAGE_CONN_ID,
        metadata={"pipeline": "nightly_eval", "run": "{{ run_id }}"},
        poll_interval=POLL_INTERVAL,
        timeout=pendulum.duration(hours=26),
        retries=2,
    )

    @task
    def download_results(batch: dict[str, Any], run_id: str | None = None) -> dict[str, str | None]:
        assert run_id is not None
        folder = run_dir(storage.join(_at(STORAGE), "work"), run_id)
        with OpenAIBatchHook().get_client() as client:
            files: dict[str, str | None] = {"output": None, "errors": None}
            for name, key in (("output", "output_file_id"), ("errors", "error_file_id")):
                if batch[key]:
                    files[name] = str(client.files.download(batch[key], storage.join(folder, f"{name}.jsonl")))
        return files

    @task
    def report(requests_path: str, files: dict[str, str | None], batch: dict[str, Any],
               run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert run_id is not None
        return score_and_report(
            request_path=_at(requests_path), output_path=files["output"] and _at(files["output"]),
            error_path=files["errors"] and _at(files["errors"]), report_dir=storage.join(_at(STORAGE), "reports"),
            run_id=run_id, pipeline="airflow", batch=batch,
            max_drop=float((params or {}).get("max_drop", DEFAULT_MAX_DROP)),
        )

    files = download_results(batch.output)
    report.override(task_id="score_and_report")(requests_path, files, batch.output)


nightly_eval()

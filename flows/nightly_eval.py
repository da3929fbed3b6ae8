"""Nightly eval, as a Prefect flow: build requests -> run the batch (async wait) -> download -> score.

The same steps as ``dags/nightly_eval.py``, from the same code in ``batch_ops.evals``:

1. ``build_requests`` writes the eval set's chat requests (validated);
2. ``run_batch`` (batch_ops' flow, as a subflow) uploads, creates the batch at most once, and
   awaits it without holding a thread; it emits ``batch_ops.batch.<status>`` and a summary
   artifact, and cancelling this flow run cancels the batch;
3. ``download_batch_file`` streams the output and error files;
4. ``score_and_report`` scores every item, writes markdown + JSON + a trend chart, publishes a
   markdown artifact, and fails the run when the score dropped more than ``max_drop``.

Run once:            python flows/nightly_eval.py --once
Serve on a schedule: python flows/nightly_eval.py          (cron 0 3 * * *, UTC)

Credentials: an ``OpenAIBatchCredentials`` block name in BATCH_OPS_EVAL_CREDENTIALS, or the
environment (OPENAI_API_KEY, OPENAI_BASE_URL — http://127.0.0.1:8765/v1 for the local server; start it
with ``batch-ops serve --eval-sample`` so that it answers from a recorded run: the default echo
engine repeats the prompts, which scores 0%, and the report says so).

Files: requests, downloads, reports and the score history go under one place:
BATCH_OPS_EVAL_STORAGE, an object storage URL (s3://bucket/eval, gs://…, az://…) or a local
folder (default ~/batch_ops_eval, or BATCH_OPS_EVAL_DIR when set); or
BATCH_OPS_EVAL_STORAGE_BLOCK, the name of a saved ``RemoteFileSystem``/``LocalFileSystem``
block (its settings carry the credentials). Work-pool workers and served flows on different
machines share no disk: use object storage there. The history the regression gate compares
against lives there too, so it must outlive the workers.
"""

import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import WritableFileSystem
from prefect.runtime import flow_run

from batch_ops import storage
from batch_ops.evals import DEFAULT_MAX_DROP, prepare_requests, run_dir, score_and_report
from batch_ops.prefect import OpenAIBatchCredentials, block_target, download_batch_file, run_batch

STORAGE = os.environ.get("BATCH_OPS_EVAL_STORAGE") or str(
    Path(os.environ.get("BATCH_OPS_EVAL_DIR") or Path.home() / "batch_ops_eval").resolve())
STORAGE_BLOCK = os.environ.get("BATCH_OPS_EVAL_STORAGE_BLOCK") or None
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))
CRON = os.environ.get("BATCH_OPS_EVAL_CRON", "0 3 * * *")


def _run_id() -> str:
    return f"{flow_run.get_scheduled_start_time():%Y-%m-%dT%H%M%S}-{str(flow_run.get_id())[:8]}"


def _at(block: WritableFileSystem | None, relative: str) -> Any:
    """A file under the eval's storage: inside the block when one is set, else under STORAGE."""
    return block_target(block, relative) if block is not None else storage.join(STORAGE, *relative.split("/"))


def _param(block: WritableFileSystem | None, relative: str) -> str:
    """How a task parameter names the file: relative to the block (which goes along), else in full."""
    return relative if block is not None else str(_at(None, relative))


@task(cache_policy=NO_CACHE)
def build_requests(run_id: str, block: WritableFileSystem | None = None) -> str:
    """Write the request file; returns its path relative to the eval's storage."""
    prepare_requests(work_dir=_at(block, "work"), run_id=run_id)
    return f"work/{run_dir('', run_id).name}/requests.jsonl"


@task(cache_policy=NO_CACHE)
def score(requests: str, output: str | None, errors: str | None, batch: dict[str, Any], run_id: str,
          max_drop: float, block: WritableFileSystem | None = None) -> dict[str, Any]:
    summary = score_and_report(
        request_path=_at(block, requests), output_path=output and _at(block, output),
        error_path=errors and _at(block, errors), report_dir=_at(block, "reports"), run_id=run_id,
        pipeline="prefect", batch=batch, max_drop=max_drop,
    )
    markdown = storage.read_text(_at(block, "reports/latest.md"), default="") or ""
    create_markdown_artifact(
        key="nightly-eval-report",
        markdown=markdown,
        description=f"Nightly eval: score {summary['score']:.1%}, {summary['failed']} failed requests",
    )
    return summary


@flow(name="nightly-eval", log_prints=True)
async def nightly_eval(max_drop: float = DEFAULT_MAX_DROP, credentials_block: str | None = None,
                       poll_interval: float = POLL_INTERVAL) -> dict[str, Any]:
    """Run the eval set as one batch and score it; fails on a score regression."""
    credentials = None
    block_name = credentials_block or os.environ.get("BATCH_OPS_EVAL_CREDENTIALS")
    if block_name:
        credentials = await OpenAIBatchCredentials.load(block_name)  # type: ignore[misc]
    block: WritableFileSystem | None = None
    if STORAGE_BLOCK:
        block = await WritableFileSystem.load(STORAGE_BLOCK)  # type: ignore[misc]
    run_id = _run_id()
    requests = build_requests(run_id, block)
    result = await run_batch(input_path=_param(block, requests), endpoint="/v1/chat/completions",
                             credentials=credentials, metadata={"pipeline": "nightly_eval"},
                             poll_interval=poll_interval, storage=block, artifact_key="nightly-eval")
    folder = requests.rsplit("/", 1)[0]
    files: dict[str, str | None] = {"output.jsonl": None, "errors.jsonl": None}
    for name, file_id in (("output.jsonl", result.output_file_id), ("errors.jsonl", result.error_file_id)):
        if file_id:
            await download_batch_file(file_id, _param(block, f"{folder}/{name}"), credentials=credentials,
                                      storage=block)
            files[name] = f"{folder}/{name}"
    output, errors = files["output.jsonl"], files["errors.jsonl"]
    summary = score(requests, output, errors, result.model_dump(mode="json"), run_id, max_drop, block)
    print(f"score {summary['score']:.1%} ({summary['correct']}/{summary['total']}), "
          f"{summary['failed']} failed requests; report: {summary['report']['markdown']}")
    if summary.get("warning"):
        print(f"WARNING: {summary['warning']}")
    return summary


if __name__ == "__main__":
    if "--once" in sys.argv:
        import asyncio

        asyncio.run(nightly_eval())
    else:
        nightly_eval.serve(name="nightly-eval", cron=CRON)

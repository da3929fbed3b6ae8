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
environment (OPENAI_API_KEY, OPENAI_BASE_URL — http://127.0.0.1:8765/v1 for the local server).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from batch_ops.evals import DEFAULT_MAX_DROP, prepare_requests, run_dir, score_and_report
from batch_ops.prefect import OpenAIBatchCredentials, download_batch_file, run_batch

EVAL_DIR = Path(os.environ.get("BATCH_OPS_EVAL_DIR", "eval_runs")).resolve()
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_EVAL_POLL_INTERVAL", "60"))
CRON = os.environ.get("BATCH_OPS_EVAL_CRON", "0 3 * * *")


def _run_id() -> str:
    return f"{flow_run.get_scheduled_start_time():%Y-%m-%dT%H%M%S}-{str(flow_run.get_id())[:8]}"


@task(cache_policy=NO_CACHE)
def build_requests(run_id: str) -> str:
    return str(prepare_requests(work_dir=EVAL_DIR / "work", run_id=run_id))


@task(cache_policy=NO_CACHE)
def score(requests_path: str, output: str | None, errors: str | None, batch: dict[str, Any], run_id: str,
          max_drop: float) -> dict[str, Any]:
    summary = score_and_report(
        request_path=requests_path, output_path=output, error_path=errors, report_dir=EVAL_DIR / "reports",
        run_id=run_id, pipeline="prefect", batch=batch, max_drop=max_drop,
    )
    create_markdown_artifact(
        key="nightly-eval-report",
        markdown=Path(summary["report"]["markdown"]).read_text(encoding="utf-8"),
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
    run_id = _run_id()
    requests_path = build_requests(run_id)
    result = await run_batch(input_path=requests_path, endpoint="/v1/chat/completions", credentials=credentials,
                             metadata={"pipeline": "nightly_eval"}, poll_interval=poll_interval)
    folder = run_dir(EVAL_DIR / "work", run_id)
    output = errors = None
    if result.output_file_id:
        output = str(await download_batch_file(result.output_file_id, folder / "output.jsonl",
                                               credentials=credentials))
    if result.error_file_id:
        errors = str(await download_batch_file(result.error_file_id, folder / "errors.jsonl",
                                               credentials=credentials))
    summary = score(requests_path, output, errors, result.model_dump(mode="json"), run_id, max_drop)
    print(f"score {summary['score']:.1%} ({summary['correct']}/{summary['total']}), "
          f"{summary['failed']} failed requests; report: {summary['report']['markdown']}")
    return summary


if __name__ == "__main__":
    if "--once" in sys.argv:
        import asyncio

        asyncio.run(nightly_eval())
    else:
        nightly_eval.serve(name="nightly-eval", cron=CRON)

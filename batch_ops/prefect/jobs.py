"""``run_batch_job``: a Prefect flow running a request file of any size as many batches.

The job is core's :class:`~batch_ops.jobs.BatchJob` (sharding, resubmission rounds, token-limit
back-off, recovery of expired and cancelled work, one merged output in input order, a state
file beside the output). The flow awaits it on the async client — no thread is held while
batches run — and publishes a table artifact with the summary. Running the flow again with the
same output path resumes the job: finished batches are never submitted again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact

from batch_ops.client import AsyncBatchClient
from batch_ops.jobs import BatchJob, JobProgress
from batch_ops.jsonl import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES
from batch_ops.prefect.credentials import OpenAIBatchCredentials, resolve_settings

__all__ = ["run_batch_job"]


@flow(name="run-batch-job")
async def run_batch_job(
    input_path: str,
    output_path: str,
    *,
    endpoint: str,
    credentials: OpenAIBatchCredentials | None = None,
    max_concurrent: int = 4,
    max_rounds: int = 3,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    metadata: dict[str, str] | None = None,
    prices: Mapping[str, Mapping[str, float]] | None = None,
    token_limit_backoff: float = 60.0,
    poll_interval: float = 60.0,
) -> dict[str, Any]:
    """Run ``input_path`` (any size) until every request is answered or accounted for.

    Returns the job summary: ``total``, ``succeeded``, ``failed``, ``batches``,
    ``resubmitted``, ``rounds``, ``usage`` (with ``cost_usd`` when ``prices`` is given),
    ``output_path`` and ``state_path``.

    Example:
        ```python
        summary = await run_batch_job("all.jsonl", "results.jsonl", endpoint="/v1/embeddings")
        ```
    """
    logger = get_run_logger()
    job = BatchJob.open(
        os.fspath(input_path), output_path=os.fspath(output_path), endpoint=endpoint, max_concurrent=max_concurrent,
        max_rounds=max_rounds, max_lines=max_lines, max_bytes=max_bytes, metadata=metadata, prices=prices,
        token_limit_backoff=token_limit_backoff,
    )
    logger.info("Job %s: %d requests in %d part(s); state %s", job.state.job_id, job.state.total,
                len(job.state.parts), job.state_path)

    def report(progress: JobProgress) -> None:
        logger.info("Job %s: %s", job.state.job_id, job.describe())

    client = AsyncBatchClient.shared(resolve_settings(credentials))
    summary = (await job.arun(client, poll_interval=poll_interval, on_step=report)).as_dict()
    tokens = summary["usage"]["tokens"]
    row = {k: summary[k] for k in ("total", "succeeded", "failed", "batches", "resubmitted", "rounds")}
    row.update({"input_tokens": tokens["input"], "cached_tokens": tokens["cached"], "output_tokens": tokens["output"],
                "reasoning_tokens": tokens["reasoning"], "cost_usd": summary["usage"].get("cost_usd"),
                "output_path": summary["output_path"]})
    await acreate_table_artifact(table=[row], key="openai-batch-job", description=f"Job {job.state.job_id}")
    logger.info("Job done: %d of %d succeeded, %d failed, %d batches; results in %s", summary["succeeded"],
                summary["total"], summary["failed"], summary["batches"], summary["output_path"])
    return summary

"""``run_batch_job``: a Prefect flow running a request file of any size as many batches.

The job is core's :class:`~batch_ops.jobs.BatchJob` (sharding, resubmission rounds, token-limit
back-off, recovery of expired and cancelled work, one merged output in input order, a state
file beside the output). The flow awaits it on the async client — no thread is held while
batches run — and publishes a table artifact with the summary. Running the flow again with the
same output path resumes the job: finished batches are never submitted again.

With workers that share no disk (a Docker or Kubernetes work pool), put the output on object
storage (``s3://…``, or a path inside a ``storage=`` block): the job keeps its state, parts and
results there, and a rerun on another worker resumes it (:mod:`batch_ops.jobs.store`).
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.filesystems import WritableFileSystem

from batch_ops.client import AsyncBatchClient
from batch_ops.jobs import BatchJob, JobConfig, JobProgress
from batch_ops.prefect.artifacts import artifact_keys
from batch_ops.prefect.credentials import OpenAIBatchCredentials, resolve_settings
from batch_ops.prefect.storage import block_target

__all__ = ["run_batch_job"]


@flow(name="run-batch-job")
async def run_batch_job(
    input_path: str | Path,
    output_path: str | Path,
    config: JobConfig,
    *,
    credentials: OpenAIBatchCredentials | None = None,
    poll_interval: float = 60.0,
    storage: WritableFileSystem | None = None,
    artifact_key: str = "openai-batch-job",
) -> dict[str, Any]:
    """Run ``input_path`` (any size) until every request is answered or accounted for.

    Args:
        input_path: the request file; any size — it is sharded. A local path or an object
            storage URL (``s3://``, ``gs://``, ``az://``), or a path inside ``storage``.
        output_path: the merged results; the job's state and work files sit beside it. On
            workers that share no disk, an object storage URL (or a path inside ``storage``).
        config: what to run and how (:class:`~batch_ops.jobs.JobConfig`: endpoint, concurrency,
            rounds, per-batch limits, metadata, prices, token-limit back-off). In the Prefect UI it
            is one form; from Python a ``JobConfig`` or a dict of its fields.
        credentials: the block to use; None reads ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
        poll_interval: seconds between polls of the running batches.
        storage: a ``WritableFileSystem`` block both paths are relative to (a saved block, passed
            by reference, keeps its credentials; see :mod:`batch_ops.prefect.storage`).
        artifact_key: the stem of the summary table's key (``<stem>-summary``; default
            ``openai-batch-job``).

    Returns the job summary: ``total``, ``succeeded``, ``failed``, ``batches``,
    ``resubmitted``, ``rounds``, ``usage`` (with ``cost_usd`` when ``prices`` is given),
    ``output_path`` and ``state_path``.

    Examples:
        ```python
        summary = await run_batch_job("all.jsonl", "results.jsonl", JobConfig(endpoint="/v1/embeddings"))
        ```
    """
    logger = get_run_logger()
    src: Any = os.fspath(input_path)
    out: Any = os.fspath(output_path)
    if storage is not None:
        src, out = block_target(storage, src), block_target(storage, out)
    # Opening reads the state (and, the first time, shards the input): file work, off the event loop.
    job = await asyncio.to_thread(BatchJob.open, src, output_path=out, config=config)
    logger.info("Job %s: %d requests in %d part(s); state %s", job.state.job_id, job.state.total,
                len(job.state.parts), job.state_path)

    def report(progress: JobProgress) -> None:
        for event in progress.events:
            logger.info("Job %s: %s", job.state.job_id, event)
        logger.info("Job %s: %s", job.state.job_id, job.describe())

    client = AsyncBatchClient.shared(resolve_settings(credentials))
    summary = (await job.arun(client, poll_interval=poll_interval, on_step=report)).as_dict()
    tokens = summary["usage"]["tokens"]
    row = {k: summary[k] for k in ("total", "succeeded", "failed", "batches", "resubmitted", "rounds")}
    row.update({"input_tokens": tokens["input"], "cached_tokens": tokens["cached"], "output_tokens": tokens["output"],
                "reasoning_tokens": tokens["reasoning"], "cost_usd": summary["usage"].get("cost_usd"),
                "output_path": summary["output_path"]})
    await acreate_table_artifact(table=[row], key=artifact_keys(artifact_key)[0], description=f"Job {job.state.job_id}")
    logger.info("Job done: %d of %d succeeded, %d failed, %d batches; results in %s", summary["succeeded"],
                summary["total"], summary["failed"], summary["batches"], summary["output_path"])
    return summary

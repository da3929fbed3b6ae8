"""Prefect artifacts for a batch: a progress bar while it runs, a summary table when it ends.

The contents (:func:`progress_percent`, :func:`summary_row`, :func:`artifact_key`) are pure
functions of the :class:`~batch_ops.models.Batch`; :class:`ProgressArtifact` and
:func:`create_summary_artifact` only talk to the Prefect API. An artifact is a report: when the
Prefect API cannot store one, the wait goes on and a warning is logged.

Example:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="batch_AB1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
    ...           created_at=0, request_counts={"total": 8, "completed": 5, "failed": 1})
    >>> progress_percent(b), artifact_key(b.id)
    (75.0, 'openai-batch-batch-ab1')
"""

from __future__ import annotations

import logging
import re
from typing import Any
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact

from batch_ops.models import Batch
from batch_ops.polling import describe
from batch_ops.prefect.events import batch_duration

__all__ = ["ProgressArtifact", "artifact_key", "create_summary_artifact", "progress_percent", "summary_row"]


def artifact_key(batch_id: str) -> str:
    """A Prefect artifact key for the batch: lowercase letters, digits and dashes only."""
    return "openai-batch-" + re.sub(r"[^a-z0-9-]+", "-", batch_id.lower()).strip("-")


def progress_percent(batch: Batch) -> float:
    """Share of requests that reached an end (0..100); 100 once the batch is terminal."""
    if batch.status.is_terminal:
        return 100.0
    counts = batch.request_counts
    if counts.total <= 0:
        return 0.0
    return round(min(counts.done / counts.total, 1.0) * 100, 1)


def summary_row(batch: Batch) -> dict[str, Any]:
    """One table row: status, counts, usage, file ids and duration."""
    usage = batch.usage
    return {
        "batch_id": batch.id,
        "status": batch.status.value,
        "endpoint": batch.endpoint,
        "requests_total": batch.request_counts.total,
        "requests_completed": batch.request_counts.completed,
        "requests_failed": batch.request_counts.failed,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "input_file_id": batch.input_file_id,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "duration_seconds": batch_duration(batch),
    }


async def create_summary_artifact(batch: Batch, *, logger: logging.Logger | logging.LoggerAdapter[Any]) -> UUID | None:
    """Store the summary table of a terminal batch under :func:`artifact_key`."""
    try:
        return await acreate_table_artifact(
            table=[summary_row(batch)],
            key=artifact_key(batch.id),
            description=f"OpenAI batch {batch.id}: {describe(batch)}",
        )
    except Exception as exc:  # a report must not fail the batch it reports on
        logger.warning("Could not store the summary artifact of batch %s: %s", batch.id, exc)
        return None


class ProgressArtifact:
    """A progress artifact for one batch, created at the first poll and updated on change.

    Pass :meth:`update` as the ``on_poll`` callback of ``AsyncBatchClient.batches.wait``.

    Example:
        ```python
        progress = ProgressArtifact(logger=get_run_logger())
        batch = await client.batches.wait(batch_id, on_poll=progress.update)
        ```
    """

    def __init__(self, *, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self._logger = logger
        self.artifact_id: UUID | None = None
        self._shown: tuple[float, str] | None = None
        self._warned = False

    async def update(self, batch: Batch) -> bool:
        """Show the batch's progress; True when it changed since the last call."""
        shown = (progress_percent(batch), describe(batch))
        if shown == self._shown:
            return False  # nothing new: spare the Prefect API one call per poll
        self._shown = shown
        description = f"OpenAI batch {batch.id}: {shown[1]}"
        try:
            if self.artifact_id is None:
                self.artifact_id = await acreate_progress_artifact(progress=shown[0], description=description)
            else:
                await aupdate_progress_artifact(artifact_id=self.artifact_id, progress=shown[0],
                                                description=description)
        except Exception as exc:  # progress is a display: the wait goes on, and tries again at the next change
            if not self._warned:
                self._warned = True
                self._logger.warning("Could not update the progress artifact of batch %s: %s", batch.id, exc)
        return True

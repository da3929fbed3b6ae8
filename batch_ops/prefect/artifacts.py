"""Prefect artifacts for a batch: a progress bar while it runs, a summary table when it ends.

The contents (:func:`progress_percent`, :func:`summary_row`) are pure functions of the
:class:`~batch_ops.models.Batch`; :class:`ProgressArtifact` and :func:`create_summary_artifact`
only talk to the Prefect API. An artifact is a report: when the Prefect API cannot store one,
the wait goes on and a warning is logged.

Both artifacts have stable keys, so the Prefect UI keeps their history under one name: the
summary table under ``openai-batch-summary`` and the progress bar under
``openai-batch-progress`` (:data:`DEFAULT_ARTIFACT_KEY` with ``-summary`` / ``-progress``).
``wait_for_batch`` and ``run_batch`` take ``artifact_key=`` to file a pipeline's batches under
keys of their own (``artifact_key="nightly-eval"``: ``nightly-eval-summary``, ...).

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="batch_AB1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
    ...           created_at=0, request_counts={"total": 8, "completed": 5, "failed": 1})
    >>> progress_percent(b), artifact_keys(DEFAULT_ARTIFACT_KEY)
    (75.0, ('openai-batch-summary', 'openai-batch-progress'))
"""

from __future__ import annotations

import logging
import re
from typing import Any
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, acreate_table_artifact, aupdate_progress_artifact

from batch_ops.models import Batch
from batch_ops.outcomes import describe
from batch_ops.prefect.events import batch_duration

__all__ = [
    "DEFAULT_ARTIFACT_KEY",
    "cost_rows",
    "create_cost_artifact",
    "ProgressArtifact",
    "artifact_keys",
    "create_summary_artifact",
    "progress_percent",
    "summary_row",
]

#: The stem of the artifacts' keys unless a task or flow is given another.
DEFAULT_ARTIFACT_KEY = "openai-batch"


def artifact_keys(stem: str) -> tuple[str, str]:
    """The (summary table, progress) keys for ``stem``, as Prefect accepts keys: lowercase letters,
    digits and dashes.

    Examples:
        >>> artifact_keys("Nightly Eval_2")
        ('nightly-eval-2-summary', 'nightly-eval-2-progress')
    """
    clean = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-") or DEFAULT_ARTIFACT_KEY
    return f"{clean}-summary", f"{clean}-progress"


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


async def create_summary_artifact(batch: Batch, *, logger: logging.Logger | logging.LoggerAdapter[Any],
                                  key: str = DEFAULT_ARTIFACT_KEY) -> UUID | None:
    """Store the summary table of a terminal batch under the summary key of ``key`` (:func:`artifact_keys`)."""
    try:
        return await acreate_table_artifact(
            table=[summary_row(batch)],
            key=artifact_keys(key)[0],
            description=f"OpenAI batch {batch.id}: {describe(batch)}",
        )
    except Exception as exc:  # a report must not fail the batch it reports on
        logger.warning("Could not store the summary artifact of batch %s: %s", batch.id, exc)
        return None


class ProgressArtifact:
    """A progress artifact for one batch, created at the first poll and updated on change.

    Pass :meth:`update` as the ``on_poll`` callback of ``AsyncBatchClient.batches.wait``.

    Examples:
        ```python
        progress = ProgressArtifact(logger=get_run_logger())
        batch = await client.batches.wait(batch_id, on_poll=progress.update)
        ```
    """

    def __init__(self, *, logger: logging.Logger | logging.LoggerAdapter[Any], key: str = DEFAULT_ARTIFACT_KEY) -> None:
        self._logger = logger
        self.key = artifact_keys(key)[1]
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
                self.artifact_id = await acreate_progress_artifact(progress=shown[0], key=self.key,
                                                                   description=description)
            else:
                await aupdate_progress_artifact(artifact_id=self.artifact_id, progress=shown[0],
                                                description=description)
        except Exception as exc:  # progress is a display: the wait goes on, and tries again at the next change
            if not self._warned:
                self._warned = True
                self._logger.warning("Could not update the progress artifact of batch %s: %s", batch.id, exc)
        return True


def cost_rows(estimate: dict[str, Any] | None, cost: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Estimate vs actual, one row per model (USD, batch prices), for the ``<stem>-cost`` table artifact.

    Examples:
        >>> cost_rows({"models": [{"model": "m", "requests": 2, "input_tokens": 10, "input_kind": "exact",
        ...            "output_bound": 20, "lower_usd": 0.1, "upper_usd": 0.5}], "price_table_date": "2026-11-19"},
        ...           {"models": [{"model": "m", "input_tokens": 10, "output_tokens": 4,
        ...                        "cost_usd": 0.2}]})[0]["actual_usd"]
        0.2
    """
    actual = {m["model"]: m for m in (cost or {}).get("models") or []}
    rows = []
    for m in (estimate or {}).get("models") or []:
        got = actual.pop(m["model"], {})
        rows.append({"model": m["model"], "requests": m["requests"],
                     "input_tokens": f"{m['input_tokens']} ({m['input_kind']})", "output_bound": m["output_bound"],
                     "estimate_usd": f"{m['lower_usd']:.6f}..{m['upper_usd']:.6f}",
                     "actual_input_tokens": got.get("input_tokens"), "actual_output_tokens": got.get("output_tokens"),
                     "actual_usd": got.get("cost_usd"),
                     "price_table_date": (estimate or {}).get("price_table_date")})
    for name, got in actual.items():  # answered by a model the estimate did not name
        rows.append({"model": name, "actual_input_tokens": got.get("input_tokens"),
                     "actual_output_tokens": got.get("output_tokens"), "actual_usd": got.get("cost_usd")})
    return rows


async def create_cost_artifact(estimate: dict[str, Any] | None, cost: dict[str, Any] | None, *,
                               logger: logging.Logger | logging.LoggerAdapter[Any],
                               key: str = DEFAULT_ARTIFACT_KEY) -> UUID | None:
    """Store estimate vs actual (:func:`cost_rows`) under ``<stem>-cost``."""
    try:
        return await acreate_table_artifact(table=cost_rows(estimate, cost), key=f"{artifact_keys(key)[0][:-8]}-cost",
                                            description="Batch cost: the estimate made before the upload, and the "
                                                        "actual bill from the results' usage (USD, batch prices)")
    except Exception as exc:  # a report must not fail the batch it reports on
        logger.warning("Could not store the cost artifact: %s", exc)
        return None

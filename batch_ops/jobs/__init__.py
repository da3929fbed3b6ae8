"""Jobs larger than one batch, and batches that come back imperfect.

``BatchJob`` shards, submits with bounded concurrency, recovers completed work from expired
and cancelled batches, resubmits retryable failures and token-limit refusals, and merges one
result per request in input order — resumable from its state file, never paying twice, one
worker stepping it at a time (its lease; a second worker waits: ``JobBusyError``/``busy``).

Examples:
    >>> from batch_ops.jobs import BatchJob, JobSummary
    >>> sorted(JobSummary.__dataclass_fields__)[:4]
    ['batches', 'budget_stop', 'cost_usd', 'duplicates']
"""

from __future__ import annotations

from batch_ops.errors import JobBusyError
from batch_ops.jobs.config import JobConfig
from batch_ops.jobs.harvest import RETRYABLE_CODES, UsageTotals, is_retryable
from batch_ops.jobs.runner import BatchJob, JobProgress, JobSummary
from batch_ops.jobs.state import JobState, PartState

__all__ = [
    "RETRYABLE_CODES",
    "BatchJob",
    "JobBusyError",
    "JobConfig",
    "JobProgress",
    "JobState",
    "JobSummary",
    "PartState",
    "UsageTotals",
    "is_retryable",
]

"""The local server answering as Together AI's Batch API does (``batch-ops serve --wire together``).

Together speaks OpenAI's paths with its own objects, and this module is the difference, applied to
the answers of the same store and processor: a batch is a *job* (``id`` a UUID, upper-case
``status``, ISO-8601 ``created_at``/``job_deadline``/``completed_at``, ``progress`` in percent,
``model_id``, no ``request_counts`` and no ``metadata``); a create answers ``{"job": {...},
"warning": ...}``, a list a bare JSON array of jobs; inputs are uploaded with
``purpose="batch-api"`` and their lines carry no ``method`` or ``url`` (the batch's endpoint).
What batch_ops' Together dialect reads is judged against this.

Examples:
    >>> job = together_job({"id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "status": "in_progress",
    ...     "input_file_id": "file-1", "endpoint": "/v1/chat/completions", "created_at": 0, "expires_at": 86400,
    ...     "request_counts": {"total": 4, "completed": 1, "failed": 1}, "metadata": {"k": "v"}})
    >>> job["status"], job["progress"], job["created_at"], "metadata" in job
    ('IN_PROGRESS', 50.0, '1970-01-01T00:00:00Z', False)
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from batch_ops.dialects.profiles import TOGETHER_LINES

__all__ = ["PURPOSE", "TOGETHER_LINES", "together_job"]

#: The upload purpose of a batch input on Together.
PURPOSE = "batch-api"
_STATUSES = {"cancelling": "CANCELING", "finalizing": "IN_PROGRESS"}


def _iso(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def together_job(batch: dict[str, Any], *, file_size: int = 0) -> dict[str, Any]:
    """Our batch object as a Together batch job."""
    status = str(batch.get("status") or "")
    counts = batch.get("request_counts") or {}
    total = counts.get("total") or 0
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    errors = (batch.get("errors") or {}).get("data") or []
    return {
        "id": batch["id"],
        "user_id": "user-local",
        "input_file_id": batch.get("input_file_id"),
        "file_size_bytes": file_size,
        "status": _STATUSES.get(status, status.upper()),
        "job_deadline": _iso(batch.get("expires_at")),
        "created_at": _iso(batch.get("created_at")),
        "endpoint": batch.get("endpoint"),
        "progress": round(100.0 * done / total, 2) if total else 0.0,
        "model_id": batch.get("model"),
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
        "error": "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict)) or None,
        "completed_at": _iso(batch.get("completed_at") or batch.get("failed_at") or batch.get("expired_at")
                             or batch.get("cancelled_at")),
    }

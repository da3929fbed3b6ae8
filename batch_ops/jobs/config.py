"""The parameters of a job, in one object: ``BatchJob``, the Airflow operator, the Prefect flow and
the CLI all take a :class:`JobConfig` (or its fields), so they are written and checked once.

Examples:
    >>> JobConfig.of(endpoint="/v1/embeddings", max_concurrent=8).max_concurrent
    8
    >>> JobConfig.of(endpoint="/v1/embeddings", max_concurrent=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.ConfigurationError: Invalid job settings: max_concurrent: ... (fix: run at least 1 ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_ops.errors import ConfigurationError
from batch_ops.jsonl import DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES

__all__ = ["JobConfig"]

_FIXES = {
    "max_concurrent": "run at least 1 batch at a time",
    "max_rounds": "use 0 (no resubmission) or more",
    "max_lines": f"use 1..{DEFAULT_MAX_LINES} requests per batch",
    "max_bytes": f"use 1..{DEFAULT_MAX_BYTES} bytes per batch",
    "token_limit_backoff": "use 0 or more seconds",
    "lease_ttl": "use 1 or more seconds (the default, 120, suits steps of any size)",
}


class JobConfig(BaseModel):
    """What a job over many batches runs, and how.

    Attributes:
        endpoint: the batch endpoint every request targets.
        max_concurrent: batches running at once.
        max_rounds: extra rounds for retryable failures (0: no resubmission).
        max_lines / max_bytes: per-batch limits used for sharding.
        metadata: added to every batch (with the job id and part name).
        prices: USD per 1M tokens per model, for the cost estimate.
        token_limit_backoff: seconds before resubmitting a part refused with
            ``token_limit_exceeded``; doubles per refusal, at most an hour.
        lease_ttl: seconds the job's lease on object storage lives without a renewal: a worker that
            died while stepping the job holds it up that long (see :mod:`batch_ops.jobs.lease`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str
    max_concurrent: int = Field(default=4, ge=1)
    max_rounds: int = Field(default=3, ge=0)
    max_lines: int = Field(default=DEFAULT_MAX_LINES, ge=1, le=DEFAULT_MAX_LINES)
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1, le=DEFAULT_MAX_BYTES)
    metadata: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, dict[str, float]] | None = None
    token_limit_backoff: float = Field(default=60.0, ge=0)
    lease_ttl: float = Field(default=120.0, ge=1)

    @classmethod
    def of(cls, config: JobConfig | Mapping[str, Any] | None = None, **options: Any) -> JobConfig:
        """A config from an existing one (or a dict of its fields) with ``options`` on top.

        Raises:
            ConfigurationError: naming each field that is wrong and how to fix it.
        """
        base: dict[str, Any] = {}
        if isinstance(config, JobConfig):
            base = config.model_dump()
        elif config is not None:
            base = dict(config)
        given = {k: v for k, v in options.items() if v is not None}
        try:
            return cls.model_validate({**base, **given})
        except ValidationError as exc:
            parts = []
            for e in exc.errors():
                field = ".".join(str(x) for x in e["loc"]) or "config"
                fix = _FIXES.get(str(e["loc"][0]) if e["loc"] else "", "see JobConfig's fields")
                parts.append(f"{field}: {e['msg']} (fix: {fix})")
            raise ConfigurationError("Invalid job settings: " + "; ".join(parts)) from None

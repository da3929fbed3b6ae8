"""The parameters of a job, in one object: ``BatchJob``, the Airflow operator, the Prefect flow and
the CLI all take a :class:`JobConfig` (or its fields), so they are written and checked once.

Examples:
    >>> JobConfig.of(endpoint="/v1/embeddings", max_concurrent=8).max_concurrent
    8
    >>> JobConfig.of(endpoint="/v1/embeddings", max_concurrent=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.ConfigurationError: Invalid job settings: max_concurrent: ... (fix: run at least 1 ...)
    >>> JobConfig.of(endpoint="/v1/chat/completions", repair_rounds=1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.ConfigurationError: Invalid job settings: repair_rounds: ... (fix: give the response_schema ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from batch_ops.dialects import OPENAI, Dialect, dialect_named
from batch_ops.errors import ConfigurationError
from batch_ops.structured import ResponseSchema

__all__ = ["JobConfig"]

#: The keys of :meth:`ResponseSchema.to_json`, as ``JobConfig.response_schema`` keeps a schema.
_DUMPED = frozenset({"name", "schema", "strict", "model"})

_FIXES = {
    "max_concurrent": "run at least 1 batch at a time",
    "max_rounds": "use 0 (no resubmission) or more",
    "max_lines": "use 1 up to the provider's most requests per batch (OpenAI: 50,000)",
    "max_bytes": "use 1 up to the provider's largest batch file in bytes (OpenAI: 200 MB)",
    "provider": "use the name of a batch API batch_ops speaks (see batch_ops.dialects.DIALECTS)",
    "token_limit_backoff": "use 0 or more seconds",
    "lease_ttl": "use 1 or more seconds (the default, 120, suits steps of any size)",
    "repair_rounds": "give the response_schema (a pydantic model or a JSON Schema) the answers must follow, or "
                     "use repair_rounds=0",
}


class JobConfig(BaseModel):
    """What a job over many batches runs, and how.

    Attributes:
        endpoint: the batch endpoint every request targets.
        max_concurrent: batches running at once.
        max_rounds: extra rounds for retryable failures (0: no resubmission).
        provider: the batch API the job runs on (a dialect's name, as ``BATCH_OPS_PROVIDER`` spells it;
            None: OpenAI's rules): its request lines are checked by that API's rules, and its parts
            fit that API's limits. Running the job with a client of another provider is refused.
        max_lines / max_bytes: per-batch limits used for sharding; None (the default): the
            provider's own (``Dialect.limits``), and never more than them.
        metadata: added to every batch (with the job id and part name).
        prices: USD per 1M tokens per model (batch prices; ``"*"``: any model), for the estimate, the bill and
            the budget; default genai-prices' table.
        max_cost_usd: a hard budget in USD for the whole job (every part, round and resubmission): a part
            whose upper bound, with what the job spent or may still spend, would pass it is not submitted;
            the job stops submitting there, its remaining requests end as ``budget_exceeded`` failures,
            and the summary says how far it got.
        token_limit_backoff: seconds before resubmitting a part refused with
            ``token_limit_exceeded``; doubles per refusal, at most an hour.
        lease_ttl: seconds the job's lease on object storage lives without a renewal: a worker that
            died while stepping the job holds it up that long (see :mod:`batch_ops.jobs.lease`).
        response_schema: a JSON Schema (or a pydantic model, kept as its schema) every answer must follow:
            written into each part's requests in the provider's native form, checked against its schema
            subset before the first upload (docs/structured-outputs.md). Read the merged results with
            ``batch_ops.structured.parse_line``.
        repair_rounds: with ``response_schema``, up to this many repair rounds per part
            (:mod:`batch_ops._repair`): after a part's batch completed, only the requests whose answers are
            invalid are resubmitted, as the next attempt of the part's chain (paid once, however many workers
            step the job); the merged results hold each request's latest answer, and invalid ones that remain
            are delivered as they are. A round the budget (``max_cost_usd``) has no room for is not submitted
            and is not an error: the part keeps what was paid, the summary says so. 0 (the default): none.
            Fixed when the job starts, as the schema is.
        repair_feedback: put each invalid answer's fault in its repaired request (a new user turn).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str
    max_concurrent: int = Field(default=4, ge=1)
    max_rounds: int = Field(default=3, ge=0)
    provider: str | None = None
    max_lines: int = Field(default=0, ge=1)
    max_bytes: int = Field(default=0, ge=1)
    metadata: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, dict[str, float]] | None = None
    max_cost_usd: float | None = Field(default=None, ge=0)
    token_limit_backoff: float = Field(default=60.0, ge=0)
    lease_ttl: float = Field(default=120.0, ge=1)
    response_schema: dict[str, Any] | None = None
    repair_rounds: int = Field(default=0, ge=0)
    repair_feedback: bool = False

    @field_validator("response_schema", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> dict[str, Any] | None:
        """A pydantic model or a JSON Schema, kept as :meth:`ResponseSchema.to_json` (checked now); a config's own
        dump (``JobConfig.of(config)``, the Airflow operator's templated dict) holds that form already.

        Examples:
            >>> city = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
            >>> once = JobConfig.of(endpoint="/v1/chat/completions", response_schema=city)
            >>> JobConfig.of(once).response_schema == JobConfig.of(once.model_dump()).response_schema == (
            ...     once.response_schema)
            True
        """
        if value is None:
            return None
        if isinstance(value, Mapping) and set(value) == _DUMPED and isinstance(value["schema"], Mapping):
            return ResponseSchema.from_json(value).to_json()  # not a JSON Schema: one kept by this field
        return ResponseSchema.of(value).to_json()

    @field_validator("repair_rounds")
    @classmethod
    def _repair_needs_schema(cls, value: int, info: ValidationInfo) -> int:
        # response_schema is declared first, so it is validated (or failed: then absent) by now.
        if value and info.data.get("response_schema") is None:
            raise ValueError(f"repair_rounds={value} needs a response_schema: a repair round resubmits the answers "
                             "that do not follow it")
        return value

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        return None if value is None else dialect_named(value).name  # ValueError names the known ones

    @model_validator(mode="before")
    @classmethod
    def _provider_limits(cls, data: Any) -> Any:
        """Unset limits are the provider's; given ones may not pass them (checked after)."""
        if isinstance(data, Mapping):
            data = dict(data)
            limits = _dialect(data.get("provider")).limits
            if data.get("max_lines") is None:
                data["max_lines"] = limits.max_requests
            if data.get("max_bytes") is None:
                data["max_bytes"] = limits.max_file_bytes
        return data

    @model_validator(mode="after")
    def _within_provider_limits(self) -> JobConfig:
        limits = self.dialect.limits
        if self.max_lines > limits.max_requests:
            raise ValueError(f"max_lines {self.max_lines:,} is over {self.dialect.title}'s {limits.max_requests:,} "
                             "requests per batch")
        if self.max_bytes > limits.max_file_bytes:
            raise ValueError(f"max_bytes {self.max_bytes:,} is over {self.dialect.title}'s "
                             f"{limits.max_file_bytes:,} bytes per batch")
        return self

    @property
    def dialect(self) -> Dialect:
        """The dialect of :attr:`provider` (OpenAI's when None): its line shape and limits."""
        return _dialect(self.provider)

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


def _dialect(provider: Any) -> Dialect:
    if not isinstance(provider, str) or not provider:
        return OPENAI
    try:
        return dialect_named(provider)
    except ValueError:
        return OPENAI  # the field's own validator reports it

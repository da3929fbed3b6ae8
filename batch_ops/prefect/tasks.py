"""Prefect tasks for the Batch API: submit, upload, create, wait, download, cancel.

Every task is ``async``: in an async flow, await them, and run many at once with
``asyncio.gather`` — a thousand waits share one event loop and one pooled HTTP client per
credentials (``AsyncBatchClient.shared``), and none holds a thread while the batch runs. In a
*sync* flow, Prefect 3 does not run async tasks called directly (the call returns a coroutine);
use ``.submit()`` or ``.map()`` and ``.result()``, which run them on the flow's task runner.

The tasks loop around the core and decide nothing themselves: polling, back-off, deadlines,
retries, attempt chains and input validation are ``batch_ops``'s, so the Airflow provider and
these tasks behave alike. ``submit_batch`` (and ``create_batch``) pay through core's submission
core: a retried task, or a retried flow run, finds the batch its earlier try created; after a
failed or expired one it makes the next attempt, carrying only the requests without a success.
No task result, log line, artifact or event carries the API key.

Examples:
    ```python
    from batch_ops.prefect import create_batch, upload_batch_file, wait_for_batch
    from prefect import flow

    @flow
    async def nightly() -> str | None:
        file_id = await upload_batch_file("requests.jsonl", endpoint="/v1/chat/completions")
        batch = await create_batch(file_id, endpoint="/v1/chat/completions")
        result = await wait_for_batch(batch.batch_id, poll_interval=60)
        return result.output_file_id
    ```
"""

import asyncio
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.filesystems import WritableFileSystem
from prefect.logging import get_logger, get_run_logger
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from batch_ops import AttemptChain, RepairRound, ResponseSchema, Source, Submission, SubmitSpec, storage
from batch_ops.chain import Attempt, summary_of
from batch_ops.client import AsyncBatchClient
from batch_ops.errors import BatchOpsError, BatchTimeoutError
from batch_ops.identity import FLOW_RUN_METADATA_KEY, RunIdentity, lookback_start, prefect_owner_metadata
from batch_ops.identity import LOOKBACK_SKEW as LOOKBACK_SKEW  # the old name here; core's constant
from batch_ops.jsonl import (
    RuleOptions,
    holds_neutral_requests,
    request_file,
    translate_file,
    validate_file,
    write_requests,
)
from batch_ops.models import Batch, BatchStatus, RequestCounts, ResultLine, Usage
from batch_ops.outcomes import DEFAULT_FAIL_ON, DEFAULT_WAIT_TIMEOUT, OutcomePolicy, describe
from batch_ops.prefect.artifacts import (
    DEFAULT_ARTIFACT_KEY,
    ProgressArtifact,
    create_cost_artifact,
    create_summary_artifact,
)
from batch_ops.prefect.credentials import OpenAIBatchCredentials, resolve_settings
from batch_ops.prefect.events import emit_batch_event
from batch_ops.prefect.storage import block_target
from batch_ops.process_state import STATE
from batch_ops.results import DEFAULT_MAX_RECORDS, result_records
from batch_ops.settings import ClientSettings
from batch_ops.storage import Location, StorageTarget, display
from batch_ops.structured import structured_summary

__all__ = [
    "DEFAULT_WAIT_TIMEOUT",
    "FLOW_RUN_METADATA_KEY",
    "BatchResult",
    "cancel_batch",
    "create_batch",
    "download_batch_file",
    "read_batch_results",
    "run_started",
    "batches_submitted_by",
    "settings_used_by",
    "submit_batch",
    "task_identity",
    "task_idempotency_key",
    "upload_batch_file",
    "wait_for_batch",
]

PathLike = str | os.PathLike[str]
#: The strictest outcome policy: only a batch that completed with every request answered passes.
_STRICT = OutcomePolicy(fail_on_request_failures=True)


class BatchResult(BaseModel):
    """What the batch tasks and ``run_batch`` return: ids, status, counts and usage.

    The same fields as the Airflow operator's XCom; ``model_dump()`` gives that dict. The first
    seven describe the latest attempt; ``batch_ids`` lists every attempt of the key, oldest
    first, and ``chain_request_counts`` / ``chain_usage`` cover them all.

    Examples:
        >>> from batch_ops.models import Batch
        >>> r = BatchResult.from_batch(Batch(id="batch_1", endpoint="/v1/embeddings", input_file_id="file-in",
        ...     status="completed", output_file_id="file-out", created_at=0))
        >>> r.status.value, r.output_file_id, r.request_counts.total, r.batch_ids
        ('completed', 'file-out', 0, ['batch_1'])
    """

    model_config = ConfigDict(frozen=True)

    batch_id: str
    status: BatchStatus
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts
    usage: Usage | None = None
    batch_ids: list[str] = []
    chain_request_counts: RequestCounts | None = None
    chain_usage: Usage | None = None
    #: The cost estimate made before the upload (:meth:`batch_ops.cost.Estimate.as_dict`), or None.
    estimate: dict[str, Any] | None = None
    #: The actual bill from the results' usage (:meth:`batch_ops.cost.Bill.as_dict`; ``run_batch``), or None.
    cost: dict[str, Any] | None = None
    #: With a response schema: the schema and each repair round (``batch_ops.structured.structured_summary``);
    #: ``read_batch_results`` reads the answers against it.
    structured: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The summary contract: ``structured`` only when there is a schema (the same keys as the XCom)."""
        data: dict[str, Any] = handler(self)
        if data.get("structured") is None:
            data.pop("structured", None)
        return data

    @classmethod
    def from_batch(cls, batch: Batch) -> "BatchResult":
        return cls.model_validate(summary_of(batch))

    @classmethod
    def from_chain(cls, chain: AttemptChain, *, structured: Mapping[str, Any] | None = None) -> "BatchResult":
        return cls.model_validate({**chain.summary(), "structured": structured})


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # called through ``.fn`` outside any run
        return get_logger("batch_ops.prefect")


def _client(credentials: OpenAIBatchCredentials | None) -> AsyncBatchClient:
    return AsyncBatchClient.shared(resolve_settings(credentials))


def _flow_run_id() -> str | None:
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    return None


def run_start_time(flow_run: Any = None) -> Any:
    """When the flow run (default: the running one) began: its ``created`` time, kept over its retries; or None."""
    if flow_run is None:
        ctx = FlowRunContext.get()
        flow_run = ctx.flow_run if ctx is not None else None
    return getattr(flow_run, "created", None) or getattr(flow_run, "expected_start_time", None)


def run_started(flow_run: Any = None) -> float | None:
    """Where a lookup for the flow run's batches may stop: when it began, less the clock skew
    allowance (:func:`batch_ops.identity.lookback_start`), or None.

    A batch of a run cannot predate the run: the key lookup (a scan of the batch list) stops there
    instead of going back a week. The run's ``created`` time is kept over its retries.
    """
    return lookback_start(run_start_time(flow_run))


def task_identity() -> RunIdentity | None:
    """The running task as core's :class:`~batch_ops.identity.RunIdentity`, or None outside a task.

    Its key is derived from what a retry keeps: the flow run id and the task's place in it (its
    task key and dynamic key, which Prefect numbers in call order, again from 0 when the flow run
    is retried). So a retried task, and the same call in a retried flow run, find the batch the
    earlier try created instead of billing a second one. Calls made concurrently may be numbered in
    another order on a retry: pass ``idempotency_key`` yourself there.
    """
    task_ctx = TaskRunContext.get()
    if task_ctx is None:
        return None
    run = task_ctx.task_run
    return RunIdentity.prefect_task(flow_run_id=run.flow_run_id, task_key=run.task_key, dynamic_key=run.dynamic_key,
                                    started=run_start_time())


def task_idempotency_key() -> str | None:
    """The idempotency key of the running task, or None outside a task (see :func:`task_identity`)."""
    identity = task_identity()
    return identity.key if identity is not None else None


# Settings used by create_batch per flow run, so an on_cancellation hook running in this process
# reaches the same API with the same key, even from a block that was never saved. Bounded: it only
# has to outlive a running flow. In the process state (batch_ops.process_state), never in a module
# global: it holds API keys, and Prefect pickles batch_ops by value into work-pool bundles.
# Insertion order is the recency order (a re-used run moves to the end).
_RUN_SETTINGS = "prefect.run_settings"
_RUN_SETTINGS_MAX = 1024


def _run_settings() -> dict[str, list[ClientSettings]]:
    return STATE.slot(_RUN_SETTINGS, dict)


def _remember_settings(flow_run_id: str, settings: ClientSettings) -> None:
    runs = _run_settings()
    with STATE.lock(_RUN_SETTINGS):
        known = runs.pop(flow_run_id, [])
        runs[flow_run_id] = known  # now the most recent
        if settings not in known:
            known.append(settings)
        while len(runs) > _RUN_SETTINGS_MAX:
            del runs[next(iter(runs))]  # the least recently used run


def settings_used_by(flow_run_id: str) -> list[ClientSettings]:
    """Settings ``create_batch`` used in this process for the flow run (empty when none)."""
    runs = _run_settings()
    with STATE.lock(_RUN_SETTINGS):
        return list(runs.get(flow_run_id, ()))


# The batches each flow run submitted in this process (made or attached), with the settings that reach
# them: what an on_cancellation hook running here cancels even when the batch cannot say whose it is
# (Anthropic's batches carry no metadata, Gemini's only our key). Bounded like the settings above.
_RUN_BATCHES = "prefect.run_batches"


def _remember_batch(flow_run_id: str, batch_id: str, settings: ClientSettings) -> None:
    runs: dict[str, dict[str, ClientSettings]] = STATE.slot(_RUN_BATCHES, dict)
    with STATE.lock(_RUN_BATCHES):
        known = runs.pop(flow_run_id, {})
        runs[flow_run_id] = known  # now the most recent
        known.pop(batch_id, None)
        known[batch_id] = settings
        while len(known) > _RUN_SETTINGS_MAX:
            del known[next(iter(known))]
        while len(runs) > _RUN_SETTINGS_MAX:
            del runs[next(iter(runs))]  # the least recently used run


def batches_submitted_by(flow_run_id: str) -> dict[str, ClientSettings]:
    """The batches the flow run submitted in this process, by id, with the settings that reach each
    (empty when none)."""
    runs: dict[str, dict[str, ClientSettings]] = STATE.slot(_RUN_BATCHES, dict)
    with STATE.lock(_RUN_BATCHES):
        return dict(runs.get(flow_run_id, {}))


def _prepare_input(
    source: StorageTarget | Iterable[Mapping[str, Any]], rules: RuleOptions
) -> tuple[Path, int, Path | None]:
    """Validate a request file (copied first when on object storage), or write requests to a validated
    temporary file (in a thread), by ``rules`` (the provider's: ``Dialect.line_rules``)."""
    local = isinstance(source, (str, os.PathLike)) and not storage.is_remote(source)
    if local:
        path = request_file(source)  # type: ignore[arg-type]  # a missing file fails as bad input, naming the fix
        if not holds_neutral_requests(path):
            return path, validate_file(path, **rules).lines, None
    fd, name = tempfile.mkstemp(prefix="batch_ops_requests_", suffix=".jsonl")
    os.close(fd)
    tmp = Path(name)
    try:
        if local:
            lines = translate_file(path, tmp, **rules).lines  # neutral chat requests, in the provider's words
        elif isinstance(source, (str, os.PathLike, Location)) or storage.is_path_object(source):
            staged = storage.stage(source, tmp)  # on object storage
            if holds_neutral_requests(staged):
                copy = staged.rename(tmp.with_name(tmp.name + ".neutral"))
                try:
                    lines = translate_file(copy, tmp, **rules).lines
                finally:
                    copy.unlink(missing_ok=True)
            else:
                lines = validate_file(staged, **rules).lines
        else:
            lines = write_requests(source, tmp, **rules).lines
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, lines, tmp


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------


@task(name="upload_batch_file", cache_policy=NO_CACHE)
async def upload_batch_file(
    source: PathLike | Iterable[Mapping[str, Any]],
    *,
    endpoint: str | None = None,
    credentials: OpenAIBatchCredentials | None = None,
    storage: WritableFileSystem | None = None,
) -> str:
    """Validate requests and upload them as a batch input file; return the file id.

    Nothing is uploaded when a line is invalid: the task fails with ``InputValidationError``
    naming each line, the rule and the fix. The upload is streamed from disk.

    Args:
        source: a JSONL request file, or request dicts (``url`` and ``method`` may be left out
            when ``endpoint`` is given).
        endpoint: the batch endpoint every line must target, e.g. ``/v1/chat/completions``.
        credentials: the block to use; None reads ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
        storage: a ``WritableFileSystem`` block that ``source`` (a path) is relative to.

    Examples:
        ```python
        file_id = await upload_batch_file("requests.jsonl", endpoint="/v1/chat/completions")
        ```
    """
    client = _client(credentials)
    given: Any = source
    if storage is not None and isinstance(source, (str, os.PathLike)):
        given = block_target(storage, os.fspath(source))
    path, lines, tmp = await asyncio.to_thread(_prepare_input, given, client.dialect.line_rules(endpoint))
    try:
        uploaded = await client.files.upload(path)
    finally:
        if tmp is not None:
            await asyncio.to_thread(tmp.unlink, True)
    _logger().info("Uploaded %d requests as file %s", lines, uploaded.id)
    return uploaded.id


async def _submit(
    source: Source | PathLike | Iterable[Mapping[str, Any]],
    *,
    endpoint: str = "",
    credentials: OpenAIBatchCredentials | None,
    metadata: Mapping[str, str] | None,
    completion_window: str,
    output_expires_after: Mapping[str, Any] | None,
    idempotency_key: str | None,
    fail_on: Collection[BatchStatus | str],
    fail_on_request_failures: bool,
    since: float | None = None,
    response_schema: Any = None,
    max_cost_usd: float | None = None,
    prices: Mapping[str, Any] | None = None,
) -> Submission:
    """Drive core's submission core with the run's key and tags; log what it did."""
    settings = resolve_settings(credentials)
    client = AsyncBatchClient.shared(settings)
    flow_run_id = _flow_run_id()
    if flow_run_id is not None:
        _remember_settings(flow_run_id, settings)
    # Who submits: the task (its derived key, and a lookup no further back than its run's start) unless the
    # caller names the work; the batch's owner is the flow run either way (cancelling it cancels the batch).
    identity = (task_identity() if idempotency_key is None else None) or RunIdentity(
        idempotency_key, prefect_owner_metadata(flow_run_id))
    submission = await client.submit_spec(source, SubmitSpec.of(
        endpoint=endpoint, completion_window=completion_window, metadata=metadata,
        output_expires_after=output_expires_after, since=since, identity=identity,
        fail_on=fail_on, fail_on_request_failures=fail_on_request_failures, response_schema=response_schema,
        max_cost_usd=max_cost_usd, prices=prices,
    ))
    if flow_run_id is not None:
        _remember_batch(flow_run_id, submission.batch.id, settings)
    submission.log(_logger())
    return submission


async def _repair(
    source: PathLike | Iterable[Mapping[str, Any]],
    chain: AttemptChain,
    *,
    endpoint: str = "",
    credentials: OpenAIBatchCredentials | None,
    metadata: Mapping[str, str] | None = None,
    completion_window: str = "24h",
    output_expires_after: Mapping[str, Any] | None = None,
    response_schema: Any,
    round: int = 1,
    feedback: bool = False,
    storage: WritableFileSystem | None = None,
    max_cost_usd: float | None = None,
    prices: Mapping[str, Any] | None = None,
) -> RepairRound:
    """One repair round of ``chain`` (core's: only the invalid answers' requests, as its next attempt), the
    batch owned by this flow run like the first; logs what it found and did."""
    given: Any = source
    if storage is not None and isinstance(source, (str, os.PathLike)):
        given = block_target(storage, os.fspath(source))
    settings = resolve_settings(credentials)
    identity = RunIdentity(None, prefect_owner_metadata(_flow_run_id()))
    spec = SubmitSpec.of(endpoint=endpoint, completion_window=completion_window, metadata=metadata,
                         output_expires_after=output_expires_after, identity=identity,
                         response_schema=response_schema, max_cost_usd=max_cost_usd, prices=prices)
    done: RepairRound = await AsyncBatchClient.shared(settings).repair(given, spec, chain, round=round,
                                                                       feedback=feedback)
    logger = _logger()
    # A round the budget refused is a warning, not a failure (core's decision, batch_ops._repair).
    (logger.warning if done.refused else logger.info)("%s", done.line())
    if done.submission is not None:
        done.submission.log(logger)
    return done


#: One repair round as a task (``run_batch`` runs one per round, then waits for its batch).
_repair_task = task(name="repair_batch", cache_policy=NO_CACHE)(_repair)


async def bill_chain(chain: AttemptChain, *, credentials: OpenAIBatchCredentials | None,
                     estimate: dict[str, Any] | None, prices: Mapping[str, Any] | None,
                     key: str = DEFAULT_ARTIFACT_KEY) -> dict[str, Any] | None:
    """The chain's actual bill (plain JSON), logged and stored with the estimate in the ``<stem>-cost`` artifact;
    None when it cannot be made (it never fails the run: the batch already ran)."""
    logger = _logger()
    models = (estimate or {}).get("models") or []
    try:
        paid = await _client(credentials).bill(chain, model=models[0]["model"] if models else None, prices=prices)
    except BatchOpsError as exc:
        logger.warning("No actual cost for this run: %s", exc)
        cost = None
    else:
        logger.info("%s", paid.summary())
        cost = paid.as_dict()
    await create_cost_artifact(estimate, cost, logger=logger, key=key)
    return cost


def estimate_of(submission: Submission) -> dict[str, Any] | None:
    """The submission's cost estimate as plain JSON (None when nothing was created or it could not be made)."""
    return submission.estimate.as_dict() if submission.estimate is not None else None


@task(name="submit_batch", cache_policy=NO_CACHE)
async def submit_batch(
    source: PathLike | Iterable[Mapping[str, Any]],
    *,
    endpoint: str = "",
    credentials: OpenAIBatchCredentials | None = None,
    metadata: Mapping[str, str] | None = None,
    completion_window: str = "24h",
    output_expires_after: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
    fail_on_request_failures: bool = False,
    since: float | None = None,
    storage: WritableFileSystem | None = None,
    response_schema: Any = None,
    max_cost_usd: float | None = None,
    prices: Mapping[str, Any] | None = None,
) -> BatchResult:
    """Validate, upload and create a batch, at most once per key; safe to retry.

    The key's attempt chain is looked up before anything is uploaded: a batch an earlier try
    created is returned if it is running or ended acceptably; after an outcome ``fail_on`` /
    ``fail_on_request_failures`` reject, the next attempt carries only the requests without a
    success anywhere in the chain. Nothing is uploaded when a line is invalid.

    Args:
        source: a JSONL request file (a local path, an ``s3://``/``gs://``/``az://`` URL), or
            request dicts (``url``/``method`` may be left out).
        endpoint: the batch endpoint, e.g. ``/v1/chat/completions``.
        metadata: up to 14 string pairs of your own (batch_ops adds two of the API's 16).
        idempotency_key: names the work; default: derived from the flow run and this task's
            place in it (see :func:`task_idempotency_key`).
        storage: a ``WritableFileSystem`` block that ``source`` (a path) is relative to
            (see :mod:`batch_ops.prefect.storage`).
        fail_on: terminal statuses that call for a new attempt on a retry.
        fail_on_request_failures: a completed batch with failed requests calls for one too.
        since: how far back (epoch seconds) the key's batches are looked for; default: when the
            flow run began for a derived key (its batches cannot be older), else the client's
            ``idempotency_lookback``.
        response_schema: a pydantic model or a JSON Schema the answers must follow (structured
            outputs: written into each request in the provider's native form, its schema subset
            checked before upload; docs/structured-outputs.md).
        max_cost_usd: a hard budget in USD for the key's whole chain: refused before upload with
            ``BudgetExceededError`` when the chain's spend plus this attempt's upper bound passes it.
        prices: price overrides, ``{"model": {"input": .., "output": ..}}`` in USD per 1M tokens.

    Examples:
        ```python
        batch = await submit_batch("requests.jsonl", endpoint="/v1/chat/completions", idempotency_key="nightly-1")
        ```
    """
    submission = await _submit_from(source, endpoint=endpoint, credentials=credentials, metadata=metadata,
                                    completion_window=completion_window, output_expires_after=output_expires_after,
                                    idempotency_key=idempotency_key, fail_on=fail_on,
                                    fail_on_request_failures=fail_on_request_failures, since=since, storage=storage,
                                    response_schema=response_schema, max_cost_usd=max_cost_usd, prices=prices)
    schema = None if response_schema is None else ResponseSchema.of(response_schema)
    return BatchResult.from_chain(submission.chain, structured=None if schema is None else structured_summary(
        schema, [])).model_copy(update={"estimate": estimate_of(submission)})


async def _submit_from(
    source: PathLike | Iterable[Mapping[str, Any]],
    *,
    endpoint: str,
    credentials: OpenAIBatchCredentials | None,
    metadata: Mapping[str, str] | None,
    completion_window: str,
    output_expires_after: Mapping[str, Any] | None,
    idempotency_key: str | None,
    fail_on: Collection[BatchStatus | str],
    fail_on_request_failures: bool,
    since: float | None,
    storage: WritableFileSystem | None,
    response_schema: Any = None,
    max_cost_usd: float | None = None,
    prices: Mapping[str, Any] | None = None,
) -> Submission:
    """:func:`submit_batch`'s work: ``source`` read through the ``storage`` block, if one is given."""
    given: Any = source
    if storage is not None and isinstance(source, (str, os.PathLike)):
        given = block_target(storage, os.fspath(source))
    return await _submit(given, endpoint=endpoint, credentials=credentials, metadata=metadata,
                         completion_window=completion_window, output_expires_after=output_expires_after,
                         idempotency_key=idempotency_key, fail_on=fail_on,
                         fail_on_request_failures=fail_on_request_failures, since=since,
                         response_schema=response_schema, max_cost_usd=max_cost_usd, prices=prices)


#: ``submit_batch`` returning the whole :class:`~batch_ops.Submission` (its chain, whether every request
#: already succeeded): what ``run_batch`` needs to report the chain it submitted to.
_submit_task = task(name="submit_batch", cache_policy=NO_CACHE)(_submit_from)


@task(name="create_batch", cache_policy=NO_CACHE)
async def create_batch(
    input_file_id: str,
    *,
    endpoint: str,
    credentials: OpenAIBatchCredentials | None = None,
    metadata: Mapping[str, str] | None = None,
    completion_window: str = "24h",
    output_expires_after: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> BatchResult:
    """Create a batch from an uploaded file; safe to retry.

    The batch's ``metadata`` carries an idempotency key (by default derived from the flow run
    and this task's place in it, stable over task and flow-run retries) and the flow run id. A
    retried task finds the batch its earlier attempt created instead of billing a second one;
    after a failed or expired batch it creates the next attempt (see :func:`submit_batch`).

    Args:
        input_file_id: the id ``upload_batch_file`` returned.
        endpoint: the endpoint of every request in the file.
        metadata: up to 14 string pairs of your own (batch_ops adds two of the API's 16).
        completion_window: only ``"24h"`` exists.
        output_expires_after: ``{"anchor": "created_at", "seconds": 3600..2592000}``.
        idempotency_key: overrides the derived key.

    Examples:
        ```python
        batch = await create_batch(file_id, endpoint="/v1/chat/completions", metadata={"run": "nightly"})
        ```
    """
    submission = await _submit(Source(file_id=input_file_id), endpoint=endpoint, credentials=credentials,
                               metadata=metadata, completion_window=completion_window,
                               output_expires_after=output_expires_after, idempotency_key=idempotency_key,
                               fail_on=DEFAULT_FAIL_ON, fail_on_request_failures=False)
    return BatchResult.from_chain(submission.chain)


@task(name="wait_for_batch", cache_policy=NO_CACHE)
async def wait_for_batch(
    batch_id: str,
    *,
    credentials: OpenAIBatchCredentials | None = None,
    poll_interval: float = 30.0,
    max_poll_interval: float | None = None,
    timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
    fail_on_request_failures: bool = False,
    artifact_key: str = DEFAULT_ARTIFACT_KEY,
    cancel_on_timeout: bool = False,
) -> BatchResult:
    """Wait for a batch to end without holding a thread; report progress, the summary and an event.

    Polls through the shared ``AsyncBatchClient`` (back-off while nothing changes, jitter, a
    wall-clock deadline, tolerance for a few failed polls). A progress artifact follows
    ``request_counts``; at the end a table artifact summarises the batch and the event
    ``batch_ops.batch.<status>`` is emitted for resource ``openai.batch.<id>``.

    Args:
        batch_id: the batch to wait for.
        poll_interval: seconds between polls while the batch makes progress.
        max_poll_interval: back-off ceiling while nothing changes (default 4x poll_interval).
        timeout: seconds before ``BatchTimeoutError``; the batch keeps running (unless
            ``cancel_on_timeout``). None waits on. Default: :data:`batch_ops.outcomes.DEFAULT_WAIT_TIMEOUT`
            (25 h), the default of every wait.
        fail_on: terminal statuses that fail the task (default failed, expired, cancelled);
            pass ``[]`` to return every outcome. Expired and cancelled batches still return
            completed work in ``output_file_id``.
        fail_on_request_failures: also fail a completed batch that has failed requests.
        artifact_key: the stem of the artifacts' keys: the progress bar is kept under
            ``<stem>-progress`` and the summary table under ``<stem>-summary`` (default
            ``openai-batch``), so the Prefect UI shows their history under one name.
        cancel_on_timeout: cancel the batch when ``timeout`` passes (its finished work stays in
            its output file); otherwise it keeps running and a retry re-attaches to it.

    Raises:
        BatchFailedError, BatchExpiredError, BatchCancelledError: per ``fail_on``; the
            exception's ``batch`` holds the file ids.
        RequestFailuresError: per ``fail_on_request_failures``.
        BatchTimeoutError: the timeout passed first.

    Examples:
        ```python
        results = await asyncio.gather(*(wait_for_batch(b, poll_interval=60) for b in batch_ids))
        ```
    """
    policy = OutcomePolicy.of(fail_on, fail_on_request_failures)  # checked before the wait
    batch = await _wait(batch_id, credentials=credentials, poll_interval=poll_interval,
                        max_poll_interval=max_poll_interval, timeout=timeout, artifact_key=artifact_key,
                        cancel_on_timeout=cancel_on_timeout)
    return BatchResult.from_batch(policy.check(batch))


async def _wait(
    batch_id: str,
    *,
    credentials: OpenAIBatchCredentials | None,
    poll_interval: float,
    max_poll_interval: float | None,
    timeout: float | None,
    artifact_key: str,
    cancel_on_timeout: bool,
) -> Batch:
    """The wait of :func:`wait_for_batch`, with its progress, artifacts and event; returns the batch whatever
    its outcome."""
    client = _client(credentials)
    logger = _logger()
    progress = ProgressArtifact(logger=logger, key=artifact_key)

    async def on_poll(batch: Batch) -> None:
        if await progress.update(batch):
            logger.info("Batch %s: %s", batch.id, describe(batch))

    try:
        batch = await client.batches.wait(
            batch_id, poll_interval=poll_interval, max_poll_interval=max_poll_interval, timeout=timeout,
            on_poll=on_poll, cancel_on_timeout=cancel_on_timeout,
        )
    except BatchTimeoutError as exc:
        logger.error("%s", exc)
        raise
    await create_summary_artifact(batch, logger=logger, key=artifact_key)
    emit_batch_event(batch)
    summary = f"Batch {batch.id} ended {describe(batch)}: output_file_id={batch.output_file_id} " \
              f"error_file_id={batch.error_file_id}"
    # Worth a warning whenever the strictest policy would reject it (any outcome but a clean completion).
    (logger.info if _STRICT.accepts(batch) else logger.warning)("%s", summary)
    return batch


#: ``wait_for_batch`` returning the terminal :class:`~batch_ops.Batch` whatever its outcome (``run_batch``
#: applies the policy to the whole chain).
_wait_task = task(name="wait_for_batch", cache_policy=NO_CACHE)(_wait)


@task(name="download_batch_file", cache_policy=NO_CACHE)
async def download_batch_file(
    file_id: str,
    path: PathLike,
    *,
    credentials: OpenAIBatchCredentials | None = None,
    storage: WritableFileSystem | None = None,
) -> Path | str:
    """Stream a file (a batch's output or error file) to ``path``; return where it went.

    The body streams to a temporary file beside ``path``, renamed over it once complete, so
    a failed download never leaves a truncated file and memory stays flat. ``path`` may be an
    ``s3://`` (``gs://``, ``az://``) URL, or relative to ``storage``, a ``WritableFileSystem``
    block: the file is then put as one object once complete (see :mod:`batch_ops.storage`).
    Returns the local ``Path`` written, or the URL (text) of the object on object storage.

    Examples:
        ```python
        out = await download_batch_file(result.output_file_id, "output.jsonl")
        ```
    """
    where: StorageTarget = block_target(storage, os.fspath(path)) if storage is not None else path
    written = await _client(credentials).files.download(file_id, where)
    target: Path | str = written if isinstance(written, Path) else display(where)
    _logger().info("Downloaded file %s to %s", file_id, target)
    return target


@task(name="cancel_batch", cache_policy=NO_CACHE)
async def cancel_batch(
    batch_id: str,
    *,
    credentials: OpenAIBatchCredentials | None = None,
) -> BatchResult:
    """Ask the API to cancel a batch; returns it as ``cancelling`` (or already terminal).

    Work finished before the cancel stays in the output file (and is billed); wait for the
    batch to see ``cancelled`` and the final file ids.

    Examples:
        ```python
        await cancel_batch(batch.batch_id)
        ```
    """
    batch = await _client(credentials).batches.cancel(batch_id)
    _logger().info("Batch %s: cancel requested, now %s", batch.id, batch.status.value)
    return BatchResult.from_batch(batch)


@task(name="read_batch_results", cache_policy=NO_CACHE)
async def read_batch_results(
    batch: str | BatchResult,
    *,
    credentials: OpenAIBatchCredentials | None = None,
    input_path: PathLike | None = None,
    max_results: int = DEFAULT_MAX_RECORDS,
    raw: bool = True,
    response_schema: Any = None,
) -> list[dict[str, Any]]:
    """The results of an ended batch (or of every attempt of a ``BatchResult``), one dict per request in
    input order, the same shape whatever the provider: ``custom_id``, ``ok``, ``text`` (the answer),
    ``body`` (parsed), ``usage`` (``input_tokens``, ``output_tokens``, ``total_tokens``), ``error``
    (``code``, ``message``) and ``raw`` (the provider's own line, when its dialect rewrote it).

    A batch of more than ``max_results`` requests fails the task (task results live in Prefect's
    storage): download its output file instead. ``input_path``: the request file (saves a download).
    ``response_schema`` (a pydantic model, a JSON Schema; default: the one a ``BatchResult`` carries under
    ``structured``): each record also has ``parsed`` (the answer as JSON) and ``invalid`` (``{reason,
    message}``, or None).

    Examples:
        ```python
        done = await run_batch("requests.jsonl", endpoint="/v1/chat/completions")
        for r in await read_batch_results(done):
            print(r["custom_id"], r["text"], r["usage"])
        ```
    """
    client = _client(credentials)
    target: Any = batch
    if response_schema is None and isinstance(batch, BatchResult) and batch.structured:
        response_schema = ResponseSchema.from_json(batch.structured["response_schema"])
    if isinstance(batch, BatchResult):
        ids = batch.batch_ids or [batch.batch_id]
        batches = [await client.batches.retrieve(i) for i in ids]
        target = AttemptChain("results", tuple(Attempt(n, b) for n, b in enumerate(batches)))
    collected: list[ResultLine] = []
    async for line in client.results(target, input_path=input_path, response_schema=response_schema):
        collected.append(line)
        if len(collected) > max_results:
            break  # result_records says why; no more is held in memory
    name = batch if isinstance(batch, str) else batch.batch_id
    records = result_records(collected, limit=max_results, raw=raw, what=f"batch {name}")
    _logger().info("Batch %s: %d results (%d ok)", name, len(records), sum(r["ok"] for r in records))
    return records

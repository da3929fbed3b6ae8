"""The ``run_batch`` flow, and the hook that cancels a flow run's batches when the run is cancelled.

``run_batch`` submits the requests through core's submission core (validate, find the key's
attempt chain, upload, create at most once), waits without holding a thread, and returns a
:class:`~batch_ops.prefect.tasks.BatchResult`. Await many at once from an async flow; each is
its own flow run, with its own artifacts and events.

Keys. A ``run_batch`` flow run keys its work on what survives a retry: its own flow run id when
it runs alone (a deployment of it, retried), and, as a subflow, the parent flow run's id and the
work itself (endpoint, requests or path, metadata, window) — Prefect makes *new* subflow runs
when a parent run is retried, and they must find the batches of the old ones. Two calls with
identical work in one parent run therefore share a batch; pass ``idempotency_key`` to separate
them (or to carry the guarantee across parent runs).

Flow-run cancellation. Prefect cancels a flow run of a deployment by killing its process and
then running the flow's ``on_cancellation`` hooks, usually in the worker's or ``serve``
process, not the one that ran the tasks. So :func:`cancel_flow_run_batches` does not rely on
memory: it lists the recent batches on the API and cancels the unfinished ones whose metadata
names the flow run (``create_batch`` tags every batch with ``prefect_flow_run_id``). It finds
the API and key in this order: the settings ``create_batch`` used in this process, the
``credentials`` block the run was given (a saved block, passed by reference), the environment.
Add it to your own flows that use the tasks: ``@flow(on_cancellation=[cancel_flow_run_batches])``.
"""

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from prefect import Flow, flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.filesystems import WritableFileSystem
from prefect.logging.loggers import flow_run_logger
from prefect.states import State

from batch_ops.client import AsyncBatchClient
from batch_ops.errors import InputValidationError, Problem
from batch_ops.identity import PREFECT_OWNER_KEY, RunIdentity, lookback_start, unfinished_owned_by
from batch_ops.models import Batch, BatchStatus
from batch_ops.orphans import aunfinished_batches_of
from batch_ops.outcomes import DEFAULT_WAIT_TIMEOUT, OutcomePolicy
from batch_ops.prefect.artifacts import DEFAULT_ARTIFACT_KEY
from batch_ops.prefect.credentials import OpenAIBatchCredentials, settings_from_parameters
from batch_ops.prefect.storage import block_target
from batch_ops.prefect.tasks import (
    BatchResult,
    _repair_task,
    _submit_task,
    _wait_task,
    batches_submitted_by,
    bill_chain,
    estimate_of,
    run_start_time,
    settings_used_by,
)
from batch_ops.settings import ClientSettings
from batch_ops.storage import display
from batch_ops.structured import ResponseSchema, structured_summary

__all__ = ["batches_to_cancel", "cancel_flow_run_batches", "run_batch"]



def batches_to_cancel(batches: Iterable[Batch], *, flow_run_id: str) -> list[Batch]:
    """The batches created by this flow run that are still running and not yet being cancelled
    (core's :func:`batch_ops.identity.unfinished_owned_by`).

    Examples:
        >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0,
        ...           metadata={"prefect_flow_run_id": "run-1"})
        >>> [x.id for x in batches_to_cancel([b], flow_run_id="run-1")], batches_to_cancel([b], flow_run_id="run-2")
        (['b1'], [])
    """
    return unfinished_owned_by(batches, PREFECT_OWNER_KEY, flow_run_id)


async def _settings_for(flow_run: FlowRun) -> list[ClientSettings]:
    used = settings_used_by(str(flow_run.id))
    if used:
        return used
    raw = (flow_run.parameters or {}).get("credentials")
    ref: Any = None
    if isinstance(raw, dict):
        # A deployment parameter keeps the reference; a loaded block passed in code keeps its document id.
        ref = raw.get("$ref") if isinstance(raw.get("$ref"), dict) else raw.get("_block_document_id")
    if ref:
        block = await OpenAIBatchCredentials.aload_from_ref(ref)
        return [cast(OpenAIBatchCredentials, block).get_settings()]
    if isinstance(raw, dict):
        # An unsaved block was stored with its key obfuscated: keep the rest, take the key from the environment.
        return [settings_from_parameters(raw)]
    return [ClientSettings.from_env()]


async def cancel_flow_run_batches(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_cancellation`` hook: cancel every unfinished batch the flow run created.

    Errors are logged, not raised: Prefect goes on cancelling the run either way.

    Examples:
        ```python
        @flow(on_cancellation=[cancel_flow_run_batches])
        async def my_flow(): ...
        ```
    """
    logger = flow_run_logger(flow_run, flow)
    run_id = str(flow_run.id)
    try:
        candidates = await _settings_for(flow_run)
    except Exception as exc:
        logger.error("Could not find the Batch API credentials to cancel the batches of flow run %s: %s", run_id, exc)
        return
    # No batch of this run is older than the run itself (without its date, core searches the idempotency window).
    since = lookback_start(flow_run.created or flow_run.start_time or flow_run.expected_start_time)
    for settings in candidates:
        try:
            # A client of its own: the hook may run on a short-lived loop in another process.
            async with AsyncBatchClient(settings=settings) as client:
                found = await aunfinished_batches_of(client, PREFECT_OWNER_KEY, run_id, since=since)
                try:
                    found += await _remembered_unfinished(client, settings, run_id, {b.id for b in found})
                    found += await _keyed_unfinished(client, flow, flow_run, {b.id for b in found}, since=since)
                except Exception as exc:  # the listed ones are still cancelled
                    logger.error("Flow run cancelled: could not look up the batches it submitted: %s", exc)
                if not found:
                    logger.info("Flow run cancelled: no unfinished batch of this run on %s", settings.base_url)
                for batch in found:
                    try:
                        cancelled = await client.batches.cancel(batch.id)
                    except Exception as exc:  # e.g. it finished meanwhile: go on with the others
                        logger.error("Flow run cancelled: could not cancel batch %s: %s", batch.id, exc)
                    else:
                        logger.info("Flow run cancelled: batch %s is now %s", batch.id, cancelled.status.value)
        except Exception as exc:
            logger.error("Could not list the batches of flow run %s on %s: %s", run_id, settings.base_url, exc)


async def _remembered_unfinished(client: AsyncBatchClient, settings: ClientSettings, run_id: str,
                                 listed: set[str]) -> list[Batch]:
    """The unfinished batches this process saw the run submit with ``settings``, beyond those ``listed``
    by their owner metadata: a batch that cannot carry its owner (Anthropic's, Gemini's) is found here,
    when the hook runs in the process that submitted it (a ``run_batch`` subflow's does)."""
    ids = [i for i, used in batches_submitted_by(run_id).items() if used == settings and i not in listed]
    batches = [await client.batches.retrieve(i) for i in ids]
    return [b for b in batches if _unfinished(b)]


async def _keyed_unfinished(client: AsyncBatchClient, flow: Flow[Any, Any], flow_run: FlowRun, listed: set[str], *,
                            since: float | None) -> list[Batch]:
    """A ``run_batch`` flow run of its own (a deployment of it) keys its work on its flow run id alone:
    that key's chain is its batches on any provider (found by metadata, Gemini's display name or
    Anthropic's key ledger), wherever the hook runs — the runner's process, after it killed the run's.
    A key the caller gave may be shared with other runs: such a run's batches are not looked up by it."""
    if flow.name != "run-batch" or flow_run.parent_task_run_id is not None:
        return []
    if (flow_run.parameters or {}).get("idempotency_key"):
        return []
    key = RunIdentity.prefect_flow(flow_run_id=flow_run.id).key
    if key is None:
        return []
    chain = await client.batches.chain(key, since=since)
    return [a.batch for a in chain.attempts if a.batch.id not in listed and _unfinished(a.batch)]


def _unfinished(batch: Batch) -> bool:
    """Still running and not yet being cancelled: what a cancelled run cancels (as core's ``unfinished_owned_by``)."""
    return not batch.status.is_terminal and batch.status is not BatchStatus.CANCELLING


async def run_identity(work: Mapping[str, Any]) -> RunIdentity | None:
    """The running ``run_batch`` flow run as core's :class:`~batch_ops.identity.RunIdentity` (see the
    module docstring: its own run alone, the parent's run and the work as a subflow), None outside a run."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    run = ctx.flow_run
    if run.parent_task_run_id is None:
        return RunIdentity.prefect_flow(flow_run_id=run.id, started=run_start_time(run))
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        tracking = await client.read_task_run(run.parent_task_run_id)
        parent = await client.read_flow_run(tracking.flow_run_id) if tracking.flow_run_id else None
    return RunIdentity.prefect_subflow(parent_flow_run_id=tracking.flow_run_id, work=work,
                                       started=run_start_time(parent) if parent is not None else None,
                                       flow_run_id=run.id)


async def flow_identity(work: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """The key of the running ``run_batch`` flow run and how far back its batches can be (see
    :func:`run_identity`); ``(None, None)`` outside a run."""
    identity = await run_identity(work)
    return (identity.key, identity.since) if identity is not None else (None, None)


@flow(name="run-batch", on_cancellation=[cancel_flow_run_batches])
async def run_batch(
    input_path: str | Path | None = None,
    requests: list[dict[str, Any]] | None = None,
    *,
    endpoint: str = "",
    credentials: OpenAIBatchCredentials | None = None,
    metadata: dict[str, str] | None = None,
    poll_interval: float = 30.0,
    timeout: float | None = DEFAULT_WAIT_TIMEOUT,
    fail_on: list[str] | None = None,
    fail_on_request_failures: bool = False,
    completion_window: str = "24h",
    output_expires_after: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    storage: WritableFileSystem | None = None,
    artifact_key: str = DEFAULT_ARTIFACT_KEY,
    cancel_on_timeout: bool = False,
    response_model: Any = None,
    response_schema: dict[str, Any] | str | None = None,
    repair_rounds: int = 0,
    repair_feedback: bool = False,
    max_cost_usd: float | None = None,
    prices: dict[str, Any] | None = None,
) -> BatchResult:
    """Run one batch end to end: validate, upload, create, wait; return its :class:`BatchResult`.

    Invalid requests fail the flow before anything is uploaded. A retried flow run (and a retried
    parent flow run) finds the batch its first attempt created: no second bill. After a batch the
    policy rejects (``fail_on``, ``fail_on_request_failures``) the flow fails; retried, it creates
    the next attempt, carrying only the requests with no success yet (``retries=`` on the flow).
    Cancelling the flow run cancels the batch. At the end a table artifact summarises the batch
    and the event ``batch_ops.batch.<status>`` (resource ``openai.batch.<id>``) is emitted.

    Args:
        input_path: a JSONL request file (a local path, or an ``s3://``, ``gs://``, ``az://`` URL
            that workers sharing no disk all reach); or give ``requests`` instead.
        requests: request dicts (``custom_id`` and ``body``; ``url``/``method`` may be omitted).
        endpoint: the batch endpoint, e.g. ``/v1/chat/completions``.
        credentials: the block to use; None reads ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
        metadata: up to 14 string pairs stored on the batch.
        poll_interval: seconds between polls while the batch makes progress.
        timeout: seconds to wait before failing with ``BatchTimeoutError`` (the batch goes on, unless
            ``cancel_on_timeout``). Default: :data:`batch_ops.outcomes.DEFAULT_WAIT_TIMEOUT` (25 h), the
            default of every wait.
        fail_on: terminal statuses that fail the flow (default failed, expired, cancelled);
            ``[]`` returns every outcome, e.g. an expired batch with its partial output.
        fail_on_request_failures: also fail when a completed batch has failed requests.
        completion_window: only ``"24h"`` exists.
        output_expires_after: ``{"anchor": "created_at", "seconds": N}`` for the result files.
        idempotency_key: names the work; default: derived (see the module docstring).
        storage: a ``WritableFileSystem`` block ``input_path`` is relative to (a saved block,
            passed by reference, keeps its credentials; see :mod:`batch_ops.prefect.storage`).
        artifact_key: the stem of the artifacts' keys (``<stem>-summary``, ``<stem>-progress``;
            default ``openai-batch``): one name per pipeline keeps its history in the Prefect UI.
        cancel_on_timeout: cancel the batch when ``timeout`` passes (its finished work stays in its
            output file); otherwise it keeps running and a retry of the flow run re-attaches to it.
        response_model: a pydantic model the answers must follow (structured outputs; see
            docs/structured-outputs.md): written into each request in the provider's native form,
            checked against its schema subset before upload. The result then carries ``structured``
            and ``read_batch_results`` parses each answer (``parsed``, or ``invalid`` with the reason).
        response_schema: a JSON Schema (a dict, or a ``.json`` file's path) instead of ``response_model``
            (what a deployment's parameters can carry).
        repair_rounds: after the batch ends, resubmit only the requests whose answers are invalid, up to
            this many rounds, each a new attempt of the same chain (paid once, in ``chain_usage``).
        repair_feedback: put each invalid answer's fault in its repaired request (a new user turn).
        max_cost_usd: a hard budget in USD for the whole chain (every retry of the flow run): refused
            before upload with ``BudgetExceededError`` when the chain's spend plus this attempt's upper
            bound passes it (docs/cost.md). A repair round that does not fit is not submitted: the run
            returns the answers paid for, with a warning and the round's ``refused`` in ``structured``.
        prices: price overrides, ``{"model": {"input": .., "output": ..}}`` in USD per 1M tokens. The result's
            ``estimate`` and ``cost`` (the actual bill) sit side by side, and in the ``<stem>-cost`` artifact.

    Examples:
        ```python
        result = await run_batch(input_path="requests.jsonl", endpoint="/v1/chat/completions")
        print(result.status, result.output_file_id, result.batch_ids)
        ```
    """
    if (input_path is None) == (requests is None):
        raise InputValidationError(
            [Problem(rule="invalid_argument", message="run_batch needs exactly one of input_path and requests",
                     fix="pass input_path='requests.jsonl' or requests=[{...}, ...]", param="input_path")]
        )
    policy = OutcomePolicy.of(fail_on, fail_on_request_failures)  # checked before anything is sent
    if response_model is not None and response_schema is not None:
        raise InputValidationError([Problem(rule="invalid_argument", param="response_schema",
                                            message="run_batch got both response_model and response_schema",
                                            fix="give one of them")])
    given = response_model if response_model is not None else response_schema
    schema = None if given is None else ResponseSchema.of(given)
    if repair_rounds and schema is None:
        raise InputValidationError([Problem(rule="invalid_argument", param="repair_rounds",
                                            message="repair_rounds needs response_model or response_schema",
                                            fix="give the schema the answers are repaired against")])
    source: str | os.PathLike[str] | list[dict[str, Any]] = (
        os.fspath(input_path) if input_path is not None else requests or []
    )
    where = None if input_path is None else os.fspath(input_path)
    if where is not None and storage is not None:
        where = display(block_target(storage, where))  # the work is the file, wherever the block puts it
    work = {"endpoint": endpoint, "input_path": where,
            "requests": requests, "metadata": metadata, "completion_window": completion_window,
            "output_expires_after": output_expires_after}
    key, since = (idempotency_key, None) if idempotency_key else await flow_identity(work)
    submission = await _submit_task(
        source,
        endpoint=endpoint,
        credentials=credentials,
        metadata=metadata,
        completion_window=completion_window,
        output_expires_after=output_expires_after,
        idempotency_key=key,
        fail_on=policy.fail_on,
        fail_on_request_failures=policy.fail_on_request_failures,
        since=since,
        storage=storage,
        response_schema=schema,
        max_cost_usd=max_cost_usd,
        prices=prices,
    )
    # The wait returns every outcome: the policy is applied below, to the chain this submit found or made.
    ended = await _wait_task(submission.batch.id, credentials=credentials, poll_interval=poll_interval,
                             max_poll_interval=None, timeout=timeout, artifact_key=artifact_key,
                             cancel_on_timeout=cancel_on_timeout)
    chain = submission.chain.with_batch(ended)
    latest = chain.latest
    assert latest is not None
    # A chain whose every request already has a success is accepted whatever its latest attempt's status.
    policy.check(latest, satisfied=submission.satisfied)
    rounds: list[dict[str, Any]] = []
    for number in range(1, repair_rounds + 1 if schema is not None else 1):
        done = await _repair_task(source, chain, endpoint=endpoint, credentials=credentials, metadata=metadata,
                                  completion_window=completion_window, output_expires_after=output_expires_after,
                                  response_schema=schema, round=number, feedback=repair_feedback, storage=storage,
                                  max_cost_usd=max_cost_usd, prices=prices)
        rounds.append(done.summary())
        if done.submission is None:
            break
        ended = await _wait_task(done.submission.batch.id, credentials=credentials, poll_interval=poll_interval,
                                 max_poll_interval=None, timeout=timeout, artifact_key=artifact_key,
                                 cancel_on_timeout=cancel_on_timeout)
        chain = done.submission.chain.with_batch(ended)
        policy.check(ended, satisfied=done.submission.satisfied)
    estimate = estimate_of(submission)
    cost = await bill_chain(chain, credentials=credentials, estimate=estimate, prices=prices, key=artifact_key)
    structured = None if schema is None else structured_summary(schema, rounds)
    return BatchResult.from_chain(chain, structured=structured).model_copy(update={"estimate": estimate, "cost": cost})

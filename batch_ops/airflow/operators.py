"""``OpenAIBatchOperator``: create a batch, wait for it without a worker slot, pass its files on.

The operator checks its inputs before spending anything, submits through core's submission
core (the task instance's attempt chain is looked up first), pushes ``batch_id`` to XCom at
once, and defers to :class:`~batch_ops.airflow.OpenAIBatchTrigger`. It returns (XCom
``return_value``)::

    {"batch_id", "status", "input_file_id", "output_file_id", "error_file_id", "request_counts", "usage",
     "batch_ids", "chain_request_counts", "chain_usage", "estimate", "cost"}

``estimate`` is the cost estimate made before the upload and ``cost`` the actual bill from the results'
usage (both plain JSON at batch prices, see docs/cost.md; ``cost`` is None until the batch has ended).

Retries. Every batch is tagged with the task instance's key, derived from (dag_id, task_id,
run_id, map_index) and this Airflow deployment's identity (:mod:`batch_ops.airflow.deployment`),
and its attempt number: ``<key>``, ``<key>.1``, ... Any try, on any worker, finds the chain from
the API alone; another deployment sharing the API project (staging beside production, the same
DAG, the same run ids) never does (see :mod:`batch_ops.identity`). A retry re-attaches to a
batch that is still running or ended acceptably. After an outcome the failure policy rejects
(``failed``, ``expired``, ``cancelled``, or request failures with ``fail_on_request_failures``) it
creates the next attempt, carrying only the requests that have no successful result anywhere in
the chain: a request that succeeded is never paid for again. Two tries at once (a zombie and its retry)
collapse to one batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, ObjectStoragePath

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.0 kept it in airflow.exceptions
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

from batch_ops import OutcomePolicy, ResponseSchema, Source, SubmitSpec, is_permanent
from batch_ops.airflow.config import default_deferrable
from batch_ops.airflow.deployment import deployment_identity, deployment_name, proves_identity
from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.links import OpenAIBatchLink, batch_url
from batch_ops.airflow.outcome import XCOM_BATCH, XCOM_BATCH_ID, BatchOutcomeMixin, chain_of, check_event, event_batch
from batch_ops.airflow.triggers import OpenAIBatchTrigger
from batch_ops.chain import AttemptChain
from batch_ops.client import BatchClient
from batch_ops.errors import BatchOpsError, BatchTimeoutError
from batch_ops.identity import RunIdentity, airflow_key
from batch_ops.models import BatchStatus
from batch_ops.outcomes import DEFAULT_FAIL_ON, DEFAULT_WAIT_TIMEOUT
from batch_ops.structured import structured_summary

#: XCom key of the cost estimate made before the upload (kept across a deferral; also in ``return_value``).
XCOM_ESTIMATE = "estimate"

if TYPE_CHECKING:
    from airflow.sdk import Context

    from batch_ops import Submission

#: XCom key of the repair rounds done in this try (``RepairRound.summary()`` each): what a resume continues from.
XCOM_REPAIRS = "batch_ops_repairs"

__all__ = ["XCOM_BATCH", "XCOM_BATCH_ID", "XCOM_REPAIRS", "OpenAIBatchOperator", "idempotency_key", "run_identity",
           "with_storage_conn"]

def idempotency_key(
    *, dag_id: str, task_id: str, run_id: str, map_index: int = -1, deployment: str | None = None
) -> str:
    """The stable key of one task instance in one deployment: every try computes the same value.

    ``deployment`` is the deployment's identity (:func:`~batch_ops.airflow.deployment.deployment_identity`);
    None gives the key of batches made before it was part of the key.

    Examples:
        >>> k = idempotency_key(dag_id="d", task_id="t", run_id="manual__1", map_index=-1)
        >>> k == idempotency_key(dag_id="d", task_id="t", run_id="manual__1"), len(k)
        (True, 43)
        >>> k != idempotency_key(dag_id="d", task_id="t", run_id="manual__1", map_index=0)
        True
        >>> k != idempotency_key(dag_id="d", task_id="t", run_id="manual__1", deployment="3f9c0d1e7a2b4c68")
        True
    """
    return airflow_key(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index, deployment=deployment)


def run_identity(context: Context, *, reattach: bool = True) -> RunIdentity:
    """The running task instance as core's :class:`~batch_ops.identity.RunIdentity`: what Airflow knows of
    it (its ids, when its DAG run began, this deployment) — the key, the owner record and the lookback."""
    ti = context["ti"]
    ti_id = getattr(ti, "id", None)
    return RunIdentity.airflow(
        dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index,
        started=getattr(context.get("dag_run"), "start_date", None),
        deployment=deployment_identity(), deployment_name=deployment_name(),
        ti_id=str(ti_id) if ti_id else None, reattach=reattach, proves=proves_identity,
    )


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {value!r}")
    return seconds


def _native_numbers(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Jinja renders ``{{ 3600 * 24 }}`` to the string "86400": give the API its number back."""
    if value is None:
        return None
    return {k: int(v) if isinstance(v, str) and v.strip().isdigit() else v for k, v in value.items()}


def _literal(value: Any) -> Any:
    """Keep request content away from Jinja: a prompt may well contain ``{{``."""
    try:
        from airflow.sdk import literal
    except ImportError:  # Airflow 3.0
        return value
    return literal(value)


def with_storage_conn(path: Any, storage_conn_id: str | None) -> Any:
    """``path`` as ``ObjectStoragePath(path, conn_id=storage_conn_id)`` when it is a URL and a connection is given.

    Examples:
        >>> with_storage_conn("/data/in.jsonl", "aws_default"), with_storage_conn("s3://b/k", None)
        ('/data/in.jsonl', 's3://b/k')
    """
    if storage_conn_id and isinstance(path, str) and "://" in path:
        return ObjectStoragePath(path, conn_id=storage_conn_id)
    return path


class OpenAIBatchOperator(BatchOutcomeMixin, BaseOperator):
    """Run one OpenAI batch: create it, wait for a terminal status (deferred), return its files.

    Give exactly one input: ``input_file_id`` (already uploaded), ``input_path`` (a JSONL file:
    validated, then uploaded) or ``requests`` (request dicts, or an XComArg producing them;
    ``url``/``method`` default to ``endpoint``/POST).

    ``input_path`` may be on object storage: an fsspec URL (``s3://bucket/requests.jsonl``) or an
    ``ObjectStoragePath``. Use that whenever an upstream task writes the file and the workers
    share no disk (CeleryExecutor, KubernetesExecutor): a local path names a file on the worker
    that runs *this* task.

    Args:
        endpoint: e.g. ``/v1/chat/completions`` (templated); empty: the provider's chat endpoint, for
            provider-neutral chat requests (see ``docs/requests-and-results.md``).
        input_file_id: an uploaded file's id (templated); see above.
        input_path: a request file (templated): a local path or an object storage URL; see above.
        requests: request dicts, or an XComArg resolved at run time; see above.
        storage_conn_id: the Airflow connection of ``input_path``'s object storage when it is a
            URL (it is read as ``ObjectStoragePath(input_path, conn_id=storage_conn_id)``);
            None: the file system's own defaults (environment, instance role).
        conn_id: an ``openaibatch`` connection (or an ``openai`` one).
        metadata: up to 14 string pairs (templated); batch_ops adds two: its idempotency key, and the
            task instance and deployment that own the batch (for the orphan sweep,
            :mod:`batch_ops.airflow.orphans`; the deployment: :mod:`batch_ops.airflow.deployment`).
        output_expires_after: ``{"anchor": "created_at", "seconds": 3600..2592000}`` (templated).
        completion_window: ``"24h"`` (templated).
        deferrable: wait in the triggerer instead of holding a worker slot. Default: Airflow's
            ``[operators] default_deferrable`` when the environment sets it, else True.
        poll_interval: seconds between status polls; backs off to ``max_poll_interval``
            while nothing changes.
        timeout: how long one try waits (seconds or timedelta; None: until terminal). Default:
            :data:`batch_ops.outcomes.DEFAULT_WAIT_TIMEOUT` (25 h: the 24 h completion window and
            an hour to finalize), the default of every wait.
        wait_for_completion: False returns right after the create (pair with
            :class:`~batch_ops.airflow.OpenAIBatchSensor`).
        fail_on: terminal statuses that fail the task (default failed, expired, cancelled).
        fail_on_request_failures: also fail a completed batch with ``request_counts.failed > 0``.
        cancel_on_kill: cancel the batch when the task is killed (mark failed/success, clear),
            on the worker and, on Airflow >= 3.3, while deferred.
        cancel_on_timeout: cancel the batch when ``timeout`` passes (otherwise it keeps running
            and a retry re-attaches to it).
        max_cost_usd: a hard budget in USD for the task's whole chain (every try and retry): a try whose
            upper bound, with what earlier tries spent, passes it fails before uploading anything
            (``BudgetExceededError``, not retried). A repair round that does not fit is not submitted and
            the task succeeds with the answers paid for (a warning; the round's ``refused`` says why).
            See docs/cost.md.
        prices: price overrides, ``{"model": {"input": .., "output": ..}}`` in USD per 1M tokens (batch
            prices); default genai-prices' table. The result dict gets ``estimate`` (made before the
            upload) and ``cost`` (the actual bill from the results' usage) side by side.
        reattach: look the task instance's attempt chain up before creating (see module doc);
            False makes every try a new, unrelated batch.
        response_model: a pydantic model the answers must follow (structured outputs,
            docs/structured-outputs.md): written into each request in the provider's native form, checked
            against its schema subset before upload. The XCom then carries ``structured`` (the schema and
            the repair rounds), and ``OpenAIBatchHook.get_results`` parses each answer (``parsed``, or
            ``invalid`` with the reason).
        response_schema: a JSON Schema (a dict, or a ``.json`` file's path) instead of ``response_model``.
        repair_rounds: after the batch ends, resubmit only the requests whose answers are invalid (bad JSON,
            schema mismatch, refusal, cut by the token limit), up to this many times, as new attempts of
            the same chain (paid once each, counted in ``chain_usage``); the task defers again for each.
        repair_feedback: put each invalid answer's fault in its repaired request (a new user turn).

    Examples:
        >>> op = OpenAIBatchOperator(task_id="embed", endpoint="/v1/embeddings",
        ...                          input_path="/data/{{ ds }}/requests.jsonl", poll_interval=60)
        >>> op.deferrable, op.fail_on
        (True, ('cancelled', 'expired', 'failed'))
        >>> # retries=2: a retry after a failed or expired batch pays only for what did not succeed
        >>> # downstream: "{{ ti.xcom_pull(task_ids='embed')['output_file_id'] }}"
    """

    template_fields: Sequence[str] = (
        "input_file_id",
        "input_path",
        "requests",
        "endpoint",
        "metadata",
        "output_expires_after",
        "completion_window",
        "conn_id",
        "storage_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "metadata": "json",
        "output_expires_after": "json",
        "requests": "json",
    }
    operator_extra_links = (OpenAIBatchLink(),)
    ui_color = "#10a37f"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        endpoint: str = "",
        input_file_id: str | None = None,
        input_path: str | os.PathLike[str] | ObjectStoragePath | None = None,
        requests: Any = None,
        storage_conn_id: str | None = None,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        completion_window: str = "24h",
        deferrable: bool | None = None,
        poll_interval: float = 60.0,
        max_poll_interval: float | None = None,
        timeout: timedelta | float | None = DEFAULT_WAIT_TIMEOUT,
        wait_for_completion: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = False,
        reattach: bool = True,
        response_model: Any = None,
        response_schema: Any = None,
        repair_rounds: int = 0,
        repair_feedback: bool = False,
        max_cost_usd: float | None = None,
        prices: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [name for name, value in (("input_file_id", input_file_id), ("input_path", input_path),
                                          ("requests", requests)) if value is not None]
        if len(given) != 1:
            raise ValueError(
                "OpenAIBatchOperator needs exactly one of input_file_id, input_path or requests; "
                f"got {', '.join(given) if given else 'none'}."
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        # A str, a PathLike, an ObjectStoragePath, or an XComArg / template resolved at run time (so
        # not fspath'd here).
        self.input_path = os.fspath(input_path) if isinstance(input_path, os.PathLike) else input_path
        self.storage_conn_id = storage_conn_id
        self.requests = _literal(requests) if isinstance(requests, (list, tuple)) else requests
        self.conn_id = conn_id
        self.metadata = dict(metadata) if metadata is not None else None
        self.output_expires_after = output_expires_after
        self.completion_window = completion_window
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max_poll_interval
        self.timeout = _seconds(timeout)
        self.wait_for_completion = wait_for_completion
        self.policy = OutcomePolicy.of(fail_on, fail_on_request_failures)
        self.fail_on = self.policy.names
        self.fail_on_request_failures = self.policy.fail_on_request_failures
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.reattach = reattach
        if response_model is not None and response_schema is not None:
            raise ValueError("give response_model or response_schema, not both")
        if repair_rounds < 0:
            raise ValueError(f"repair_rounds must be >= 0, got {repair_rounds}")
        if repair_rounds and response_model is None and response_schema is None:
            raise ValueError("repair_rounds needs response_model or response_schema: the answers are repaired "
                             "against it")
        # Checked now (a DAG with a bad schema fails to load, not at 3 a.m.); kept as JSON (operators are
        # serialized) and made again at run time.
        given = response_model if response_model is not None else response_schema
        self.response_schema = ResponseSchema.of(given) if given is not None else None
        self.repair_rounds = int(repair_rounds)
        self.repair_feedback = repair_feedback
        self.max_cost_usd = max_cost_usd
        self.prices = dict(prices) if prices is not None else None
        self._estimate: Any = None
        self._model: str | None = None
        self._batch_id: str | None = None
        self._batch_url: str | None = None

    # -- execute ----------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        settings = OpenAIBatchHook(conn_id=self.conn_id).get_settings()
        with BatchClient(settings=settings) as client:
            submission = self._submit(client, context)
            chain, batch = submission.chain, submission.batch
            self._batch_id = batch.id
            self._batch_url = batch_url(settings, batch.id)
            context["ti"].xcom_push(key=XCOM_BATCH_ID, value=batch.id)
            # Now, not when the task ends: the link works while the task is deferred.
            context["ti"].xcom_push(key=OpenAIBatchLink().xcom_key, value=self._batch_url)
            if not self.wait_for_completion:
                return {**chain.summary(), "estimate": self._estimate, "cost": None}
            if batch.is_terminal:
                return self._ended(context, client, chain, satisfied=submission.satisfied)
            deadline = time.time() + self.timeout if self.timeout is not None else None
            return self._wait(context, client, chain, deadline)

    def _wait(self, context: Context, client: BatchClient, chain: AttemptChain, deadline: float | None,
              repairs: list[dict[str, Any]] | None = None) -> Any:
        """Wait for the chain's latest batch: deferred (the trigger), or here; then :meth:`_ended`."""
        batch = chain.latest
        assert batch is not None
        if self.deferrable:
            self.defer(
                trigger=OpenAIBatchTrigger(
                    conn_id=self.conn_id,
                    batch_id=batch.id,
                    poll_interval=self.poll_interval,
                    max_poll_interval=self.max_poll_interval,
                    deadline=deadline,
                    cancel_on_kill=self.cancel_on_kill,
                    cancel_on_timeout=self.cancel_on_timeout,
                ),
                method_name="execute_complete",
                kwargs={"chain": chain.to_json(), "repairs": repairs or [], "deadline": deadline},
            )
        try:
            batch = client.batches.wait(
                batch.id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                timeout=None,
                deadline=deadline,
                cancel_on_timeout=self.cancel_on_timeout,
            )
        except BatchTimeoutError as exc:
            if exc.batch is not None:
                context["ti"].xcom_push(key=XCOM_BATCH, value=chain.with_batch(exc.batch).summary())
            raise
        return self._ended(context, client, chain.with_batch(batch), repairs=repairs, deadline=deadline)

    def _ended(self, context: Context, client: BatchClient, chain: AttemptChain, *, satisfied: bool = False,
               repairs: list[dict[str, Any]] | None = None, deadline: float | None = None) -> Any:
        """The chain's latest batch ended: with a response schema and repair rounds left, and an accepted
        outcome, repair the invalid answers (core's round: only they are resubmitted, as the chain's next
        attempt) and wait again; else finish (XCom, failure policy). ``repairs``: the rounds done so far."""
        repairs = list(repairs or [])
        latest = chain.latest
        assert latest is not None
        schema = self.response_schema
        rounds_left = self.repair_rounds - len(repairs)
        if schema is not None and rounds_left > 0 and self.policy.accepts(latest, satisfied=satisfied):
            spec = self._spec(context)
            done = client.repair(self._source(), spec, chain, round=len(repairs) + 1, feedback=self.repair_feedback)
            # A round the budget refused is a warning, not a failure: the paid-for answers are delivered (core's
            # decision, batch_ops._repair); the rounds in the result dict say so.
            (self.log.warning if done.refused else self.log.info)("%s", done.line())
            repairs.append(done.summary())
            context["ti"].xcom_push(key=XCOM_REPAIRS, value=repairs)
            if done.submission is not None:
                following = done.submission.chain
                if following.latest is not None and not following.latest.is_terminal:
                    self._batch_id = following.latest.id
                    context["ti"].xcom_push(key=XCOM_BATCH_ID, value=following.latest.id)
                    return self._wait(context, client, following, deadline, repairs)
                return self._ended(context, client, following, satisfied=done.submission.satisfied,
                                   repairs=repairs, deadline=deadline)
        extra = {"structured": structured_summary(schema, repairs)} if schema is not None else None
        return self.finish(context, chain, satisfied=satisfied, extra=extra)

    def execute_complete(self, context: Context, event: Any = None, chain: Mapping[str, Any] | None = None,
                         repairs: list[dict[str, Any]] | None = None, deadline: float | None = None) -> Any:
        """Resume after the trigger fired: repair invalid answers when asked (and defer again), else apply the
        failure policy and return the result dict."""
        if self.response_schema is None:
            return self.resume(context, event, chain)
        payload = check_event(event)
        batch = event_batch(payload)
        if payload["event"] != "terminal" or batch is None:
            return self.resume(context, event, chain)
        self._batch_id = batch.id
        if repairs is None:  # a resume that lost its kwargs (``dags test`` keeps only the event): from XCom
            ti = context["ti"]
            repairs = ti.xcom_pull(task_ids=self.task_id, key=XCOM_REPAIRS, map_indexes=ti.map_index) or []
        with BatchClient(settings=OpenAIBatchHook(conn_id=self.conn_id).get_settings()) as client:
            found = chain_of(batch, chain) if chain else self._chain_of(client, context, batch)
            return self._ended(context, client, found, repairs=repairs, deadline=deadline)

    def _chain_of(self, client: BatchClient, context: Context, batch: Any) -> AttemptChain:
        """The task instance's chain, from the API, with ``batch`` as the trigger saw it (a chain of one if it
        is not the key's)."""
        identity = run_identity(context, reattach=self.reattach)
        if identity.key is not None:
            found = client.batches.chain(identity.key, since=identity.since)
            if batch.id in found.batch_ids:
                return found.with_batch(batch)
        return chain_of(batch, None)

    def cost_fields(self, context: Context, chain: AttemptChain) -> dict[str, Any]:
        """``estimate`` (made before the upload; kept in XCom across a deferral) and ``cost`` (the actual bill of
        the chain, from its results' usage), side by side in the result dict."""
        ti = context["ti"]
        if self._estimate is None and hasattr(ti, "xcom_pull"):
            self._estimate = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_ESTIMATE, map_indexes=ti.map_index)
        if not self._estimate:
            # Nothing estimated (no price for the model, or a batch this try did not submit): nothing to set
            # the bill beside, and no download of the results just for it.
            return {"estimate": None, "cost": None}
        models = self._estimate.get("models") or []
        self._model = models[0]["model"] if models else None
        try:
            with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
                paid = client.bill(chain, model=self._model, prices=self.prices)
        except BatchOpsError as exc:  # a bill that cannot be made must not fail a batch that ran
            self.log.warning("No actual cost for this run: %s", exc)
            return {"estimate": self._estimate, "cost": None}
        self.log.info("%s", paid.summary())
        return {"estimate": self._estimate, "cost": paid.as_dict()}

    # -- helpers ----------------------------------------------------------------------------
    def _source(self) -> Any:
        if self.input_file_id is not None:
            return Source(file_id=self.input_file_id)
        if self.input_path is not None:
            return with_storage_conn(self.input_path, self.storage_conn_id)
        requests = self.requests
        if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Collection):
            raise AirflowFailException(f"requests must be a list of request dicts, got {type(requests).__name__}")
        return list(requests)

    def _spec(self, context: Context) -> SubmitSpec:
        return SubmitSpec.of(
            endpoint=self.endpoint,
            completion_window=self.completion_window,
            metadata=self.metadata,
            output_expires_after=_native_numbers(self.output_expires_after),
            policy=self.policy,
            identity=run_identity(context, reattach=self.reattach),
            response_schema=self.response_schema,
            max_cost_usd=self.max_cost_usd,
            prices=self.prices,
        )

    def _submit(self, client: BatchClient, context: Context) -> Submission:
        try:
            submission = client.submit_spec(self._source(), self._spec(context))
        except BatchOpsError as exc:
            if is_permanent(exc):
                # A bad file or parameter stays bad: fail now, without spending retries on it.
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            raise
        submission.log(self.log)
        if submission.estimate is not None:
            self._estimate = submission.estimate.as_dict()
            context["ti"].xcom_push(key=XCOM_ESTIMATE, value=self._estimate)
        return submission

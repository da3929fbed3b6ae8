"""``OpenAIBatchOperator``: create a batch, wait for it without a worker slot, pass its files on.

The operator checks its inputs before spending anything, creates the batch (or finds the one
an earlier try of the same task instance created), pushes ``batch_id`` to XCom at once, and
defers to :class:`~batch_ops.airflow.OpenAIBatchTrigger`. It returns (XCom ``return_value``)::

    {"batch_id", "status", "input_file_id", "output_file_id", "error_file_id", "request_counts", "usage"}

Re-attaching. Every batch is tagged with an idempotency key derived from
(dag_id, task_id, run_id, map_index). A retry looks the key up and re-attaches to that batch
instead of billing a second one, when the batch is still running or ended acceptably. A batch
that ended in an outcome the failure policy rejects (``failed``: e.g. ``token_limit_exceeded``,
"retry later") cannot succeed by waiting on it again, so the retry creates a new one, tagged
with the next key of the task instance's chain (``<key>.1``, ``<key>.2``, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from airflow.sdk import BaseOperator

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.0 kept it in airflow.exceptions
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.links import OpenAIBatchLink, batch_url
from batch_ops.airflow.triggers import EVENT_KINDS, OpenAIBatchTrigger
from batch_ops.client import BatchClient
from batch_ops.errors import (
    APIConnectionError,
    APITimeoutError,
    BatchOpsError,
    BatchTimeoutError,
    ConfigurationError,
    InputValidationError,
    status_error_class,
)
from batch_ops.models import Batch, BatchStatus
from batch_ops.polling import DEFAULT_FAIL_ON, describe, outcome_error, raise_for_outcome
from batch_ops.settings import ClientSettings

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["XCOM_BATCH", "XCOM_BATCH_ID", "OpenAIBatchOperator", "idempotency_key"]

#: XCom key holding the batch id from the moment the batch exists.
XCOM_BATCH_ID = "batch_id"
#: XCom key holding the result dict whatever the outcome: a failed, expired or cancelled task
#: still hands its partial ``output_file_id`` to downstream tasks (``trigger_rule="all_done"``).
XCOM_BATCH = "batch"
#: Seconds of clock skew allowed between Airflow and the API when bounding the key lookup.
_LOOKBACK_SKEW = 600.0
#: A task instance may chain at most this many failed batches before giving up.
_MAX_CHAIN = 50


def idempotency_key(*, dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """The stable key of one task instance: every try of it computes the same value.

    Example:
        >>> k = idempotency_key(dag_id="d", task_id="t", run_id="manual__1", map_index=-1)
        >>> k == idempotency_key(dag_id="d", task_id="t", run_id="manual__1"), len(k)
        (True, 43)
        >>> k != idempotency_key(dag_id="d", task_id="t", run_id="manual__1", map_index=0)
        True
    """
    raw = json.dumps([dag_id, task_id, run_id, int(map_index)], separators=(",", ":"))
    return "af-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def _chain_key(base: str, generation: int) -> str:
    return base if generation == 0 else f"{base}.{generation}"


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {value!r}")
    return seconds


def _fail_on(value: Collection[BatchStatus | str]) -> tuple[str, ...]:
    statuses = tuple(sorted({BatchStatus.parse(s).value for s in value}))
    not_terminal = [s for s in statuses if not BatchStatus(s).is_terminal]
    if not_terminal:
        raise ValueError(f"fail_on may only name terminal statuses (failed, expired, cancelled), got {not_terminal}")
    return statuses


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


# ------------------------------------------------------------------------------------------
# Shared by the operator and the sensor: events in, results or exceptions out.
# ------------------------------------------------------------------------------------------


def check_event(event: Any) -> dict[str, Any]:
    """Return a trigger event we know how to handle, or raise naming what is wrong with it."""
    if event is None:
        raise BatchOpsError(
            "The task resumed without a trigger event, so the batch's outcome is unknown; "
            "clear the task to wait again."
        )
    if not isinstance(event, Mapping) or event.get("event") not in EVENT_KINDS or not event.get("batch_id"):
        shown = repr(event)[:200]
        raise BatchOpsError(f"Unknown trigger event {shown}; expected one from OpenAIBatchTrigger.")
    if event["event"] == "terminal" and not isinstance(event.get("batch"), Mapping):
        raise BatchOpsError(f"Trigger event for batch {event['batch_id']} has no batch object.")
    return dict(event)


def error_from_event(event: Mapping[str, Any]) -> BatchOpsError:
    """The exception an ``error`` event stands for (the class the client would have raised)."""
    message = str(event.get("message") or "polling failed")
    status_code = event.get("status_code")
    if isinstance(status_code, int):
        return status_error_class(status_code)(message, status_code=status_code)
    cls = _PLAIN_ERRORS.get(str(event.get("error_type")), BatchOpsError)
    return cls(message)


_PLAIN_ERRORS: dict[str, type[BatchOpsError]] = {
    "APIConnectionError": APIConnectionError,
    "APITimeoutError": APITimeoutError,
    "ConfigurationError": ConfigurationError,
}


def event_batch(event: Mapping[str, Any]) -> Batch | None:
    data = event.get("batch")
    return Batch.model_validate(data) if isinstance(data, Mapping) else None


class _BatchResultMixin:
    """Finishing a wait, for operator and sensor: XCom, failure policy, timeout handling."""

    conn_id: str
    fail_on: tuple[str, ...]
    fail_on_request_failures: bool
    cancel_on_kill: bool
    cancel_on_timeout: bool
    _batch_id: str | None
    log: Any

    def on_kill(self) -> None:
        """Cancel the batch when a running (not deferred) task is killed, if ``cancel_on_kill``.

        A deferred task has no worker process: there the trigger's ``on_kill`` cancels.
        """
        if not (self.cancel_on_kill and self._batch_id):
            return
        try:
            with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
                batch = client.batches.cancel(self._batch_id)
            self.log.info("Task killed; cancelled batch %s (now %s)", self._batch_id, batch.status.value)
        except Exception as exc:  # a kill must not fail on a cancel error
            self.log.warning("Task killed; cancelling batch %s failed: %s", self._batch_id, exc)

    def _finish(self, context: Context, batch: Batch) -> dict[str, Any]:
        summary = batch.summary()
        # Pushed before the policy may fail the task, so partial output is never lost.
        context["ti"].xcom_push(key=XCOM_BATCH, value=summary)
        self.log.info("Batch %s ended %s", batch.id, describe(batch))
        raise_for_outcome(batch, fail_on=self.fail_on, fail_on_request_failures=self.fail_on_request_failures)
        return summary

    def _resume(self, context: Context, event: Any) -> dict[str, Any]:
        payload = check_event(event)
        self._batch_id = payload["batch_id"]
        kind = payload["event"]
        if kind == "terminal":
            batch = event_batch(payload)
            assert batch is not None  # check_event made sure
            return self._finish(context, batch)
        if kind == "timeout":
            last = event_batch(payload)
            if last is not None:
                context["ti"].xcom_push(key=XCOM_BATCH, value=last.summary())
            self._timed_out(context, payload["batch_id"], last=last, deadline=payload.get("deadline"))
        raise error_from_event(payload)

    def _timed_out(self, context: Context, batch_id: str, *, last: Batch | None, deadline: float | None) -> NoReturn:
        note = "it keeps running on the server"
        if self.cancel_on_timeout:
            try:
                with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
                    client.batches.cancel(batch_id)
                note = "cancel requested (cancel_on_timeout=True); completed work stays in its output file"
            except BatchOpsError as exc:
                note = f"cancelling it failed ({exc})"
        state = f" (last seen {describe(last)})" if last is not None else ""
        raise BatchTimeoutError(
            f"Timed out waiting for batch {batch_id}{state}; {note}.",
            batch=last,
            batch_id=batch_id,
            deadline=deadline,
        )


class OpenAIBatchOperator(_BatchResultMixin, BaseOperator):
    """Run one OpenAI batch: create it, wait for a terminal status (deferred), return its files.

    Give exactly one input: ``input_file_id`` (already uploaded), ``input_path`` (a local
    JSONL file: validated, then uploaded) or ``requests`` (request dicts, or an XComArg
    producing them; ``url``/``method`` default to ``endpoint``/POST).

    Args:
        endpoint: e.g. ``/v1/chat/completions`` (templated).
        input_file_id / input_path / requests: the input, see above (the first two templated).
        conn_id: an ``openai_batch`` connection (or an ``openai`` one).
        metadata: up to 15 string pairs (batch_ops keeps one for its idempotency key; templated).
        output_expires_after: ``{"anchor": "created_at", "seconds": 3600..2592000}`` (templated).
        completion_window: ``"24h"`` (templated).
        deferrable: wait in the triggerer (default) instead of holding a worker slot.
        poll_interval: seconds between status polls; backs off to ``max_poll_interval``
            while nothing changes.
        timeout: how long one try waits (seconds or timedelta; None: until terminal).
        wait_for_completion: False returns right after the create (pair with
            :class:`~batch_ops.airflow.OpenAIBatchSensor`).
        fail_on: terminal statuses that fail the task (default failed, expired, cancelled).
        fail_on_request_failures: also fail a completed batch with ``request_counts.failed > 0``.
        cancel_on_kill: cancel the batch when the task is killed (mark failed/success, clear),
            on the worker and, on Airflow >= 3.3, while deferred.
        cancel_on_timeout: cancel the batch when ``timeout`` passes (otherwise it keeps running
            and a retry re-attaches to it).
        reattach: look for a batch an earlier try created before creating one (see module doc).

    Example:
        >>> op = OpenAIBatchOperator(task_id="embed", endpoint="/v1/embeddings",
        ...                          input_path="/data/{{ ds }}/requests.jsonl", poll_interval=60)
        >>> op.deferrable, op.fail_on
        (True, ('cancelled', 'expired', 'failed'))
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
        endpoint: str,
        input_file_id: str | None = None,
        input_path: str | os.PathLike[str] | None = None,
        requests: Any = None,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        completion_window: str = "24h",
        deferrable: bool = True,
        poll_interval: float = 60.0,
        max_poll_interval: float | None = None,
        timeout: timedelta | float | None = timedelta(hours=48),
        wait_for_completion: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = False,
        reattach: bool = True,
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
        # A str, a PathLike, or an XComArg / template resolved at run time (so not fspath'd here).
        self.input_path = os.fspath(input_path) if isinstance(input_path, os.PathLike) else input_path
        self.requests = _literal(requests) if isinstance(requests, (list, tuple)) else requests
        self.conn_id = conn_id
        self.metadata = dict(metadata) if metadata is not None else None
        self.output_expires_after = output_expires_after
        self.completion_window = completion_window
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max_poll_interval
        self.timeout = _seconds(timeout)
        self.wait_for_completion = wait_for_completion
        self.fail_on = _fail_on(fail_on)
        self.fail_on_request_failures = fail_on_request_failures
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.reattach = reattach
        self._batch_id: str | None = None
        self._batch_url: str | None = None

    # -- execute ----------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        settings = self._settings(context)
        with BatchClient(settings=settings) as client:
            batch = self._create_or_attach(client, context)
            self._batch_id = batch.id
            self._batch_url = batch_url(settings, batch.id)
            context["ti"].xcom_push(key=XCOM_BATCH_ID, value=batch.id)
            # Now, not when the task ends: the link works while the task is deferred.
            context["ti"].xcom_push(key=OpenAIBatchLink().xcom_key, value=self._batch_url)
            if not self.wait_for_completion:
                return batch.summary()
            if batch.is_terminal:
                return self._finish(context, batch)
            deadline = time.time() + self.timeout if self.timeout is not None else None
            if self.deferrable:
                self.defer(
                    trigger=OpenAIBatchTrigger(
                        conn_id=self.conn_id,
                        batch_id=batch.id,
                        poll_interval=self.poll_interval,
                        max_poll_interval=self.max_poll_interval,
                        deadline=deadline,
                        cancel_on_kill=self.cancel_on_kill,
                    ),
                    method_name="execute_complete",
                )
            try:
                batch = client.batches.wait(
                    batch.id,
                    poll_interval=self.poll_interval,
                    max_poll_interval=self.max_poll_interval,
                    timeout=None,
                    deadline=deadline,
                )
            except BatchTimeoutError as exc:
                if exc.batch is not None:
                    context["ti"].xcom_push(key=XCOM_BATCH, value=exc.batch.summary())
                self._timed_out(context, batch.id, last=exc.batch, deadline=deadline)
            return self._finish(context, batch)

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger fired: apply the failure policy and return the result dict."""
        return self._resume(context, event)

    # -- helpers ----------------------------------------------------------------------------
    def _settings(self, context: Context) -> ClientSettings:
        settings = OpenAIBatchHook(conn_id=self.conn_id).get_settings()
        started = getattr(context.get("dag_run"), "start_date", None)
        if self.reattach and started is not None:
            # A batch of this task instance cannot predate its DAG run: bound the key lookup
            # (a scan of the batch list) to the run instead of the default week of history.
            window = time.time() - started.timestamp() + _LOOKBACK_SKEW
            settings = settings.model_copy(update={"idempotency_lookback": max(window, _LOOKBACK_SKEW)})
        return settings

    def _create_or_attach(self, client: BatchClient, context: Context) -> Batch:
        key: str | None = None
        if self.reattach:
            ti = context["ti"]
            base = idempotency_key(
                dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                map_index=ti.map_index if ti.map_index is not None else -1,
            )
            for generation in range(_MAX_CHAIN):
                key = _chain_key(base, generation)
                found = client.batches.find_by_idempotency_key(key)
                if found is None:
                    break
                rejected = found.is_terminal and outcome_error(
                    found, fail_on=self.fail_on, fail_on_request_failures=self.fail_on_request_failures
                )
                if not rejected:
                    self.log.info("Re-attaching to batch %s (%s) created by an earlier try", found.id, describe(found))
                    return found
                self.log.warning(
                    "Batch %s from an earlier try ended %s; creating a new batch", found.id, describe(found)
                )
            else:
                raise BatchOpsError(f"{_MAX_CHAIN} batches of this task instance failed already; not creating more.")
        return self._create(client, key)

    def _create(self, client: BatchClient, key: str | None) -> Batch:
        options: dict[str, Any] = {
            "endpoint": self.endpoint,
            "completion_window": self.completion_window,
            "metadata": self.metadata,
            "output_expires_after": _native_numbers(self.output_expires_after),
            "idempotency_key": key,
        }
        # reattach=False: _create_or_attach just looked the key up; submit need not scan again.
        try:
            if self.input_file_id is not None:
                batch = client.batches.create(input_file_id=self.input_file_id, **options)
            elif self.input_path is not None:
                batch = client.submit(Path(self.input_path), **options, reattach=False)
            else:
                requests = self.requests
                if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Collection):
                    raise ValueError(f"requests must be a list of request dicts, got {type(requests).__name__}")
                batch = client.submit(list(requests), **options, reattach=False)
        except InputValidationError as exc:
            # A bad file or parameter stays bad: fail now, without spending retries on it.
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        self.log.info("Created batch %s (%s)", batch.id, describe(batch))
        return batch

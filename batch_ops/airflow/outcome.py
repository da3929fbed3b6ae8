"""Ending a wait, for the operator and the sensor: trigger events in, a result dict or an exception out.

The failure policy is core's (:class:`batch_ops.OutcomePolicy`); this module only translates:
a trigger event into the batch (or error) it reports, the chain into the XCom dict, a rejected
outcome into the exception that fails the task (so Airflow retries it, and the retry makes the
chain's next attempt).

Examples:
    >>> check_event({"event": "nonsense"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.BatchOpsError: Unknown trigger event {'event': 'nonsense'}; expected one from OpenAIBatchTrigger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.triggers import EVENT_KINDS
from batch_ops.chain import Attempt, AttemptChain
from batch_ops.errors import (
    APIConnectionError,
    APITimeoutError,
    BatchOpsError,
    ConfigurationError,
    status_error_class,
)
from batch_ops.models import Batch
from batch_ops.outcomes import OutcomePolicy, describe, timeout_error

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = [
    "XCOM_BATCH",
    "XCOM_BATCH_ID",
    "BatchOutcomeMixin",
    "chain_of",
    "check_event",
    "error_from_event",
    "event_batch",
]

#: XCom key holding the batch id from the moment the batch exists.
XCOM_BATCH_ID = "batch_id"
#: XCom key holding the result dict whatever the outcome: a failed, expired or cancelled task
#: still hands its partial ``output_file_id`` to downstream tasks (``trigger_rule="all_done"``).
XCOM_BATCH = "batch"


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


def chain_of(batch: Batch, chain: Mapping[str, Any] | None) -> AttemptChain:
    """The chain a deferred task carried (``defer(kwargs=...)``), with the batch the trigger saw.

    A sensor (or a task deferred before chains existed) has none: the batch is a chain of one.
    """
    if chain:
        return AttemptChain.from_json(chain).with_batch(batch)
    return AttemptChain(batch.id, (Attempt(0, batch),))


class BatchOutcomeMixin:
    """Finishing a wait, for operator and sensor: XCom, failure policy, timeout, kill."""

    conn_id: str
    policy: OutcomePolicy
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

    def cost_fields(self, context: Context, chain: AttemptChain) -> dict[str, Any]:
        """Fields the result dict gets besides the chain's summary: the cost estimate and the actual bill (the
        operator fills them in; the sensor, which submitted nothing, leaves them None)."""
        return {"estimate": None, "cost": None}

    def finish(self, context: Context, chain: AttemptChain, *, satisfied: bool = False,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Push the result dict, then apply the policy: return it, or raise the outcome's error.

        ``satisfied``: the submit found a success for every request in the chain (the latest
        attempt was rejected after answering them all): nothing is left to retry, so it is accepted.
        ``extra``: keys added to the result dict (the operator's ``structured``).
        """
        summary = {**chain.summary(), **self.cost_fields(context, chain), **(extra or {})}
        latest = chain.latest
        assert latest is not None
        # Pushed before the policy may fail the task, so partial output is never lost.
        context["ti"].xcom_push(key=XCOM_BATCH, value=summary)
        self.log.info("Batch %s ended %s", latest.id, describe(latest))
        self.policy.check(latest, satisfied=satisfied)
        return summary

    def resume(self, context: Context, event: Any, chain: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Turn the trigger's event into the task's result (``terminal``) or error (``timeout``, ``error``)."""
        payload = check_event(event)
        self._batch_id = payload["batch_id"]
        kind = payload["event"]
        if kind == "terminal":
            batch = event_batch(payload)
            assert batch is not None  # check_event made sure
            return self.finish(context, chain_of(batch, chain))
        if kind == "timeout":
            last = event_batch(payload)
            if last is not None:
                context["ti"].xcom_push(key=XCOM_BATCH, value=chain_of(last, chain).summary())
            self.timed_out(payload, last=last)
        raise error_from_event(payload)

    def timed_out(self, payload: Mapping[str, Any], *, last: Batch | None) -> NoReturn:
        """Fail the task for a wait that ran out of time in the trigger, with core's error: core's wait
        already cancelled the batch there when ``cancel_on_timeout``."""
        batch_id, deadline = payload["batch_id"], payload.get("deadline")
        if payload.get("cancel_on_timeout") is None and self.cancel_on_timeout:
            # A trigger serialized by an earlier batch_ops was not asked to cancel: core cancels it now.
            with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
                raise client.batches.time_out(batch_id, cancel=True, last=last, deadline=deadline)
        raise timeout_error(batch_id, deadline=deadline, last=last, cancel=payload.get("cancel"))

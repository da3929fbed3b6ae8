"""``OpenAIBatchSensor``: wait for a batch that already exists (deferred, poke or reschedule).

Pairs with ``OpenAIBatchOperator(wait_for_completion=False)``, or watches a batch created
anywhere else. Returns the same dict as the operator and applies the same failure policy.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.0 kept it in airflow.exceptions
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]

from batch_ops import OutcomePolicy, is_permanent
from batch_ops.airflow.config import default_deferrable
from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.outcome import BatchOutcomeMixin, chain_of, check_event
from batch_ops.airflow.triggers import OpenAIBatchTrigger
from batch_ops.errors import APIConnectionError, APIStatusError
from batch_ops.models import BatchStatus
from batch_ops.polling import DEFAULT_FAIL_ON, BatchPoller, describe

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["OpenAIBatchSensor"]


class OpenAIBatchSensor(BatchOutcomeMixin, BaseSensorOperator):
    """Wait until ``batch_id`` is terminal; return ``{"batch_id", "status", ..., "usage"}``.

    Args:
        batch_id: the batch to wait for (templated), e.g.
            ``"{{ ti.xcom_pull(task_ids='create', key='batch_id') }}"``.
        conn_id: an ``openaibatch`` (or ``openai``) connection.
        deferrable: wait in the triggerer; False uses ``mode`` (poke or reschedule). Default: Airflow's
            ``[operators] default_deferrable`` when the environment sets it, else True.
        poke_interval: seconds between polls (the trigger's poll interval when deferred).
        fail_on: terminal statuses that fail the sensor, as on the operator.
        fail_on_request_failures: also fail a completed batch with failed requests.
        cancel_on_kill: cancel the batch when the task is killed (default False: the sensor
            did not create it).
        cancel_on_timeout: cancel the batch when the sensor times out (``timeout``, a
            ``BaseSensorOperator`` argument: seconds before the sensor gives up, default 7 days).

    Examples:
        >>> s = OpenAIBatchSensor(task_id="wait", poke_interval=30,
        ...                       batch_id="{{ ti.xcom_pull(task_ids='create', key='batch_id') }}")
        >>> s.deferrable, s.template_fields
        (True, ('batch_id', 'conn_id'))
    """

    template_fields: Sequence[str] = ("batch_id", "conn_id")
    ui_color = "#10a37f"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        batch_id: str,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        deferrable: bool | None = None,
        poke_interval: float = 60.0,
        max_poll_interval: float | None = None,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        cancel_on_kill: bool = False,
        cancel_on_timeout: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.batch_id = batch_id
        self.conn_id = conn_id
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.max_poll_interval = max_poll_interval
        self.policy = OutcomePolicy.of(fail_on, fail_on_request_failures)
        self.fail_on = self.policy.names
        self.fail_on_request_failures = self.policy.fail_on_request_failures
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self._batch_id: str | None = None
        self._poller: BatchPoller | None = None

    def execute(self, context: Context) -> Any:
        self._batch_id = self.batch_id
        if not self.deferrable:
            return super().execute(context)
        # One look first: a batch that is already done needs no trigger.
        done = self.poke(context)
        if done:
            return done.xcom_value if isinstance(done, PokeReturnValue) else None
        self.defer(
            trigger=OpenAIBatchTrigger(
                conn_id=self.conn_id,
                batch_id=self.batch_id,
                poll_interval=max(self.poke_interval, 1.0),
                max_poll_interval=self.max_poll_interval,
                timeout=self.timeout,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        if self._poller is None:
            self._poller = BatchPoller(poll_interval=max(self.poke_interval, 1.0))
        try:
            with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
                batch = client.batches.retrieve(self.batch_id)
        except (APIConnectionError, APIStatusError) as exc:
            if is_permanent(exc):
                raise  # no such batch, wrong key: waiting will not help
            decision = self._poller.failed(now=time.time(), retryable=True, error=str(exc))
            if decision.action == "done":
                raise
            self.log.warning("Polling batch %s failed (%s); trying again", self.batch_id, exc)
            return False
        if not batch.is_terminal:
            self.log.info("Batch %s: %s", batch.id, describe(batch))
            return False
        return PokeReturnValue(is_done=True, xcom_value=self.finish(context, chain_of(batch, None)))

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger fired; a timeout skips the task when ``soft_fail``."""
        payload = check_event(event)
        if payload["event"] == "timeout" and self.soft_fail:
            raise AirflowSkipException(f"{payload['message']} (soft_fail=True)")
        return self.resume(context, payload)

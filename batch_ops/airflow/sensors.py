"""``OpenAIBatchSensor``: wait for a batch that already exists (deferred, poke or reschedule).

Pairs with ``OpenAIBatchOperator(wait_for_completion=False)``, or watches a batch created
anywhere else. Returns the same dict as the operator and applies the same failure policy.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.0 kept it in airflow.exceptions
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]

from batch_ops.airflow.config import default_deferrable
from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.outcome import BatchOutcomeMixin, chain_of, check_event
from batch_ops.airflow.triggers import OpenAIBatchTrigger
from batch_ops.models import BatchStatus
from batch_ops.outcomes import DEFAULT_FAIL_ON, DEFAULT_WAIT_TIMEOUT, OutcomePolicy, describe
from batch_ops.polling import BatchPoller

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
        cancel_on_timeout: cancel the batch when the sensor times out while deferred (``timeout``, a
            ``BaseSensorOperator`` argument: seconds before the sensor gives up; default
            :data:`batch_ops.outcomes.DEFAULT_WAIT_TIMEOUT`, 25 h, the default of every wait).

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
        timeout: timedelta | float = DEFAULT_WAIT_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        # One default for every wait (Airflow's own is 7 days); a parameter here, so default_args still set it.
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
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
                cancel_on_timeout=self.cancel_on_timeout,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        # One poll, decided by core (kept across pokes: it counts failed polls in a row). A permanent
        # error (no such batch, wrong key), or one failed poll too many, is raised.
        if self._poller is None:
            self._poller = BatchPoller(poll_interval=max(self.poke_interval, 1.0))
        with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
            poll = client.batches.poll(self.batch_id, poller=self._poller)
        if poll.batch is None:
            self.log.warning("Polling batch %s failed (%s); trying again", self.batch_id, poll.error)
            return False
        if not poll.done:
            self.log.info("Batch %s: %s", poll.batch.id, describe(poll.batch))
            return False
        return PokeReturnValue(is_done=True, xcom_value=self.finish(context, chain_of(poll.batch, None)))

    def execute_complete(self, context: Context, event: Any = None) -> Any:
        """Resume after the trigger fired; a timeout skips the task when ``soft_fail``."""
        payload = check_event(event)
        if payload["event"] == "timeout" and self.soft_fail:
            raise AirflowSkipException(f"{payload['message']} (soft_fail=True)")
        return self.resume(context, payload)

"""``OpenAIBatchJobOperator``: a job over many batches, run deferrably.

The job itself is core's :class:`~batch_ops.jobs.BatchJob` (sharding, resubmission rounds,
token-limit back-off, recovery of expired and cancelled work, one merged output, a state file
next to the output). The operator only alternates between the worker and the triggerer:

* on the worker, one short step: harvest finished batches, submit what may start;
* in the triggerer, :class:`OpenAIBatchJobTrigger` waits — without blocking the event loop —
  until any running batch ends or a token-limit back-off is over; then back to the worker.

It returns (XCom ``return_value``) the job summary: ``total``, ``succeeded``, ``failed``,
``batches``, ``resubmitted``, ``rounds``, ``usage``, ``output_path`` and ``state_path``.

The state file sits next to the output, so the output must be where every worker that runs a
step sees it: a local path with the LocalExecutor (or a volume every worker mounts); with
workers that share no disk (CeleryExecutor, KubernetesExecutor) an object storage URL
(``s3://…``, with ``storage_conn_id`` for its connection), where the job keeps its state, parts
and results (:mod:`batch_ops.jobs.store`). Each step (and a retried task) resumes the job from
there: no finished batch is submitted again, and a batch whose create was interrupted is
re-attached, not paid twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from batch_ops.airflow.config import default_deferrable
from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.airflow.operators import with_storage_conn
from batch_ops.airflow.triggers import shared_client
from batch_ops.errors import BatchOpsError, BatchTimeoutError, RequestFailuresError
from batch_ops.jobs import BatchJob, JobConfig, JobProgress
from batch_ops.outcomes import check_deadline

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["OpenAIBatchJobOperator", "OpenAIBatchJobTrigger"]

#: Consecutive failed polls of the whole set tolerated before the trigger gives up.
MAX_FAILED_POLLS = 5


class OpenAIBatchJobTrigger(BaseTrigger):
    """Wait until any of ``batch_ids`` ends, ``wake_at`` passes, or ``deadline`` passes.

    The wait is core's (``client.batches.wait_many`` through the shared async client of the
    connection): it polls every batch once per round and decides everything (interval, back-off
    while nothing changes, jitter, the bound on failed polls, the wake-up and the deadline); the
    trigger only maps how the wait ended to an event, and never blocks the loop.
    Events: ``{"event": "progress", "terminal": [ids]}``, ``{"event": "wake"}``,
    ``{"event": "timeout"}`` or ``{"event": "error", "message": ...}``.

    Examples:
        >>> t = OpenAIBatchJobTrigger(conn_id="openai_batch_default", batch_ids=["b1", "b2"],
        ...                           poll_interval=60, wake_at=None, deadline=2e9)
        >>> t.serialize()[0]
        'batch_ops.airflow.jobs.OpenAIBatchJobTrigger'
    """

    def __init__(self, *, conn_id: str, batch_ids: Sequence[str], poll_interval: float,
                 wake_at: float | None = None, deadline: float | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.batch_ids = list(batch_ids)
        self.poll_interval = float(poll_interval)
        self.wake_at = wake_at
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"conn_id": self.conn_id, "batch_ids": self.batch_ids, "poll_interval": self.poll_interval,
             "wake_at": self.wake_at, "deadline": self.deadline},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            client = await shared_client(self.conn_id)
        except Exception as exc:  # connection missing or unusable: nothing to retry here
            yield TriggerEvent({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        try:
            # The first round is spread (at most 5 s): a restarted triggerer must not poll everything at once.
            waited = await client.batches.wait_many(
                self.batch_ids, poll_interval=self.poll_interval, deadline=self.deadline, wake_at=self.wake_at,
                first_poll_spread=min(self.poll_interval, 5.0), max_consecutive_failures=MAX_FAILED_POLLS)
        except BatchOpsError as exc:  # permanent, or too many failed rounds in a row
            yield TriggerEvent({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
            return
        if waited.reason == "ended":
            yield TriggerEvent({"event": "progress", "terminal": waited.ended})
        else:
            yield TriggerEvent({"event": waited.reason})


class OpenAIBatchJobOperator(BaseOperator):
    """Run a request file of any size as many batches; every request answered or accounted for.

    Args:
        input_path: the request file (templated); any size — it is sharded. A local path or an
            object storage URL.
        output_path: the merged results (templated); the job's state and work files sit beside
            it. On workers that share no disk, an object storage URL (``s3://bucket/job/out.jsonl``).
        storage_conn_id: the Airflow connection of the URLs' object storage (they are read as
            ``ObjectStoragePath(url, conn_id=storage_conn_id)``); None: the file system's own
            defaults (environment, instance role).
        config: a :class:`~batch_ops.jobs.JobConfig` (or a dict of its fields; templated): the
            endpoint, concurrency, rounds, per-batch limits, metadata, prices and token-limit back-off.
            Its fields may also be given as keywords (``endpoint="/v1/embeddings"``).
        conn_id: an ``openaibatch`` (or ``openai``) connection.
        poll_interval: seconds between polls of the running batches.
        timeout: how long the whole job may take (seconds or timedelta); None: no limit.
        deferrable: wait in the triggerer or on the worker. Default: Airflow's
            ``[operators] default_deferrable`` when the environment sets it, else True.
        fail_on_request_failures: fail the task when requests failed after every round (the
            merged output and the summary are written first).

    Examples:
        >>> op = OpenAIBatchJobOperator(task_id="embed_all", input_path="/data/{{ ds }}/all.jsonl",
        ...                             output_path="/data/{{ ds }}/embeddings.jsonl", endpoint="/v1/embeddings")
        >>> op.deferrable, op.config["max_rounds"], op.config["endpoint"]
        (True, 3, '/v1/embeddings')
    """

    template_fields: Sequence[str] = ("input_path", "output_path", "config", "conn_id", "storage_conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"config": "json"}
    ui_color = "#10a37f"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        input_path: str,
        output_path: str,
        config: JobConfig | Mapping[str, Any] | None = None,
        storage_conn_id: str | None = None,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        poll_interval: float = 60.0,
        timeout: timedelta | float | None = timedelta(hours=72),
        deferrable: bool | None = None,
        fail_on_request_failures: bool = False,
        **kwargs: Any,
    ) -> None:
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in JobConfig.model_fields}
        super().__init__(**kwargs)
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.input_path = input_path
        self.output_path = output_path
        self.storage_conn_id = storage_conn_id
        # Checked now (a wrong setting fails at parse time), kept as a dict so Jinja renders its strings.
        self.config = JobConfig.of(config, **options).model_dump()
        self.conn_id = conn_id
        self.poll_interval = float(poll_interval)
        self.timeout_seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.fail_on_request_failures = fail_on_request_failures

    def _job(self) -> BatchJob:
        return BatchJob.open(with_storage_conn(self.input_path, self.storage_conn_id),
                             output_path=with_storage_conn(self.output_path, self.storage_conn_id), config=self.config)

    def execute(self, context: Context) -> Any:
        deadline = time.time() + self.timeout_seconds if self.timeout_seconds else None
        job = self._job()
        self.log.info("Job %s: %d requests in %d part(s); state %s", job.state.job_id, job.state.total,
                      len(job.state.parts), job.state_path)
        with OpenAIBatchHook(self.conn_id).get_client() as client:
            if not self.deferrable:
                def step(progress: JobProgress) -> None:
                    self._log_step(job, progress)
                    self._check_deadline(deadline, job)

                summary = job.run(client, poll_interval=self.poll_interval, on_step=step)
                return self._finish(summary.as_dict())
            return self._step(job, client, deadline)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None,
                         deadline: float | None = None) -> Any:
        if not isinstance(event, dict) or event.get("event") not in ("progress", "wake", "timeout", "error"):
            raise BatchOpsError(f"OpenAIBatchJobTrigger sent no usable event: {event!r}")
        job = self._job()
        if event["event"] == "timeout":
            raise BatchTimeoutError(f"Job {job.state.job_id} ran past its timeout ({job.describe()}); its batches "
                                    "keep running: clear the task to resume the job from its state file")
        if event["event"] == "error":
            raise BatchOpsError(f"Waiting for the job's batches failed: {event.get('message')}")
        with OpenAIBatchHook(self.conn_id).get_client() as client:
            return self._step(job, client, deadline)

    def _step(self, job: BatchJob, client: Any, deadline: float | None) -> Any:
        progress: JobProgress = job.advance(client)
        self._log_step(job, progress)
        if progress.done:
            return self._finish(job.finish().as_dict())
        self._check_deadline(deadline, job)
        self.defer(
            trigger=OpenAIBatchJobTrigger(conn_id=self.conn_id, batch_ids=progress.running,
                                          poll_interval=self.poll_interval, wake_at=progress.wake_at,
                                          deadline=deadline),
            method_name="execute_complete",
            kwargs={"deadline": deadline},
        )

    def _log_step(self, job: BatchJob, progress: JobProgress) -> None:
        for event in progress.events:
            self.log.info("Job %s: %s", job.state.job_id, event)
        self.log.info("Job %s: %s", job.state.job_id, job.describe())

    @staticmethod
    def _check_deadline(deadline: float | None, job: BatchJob) -> None:
        check_deadline(deadline, now=time.time(), what=f"Job {job.state.job_id} ({job.describe()})")

    def _finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.log.info("Job done: %d of %d succeeded, %d failed, %d batches; merged results in %s",
                      summary["succeeded"], summary["total"], summary["failed"], summary["batches"],
                      summary["output_path"])
        if self.fail_on_request_failures and summary["failed"]:
            raise RequestFailuresError(
                f"{summary['failed']} of {summary['total']} requests failed after every round; "
                f"see {summary['output_path']}"
            )
        return summary


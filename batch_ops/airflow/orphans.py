"""The orphan sweep for Airflow: cancel batches whose task instance ended without them.

:class:`OpenAIBatchOrphanSweepOperator` lists the account's unfinished batches, asks Airflow
(through the running task's own API, so no database access and no extra credentials) for the
state of the DAG run of the task instance each batch names in its ``airflow_task_instance``
metadata, and cancels the batches whose DAG run has ended: see :mod:`batch_ops.orphans` for the
rules and :func:`dag_run_states` for why the run, not the task instance, decides.
``dags/batch_ops_orphan_sweep.py`` runs it hourly.

It cancels only batches it can prove are this deployment's: the owner record must name this
deployment's identity (:mod:`batch_ops.airflow.deployment`). Another deployment sharing the API
project (staging beside production, the same DAG, the same run ids) has its batches reported as
``foreign`` and never touched; batches naming an identity this deployment made and then replaced
(first tasks making it at the same moment) are its own, proven by their Variable
``batch_ops_deployment_id.<value>`` (:func:`~batch_ops.airflow.deployment.proves_identity`);
batches an earlier batch_ops made name no deployment and are reported as ``unproven`` unless
``sweep_unproven=True`` (an account no other deployment uses).

Examples:
    >>> op = OpenAIBatchOrphanSweepOperator(task_id="sweep", cancel=False)
    >>> op.cancel, op.min_age, op.sweep_unproven
    (False, 600.0, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from batch_ops.airflow.deployment import deployment_identity, proves_identity
from batch_ops.airflow.hooks import OpenAIBatchHook
from batch_ops.identity import Owner
from batch_ops.orphans import DEFAULT_LOOKBACK, DEFAULT_MIN_AGE, OwnerState, sweep

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["OpenAIBatchOrphanSweepOperator", "dag_run_states"]

#: DAG run states of a run that is still going (one of its tasks, or a retry, will collect the batch).
_GOING = frozenset({"queued", "running"})


def dag_run_states(ti: Any, owners: list[Owner]) -> Mapping[str, OwnerState]:
    """Whether each Airflow owner's DAG run is still going, asked of Airflow through the running task ``ti``.

    The DAG run decides, not the task instance: with ``wait_for_completion=False`` the creating
    task succeeds at once and a sensor downstream collects the batch, and a failed try's retry
    re-attaches. A run that is queued or running is going; any other state has ended. Runs
    Airflow has no record of (deleted, another deployment's) are unknown.
    """
    out: dict[str, OwnerState] = {}
    asked: dict[tuple[str, str], OwnerState] = {}
    for owner in owners:
        dag_id, run_id = owner.get("dag_id"), owner.get("run_id")
        if owner.system != "airflow" or not dag_id or not run_id:
            continue
        where = (str(dag_id), str(run_id))
        if where not in asked:
            try:
                state = ti.get_dagrun_state(dag_id=where[0], run_id=where[1])
            except Exception:  # the execution API answers 404 for a run it does not have
                asked[where] = OwnerState.UNKNOWN
            else:
                state = str(getattr(state, "value", state))
                asked[where] = OwnerState.ACTIVE if state in _GOING else OwnerState.ENDED
        out[owner.id] = asked[where]
    return out


class OpenAIBatchOrphanSweepOperator(BaseOperator):
    """Cancel (or, with ``cancel=False``, report) batches whose Airflow DAG run has ended.

    Args:
        conn_id: the ``openaibatch`` connection whose account is swept.
        cancel: cancel the orphans (default); False only reports them.
        min_age: keep batches younger than this (seconds or timedelta).
        lookback: how far back batches are listed (seconds or timedelta; default 3 days).
        sweep_unproven: also cancel ended batches whose owner names no deployment (made by an
            earlier batch_ops). Only for an API project that no other Airflow deployment uses:
            their run ids may be this deployment's too.

    Returns (XCom): ``{"counts": {...}, "batches": [...]}``, one entry per unfinished batch with
    its owner, the owner's state and the verdict (kept, orphan, unproven, foreign, unknown,
    unowned); no secrets.
    """

    template_fields: Sequence[str] = ("conn_id",)
    ui_color = "#10a37f"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        cancel: bool = True,
        min_age: timedelta | float = DEFAULT_MIN_AGE,
        lookback: timedelta | float = DEFAULT_LOOKBACK,
        sweep_unproven: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.cancel = cancel
        self.sweep_unproven = sweep_unproven
        self.min_age = min_age.total_seconds() if isinstance(min_age, timedelta) else float(min_age)
        self.lookback = lookback.total_seconds() if isinstance(lookback, timedelta) else float(lookback)

    def execute(self, context: Context) -> dict[str, Any]:
        import time

        ti = context["ti"]
        deployment = deployment_identity()
        with OpenAIBatchHook(conn_id=self.conn_id).get_client() as client:
            report = sweep(client, lambda owners: dag_run_states(ti, owners), cancel=self.cancel,
                           since=time.time() - self.lookback, min_age=self.min_age, systems=["airflow"],
                           deployment=deployment, sweep_unproven=self.sweep_unproven, proves=proves_identity)
        for j in report.judgements:
            if j.verdict != "kept":
                owner = j.owner.label if j.owner else "no owner"
                self.log.info("Batch %s (%s, %s): %s: %s%s", j.batch.id, j.batch.status.value, owner, j.verdict,
                              j.reason, " — cancelled" if j.cancelled else "")
        self.log.info("Sweep (deployment %s): %s", deployment or "unknown", dict(report.counts()))
        return report.as_dict()

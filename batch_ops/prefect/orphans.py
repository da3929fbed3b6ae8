"""The orphan sweep for Prefect: cancel batches whose flow run ended without them.

Prefect cancels a deployment's flow run by killing its process and then running its
``on_cancellation`` hooks (:func:`~batch_ops.prefect.flows.cancel_flow_run_batches`). When the
worker and the flow-run process are lost together (a lost pod, ``kill -9``), nothing runs the
hook: the parent stays ``Cancelling``, its ``run_batch`` subflows stay ``Running``, and their
batches keep going with nobody to collect them. :func:`sweep_orphan_batches`, a flow to deploy
on a schedule, finds them: every batch the tasks create names its flow run in metadata
(``prefect_flow_run_id``), and :func:`flow_run_states` asks Prefect about each.

A flow run has ended when it, or any flow run above it (its parent, the parent's parent), is
in a final state (completed, failed, cancelled, crashed) or ``Cancelling``: a subflow of a
cancelled parent is going nowhere, whatever its own state says. A run that is scheduled (also
``AwaitingRetry``), pending, running or paused is going; a retry re-attaches to its batches.

Examples:
    ```python
    from batch_ops.prefect import sweep_orphan_batches
    sweep_orphan_batches.serve(name="batch-ops-orphan-sweep", cron="*/15 * * * *")
    ```
"""

import uuid
from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from batch_ops.client import AsyncBatchClient
from batch_ops.identity import Owner
from batch_ops.orphans import DEFAULT_MIN_AGE, OwnerState, asweep
from batch_ops.prefect.credentials import OpenAIBatchCredentials, resolve_settings

__all__ = ["flow_run_states", "sweep_orphan_batches"]

_ENDED = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED,
                    StateType.CANCELLING})
#: How many parents up a sweep looks (subflows nest a few deep; a cycle cannot happen, but bound it).
_MAX_DEPTH = 20


async def _run_state(client: PrefectClient, flow_run_id: str, seen: dict[str, OwnerState]) -> OwnerState:
    if flow_run_id in seen:
        return seen[flow_run_id]
    state = OwnerState.ACTIVE
    current: str | None = flow_run_id
    for _ in range(_MAX_DEPTH):
        if current is None:
            break
        try:
            run = await client.read_flow_run(uuid.UUID(current))
        except (ObjectNotFound, ValueError):
            state = OwnerState.UNKNOWN if current == flow_run_id else state
            break
        if run.state is not None and run.state.type in _ENDED:
            state = OwnerState.ENDED
            break
        if run.parent_task_run_id is None:
            break
        try:
            parent_task = await client.read_task_run(run.parent_task_run_id)
        except ObjectNotFound:
            break
        current = str(parent_task.flow_run_id) if parent_task.flow_run_id else None
    seen[flow_run_id] = state
    return state


async def flow_run_states(owners: list[Owner]) -> Mapping[str, OwnerState]:
    """Whether each Prefect owner's flow run is still going (see the module doc); asks the Prefect API."""
    seen: dict[str, OwnerState] = {}
    out: dict[str, OwnerState] = {}
    async with get_client() as client:
        for owner in owners:
            if owner.system == "prefect":
                out[owner.id] = await _run_state(client, owner.id, seen)
    return out


@flow(name="batch-ops-orphan-sweep", log_prints=False)
async def sweep_orphan_batches(
    credentials: OpenAIBatchCredentials | None = None,
    cancel: bool = True,
    min_age: float = DEFAULT_MIN_AGE,
    lookback_hours: float = 72.0,
) -> dict[str, Any]:
    """Cancel (or, with ``cancel=False``, report) the batches whose Prefect flow run has ended.

    Returns ``{"counts": {...}, "batches": [...]}``: one entry per unfinished batch with its
    owner, the owner's state and the verdict (kept, orphan, unknown, unowned); no secrets.
    Batches younger than ``min_age`` seconds are kept.
    """
    import time

    logger = get_run_logger()
    async with AsyncBatchClient(settings=resolve_settings(credentials)) as client:
        report = await asweep(client, flow_run_states, cancel=cancel, since=time.time() - lookback_hours * 3600,
                              min_age=min_age, systems=["prefect"])
    for j in report.judgements:
        if j.verdict != "kept":
            owner = f"{j.owner.system}:{j.owner.id}" if j.owner else "no owner"
            logger.info("Batch %s (%s, %s): %s: %s%s", j.batch.id, j.batch.status.value, owner, j.verdict, j.reason,
                        " — cancelled" if j.cancelled else "")
    logger.info("Sweep: %s", dict(report.counts()))
    return report.as_dict()

"""Orphaned batches: batches still running whose owning run has ended without them.

A run that dies hard (a lost pod, ``kill -9`` of a worker and its flow-run process, a task
marked failed while the triggerer was down) leaves its batches running, with nobody to collect
or cancel them; they still cost money. Every batch batch_ops creates from an orchestrator names
its owner in metadata:

* Airflow: ``airflow_task_instance`` = ``{"dag_id", "run_id", "task_id", "map_index"}`` (JSON);
* Prefect: ``prefect_flow_run_id`` = the flow run that created it.

A sweep lists the account's recent batches, asks the orchestrator for each owner's state (an
*oracle*: :mod:`batch_ops.prefect.orphans`, :mod:`batch_ops.airflow.orphans`, or the CLI's
``batch-ops orphans``), and judges each unfinished batch with :func:`judge`, a pure function:

============================  ==========================================================
the owner is …                the batch is …
============================  ==========================================================
running, queued, retrying     ``kept``: its run will collect it (a retry re-attaches)
ended (any final state)       ``orphan``: cancelled when the sweep cancels
unknown to the orchestrator   ``unknown``: reported, never cancelled (deleted run, other
                              orchestrator, another deployment's database)
not named in metadata         ``unowned``: reported, never cancelled (made outside batch_ops'
                              adapters: by hand, by another tool)
============================  ==========================================================

Batches younger than ``min_age`` are kept whatever their owner says: a run's state reaches the
orchestrator's database a moment after the run acted.

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
    ...           created_at=1000, metadata={"prefect_flow_run_id": "run-1"})
    >>> owner_of(b)
    Owner(system='prefect', id='run-1', fields=(('flow_run_id', 'run-1'),))
    >>> judge(b, OwnerState.ENDED, now=2000, min_age=60).verdict
    'orphan'
    >>> judge(b, OwnerState.ACTIVE, now=2000, min_age=60).verdict  # its run will collect it
    'kept'
    >>> judge(b, OwnerState.ENDED, now=1010, min_age=60).verdict  # too young to judge
    'kept'
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from batch_ops.errors import BatchOpsError
from batch_ops.models import Batch, BatchStatus

if TYPE_CHECKING:
    from batch_ops.client import AsyncBatchClient, BatchClient

__all__ = [
    "AIRFLOW_OWNER_KEY",
    "OWNER_METADATA_KEYS",
    "PREFECT_OWNER_KEY",
    "Judgement",
    "Owner",
    "OwnerState",
    "SweepReport",
    "airflow_owner_metadata",
    "asweep",
    "judge",
    "owner_of",
    "sweep",
    "sweep_candidates",
]

#: How far back a sweep looks by default (seconds): the API's longest completion window, and then some.
DEFAULT_LOOKBACK = 3 * 24 * 3600.0
#: Batches younger than this are kept by default (seconds).
DEFAULT_MIN_AGE = 600.0

#: An oracle: the states of the given owners, by ``Owner.id`` (a missing id counts as unknown).
Oracle = Callable[[list["Owner"]], Mapping[str, "OwnerState"]]
AsyncOracle = Callable[[list["Owner"]], Awaitable[Mapping[str, "OwnerState"]]]

AIRFLOW_OWNER_KEY = "airflow_task_instance"
PREFECT_OWNER_KEY = "prefect_flow_run_id"
#: The metadata pairs batch_ops' adapters add to name a batch's owner.
OWNER_METADATA_KEYS = (AIRFLOW_OWNER_KEY, PREFECT_OWNER_KEY)
#: The API's limit on a metadata value.
_VALUE_MAX = 512

Verdict = Literal["kept", "orphan", "unknown", "unowned"]


class OwnerState(str, Enum):
    """What the orchestrator says of a batch's owner."""

    ACTIVE = "active"
    ENDED = "ended"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Owner:
    """The run that created a batch: ``system`` (``airflow``/``prefect``), a stable ``id``, and its fields."""

    system: str
    id: str
    fields: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        return dict(self.fields).get(name)


def airflow_owner_metadata(*, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, str]:
    """The metadata pair naming an Airflow task instance as a batch's owner.

    Examples:
        >>> airflow_owner_metadata(dag_id="d", run_id="manual__1", task_id="t")
        {'airflow_task_instance': '{"dag_id":"d","run_id":"manual__1","task_id":"t","map_index":-1}'}
    """
    doc = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": int(map_index)}
    value = json.dumps(doc, separators=(",", ":"))
    if len(value) > _VALUE_MAX:  # ids of 250 characters each: keep what fits, the sweep then says "unknown"
        value = value[:_VALUE_MAX]
    return {AIRFLOW_OWNER_KEY: value}


def owner_of(batch: Batch) -> Owner | None:
    """The owner named in ``batch``'s metadata, or None."""
    meta = batch.metadata or {}
    if meta.get(PREFECT_OWNER_KEY):
        run = str(meta[PREFECT_OWNER_KEY])
        return Owner("prefect", run, (("flow_run_id", run),))
    raw = meta.get(AIRFLOW_OWNER_KEY)
    if raw:
        try:
            doc = json.loads(raw)
            ident = f"{doc['dag_id']}/{doc['run_id']}/{doc['task_id']}/{int(doc.get('map_index', -1))}"
        except (ValueError, KeyError, TypeError):
            return Owner("airflow", str(raw), ())  # cut short or edited: the oracle will not know it
        return Owner("airflow", ident, tuple((k, doc[k]) for k in ("dag_id", "run_id", "task_id", "map_index")
                                             if k in doc))
    return None


@dataclass(frozen=True)
class Judgement:
    """One unfinished batch, its owner, what the orchestrator said, and the verdict."""

    batch: Batch
    owner: Owner | None
    state: OwnerState | None
    verdict: Verdict
    reason: str
    cancelled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch.id, "status": self.batch.status.value, "created_at": self.batch.created_at,
                "owner": f"{self.owner.system}:{self.owner.id}" if self.owner else None,
                "owner_state": self.state.value if self.state else None, "verdict": self.verdict,
                "reason": self.reason, "cancelled": self.cancelled}


def judge(batch: Batch, state: OwnerState | None, *, now: float, min_age: float) -> Judgement:
    """The verdict on one unfinished batch, given its owner's state (see the module table)."""
    owner = owner_of(batch)
    if owner is None:
        return Judgement(batch, None, None, "unowned", "no owner in metadata: made outside an orchestrator")
    if state is None or state is OwnerState.UNKNOWN:
        return Judgement(batch, owner, OwnerState.UNKNOWN, "unknown", "the orchestrator does not know this run")
    if state is OwnerState.ACTIVE:
        return Judgement(batch, owner, state, "kept", "its run is still going: it will collect the batch")
    if now - batch.created_at < min_age:
        return Judgement(batch, owner, state, "kept", f"created less than {min_age:.0f} s ago")
    return Judgement(batch, owner, state, "orphan", "its run ended without it")


def sweep_candidates(batches: Iterable[Batch]) -> list[Batch]:
    """The batches a sweep looks at: not finished, not already being cancelled."""
    return [b for b in batches if not b.status.is_terminal and b.status is not BatchStatus.CANCELLING]


@dataclass
class SweepReport:
    """What a sweep found: one :class:`Judgement` per unfinished batch, and the batches it cancelled."""

    judgements: list[Judgement] = field(default_factory=list)

    def of(self, verdict: Verdict) -> list[Judgement]:
        return [j for j in self.judgements if j.verdict == verdict]

    @property
    def orphans(self) -> list[Judgement]:
        return self.of("orphan")

    @property
    def cancelled(self) -> list[str]:
        return [j.batch.id for j in self.judgements if j.cancelled]

    def counts(self) -> Mapping[str, int]:
        out = {v: 0 for v in ("kept", "orphan", "unknown", "unowned")}
        for j in self.judgements:
            out[j.verdict] += 1
        return {**out, "cancelled": len(self.cancelled)}

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts()), "batches": [j.as_dict() for j in self.judgements]}


def _judge_all(batches: list[Batch], states: Mapping[str, OwnerState], min_age: float) -> list[Judgement]:
    now = time.time()
    out = []
    for batch in batches:
        owner = owner_of(batch)
        out.append(judge(batch, states.get(owner.id) if owner else None, now=now, min_age=min_age))
    return out


def _owners(batches: Iterable[Batch]) -> list[Owner]:
    return list({o.id: o for b in batches if (o := owner_of(b)) is not None}.values())


def sweep(
    client: BatchClient,
    oracle: Oracle,
    *,
    cancel: bool = False,
    since: float | None = None,
    min_age: float = DEFAULT_MIN_AGE,
    systems: Iterable[str] | None = None,
) -> SweepReport:
    """List the unfinished batches created since ``since``, judge each, and cancel the orphans when ``cancel``.

    ``oracle`` answers for the owners of ``systems`` (e.g. ``["prefect"]``); owners of other
    systems are reported as unknown. A cancel that fails (the batch finished meanwhile) is
    reported in the judgement's reason, and the sweep goes on.
    """
    start = since if since is not None else time.time() - DEFAULT_LOOKBACK
    batches = []
    for batch in client.batches.iter_all(limit=100):
        if batch.created_at < start:
            break
        batches.append(batch)
    batches = sweep_candidates(batches)
    owners = [o for o in _owners(batches) if systems is None or o.system in set(systems)]
    report = SweepReport(_judge_all(batches, oracle(owners) if owners else {}, min_age))
    if cancel:
        for i, j in enumerate(report.judgements):
            if j.verdict == "orphan":
                try:
                    client.batches.cancel(j.batch.id)
                    report.judgements[i] = dataclasses.replace(j, cancelled=True)
                except BatchOpsError as exc:
                    report.judgements[i] = dataclasses.replace(j, reason=f"{j.reason}; cancel failed: {exc}")
    return report


async def asweep(
    client: AsyncBatchClient,
    oracle: AsyncOracle,
    *,
    cancel: bool = False,
    since: float | None = None,
    min_age: float = DEFAULT_MIN_AGE,
    systems: Iterable[str] | None = None,
) -> SweepReport:
    """Async version of :func:`sweep`."""
    start = since if since is not None else time.time() - DEFAULT_LOOKBACK
    batches = []
    async for batch in client.batches.iter_all(limit=100):
        if batch.created_at < start:
            break
        batches.append(batch)
    batches = sweep_candidates(batches)
    owners = [o for o in _owners(batches) if systems is None or o.system in set(systems)]
    report = SweepReport(_judge_all(batches, await oracle(owners) if owners else {}, min_age))
    if cancel:
        for i, j in enumerate(report.judgements):
            if j.verdict == "orphan":
                try:
                    await client.batches.cancel(j.batch.id)
                    report.judgements[i] = dataclasses.replace(j, cancelled=True)
                except BatchOpsError as exc:
                    report.judgements[i] = dataclasses.replace(j, reason=f"{j.reason}; cancel failed: {exc}")
    return report

"""Orphaned batches: batches still running whose owning run has ended without them.

A run that dies hard (a lost pod, ``kill -9`` of a worker and its flow-run process, a task
marked failed while the triggerer was down) leaves its batches running, with nobody to collect
or cancel them; they still cost money. Every batch batch_ops creates from an orchestrator names
its owner in metadata:

* Airflow: ``airflow_task_instance`` = ``{"dag_id", "run_id", "task_id", "map_index",
  "deployment", "ti", "deployment_name"}`` (JSON): the task instance, the identity of the Airflow
  deployment that ran it (see :mod:`batch_ops.airflow.deployment`), the try's task-instance id
  and the deployment's name, if it has one;
* Prefect: ``prefect_flow_run_id`` = the flow run that created it.

A sweep lists the account's recent batches, asks the orchestrator for each owner's state (an
*oracle*: :mod:`batch_ops.prefect.orphans`, :mod:`batch_ops.airflow.orphans`, or the CLI's
``batch-ops orphans``), and judges each unfinished batch with :func:`judge`, a pure function.

**A sweep cancels only what it can prove is its own.** Deployments share API projects
(production and staging with one key, one DAG, equal scheduled run ids): a run id names a run
in *some* Airflow, not in this one. A Prefect flow-run id is a UUID its server made, so the
oracle knowing it proves the batch ours. An Airflow owner is proven when the deployment it
names is the sweeper's own. An owner naming another deployment is ``foreign`` and is not even
asked about; one naming none (made by an earlier batch_ops) is ``unproven``: reported, and
cancelled only with ``sweep_unproven=True`` (an account used by one deployment only).

============================  ==========================================================
the owner is …                the batch is …
============================  ==========================================================
another deployment's          ``foreign``: reported, never cancelled
running, queued, retrying     ``kept``: its run will collect it (a retry re-attaches)
ended, and proven ours        ``orphan``: cancelled when the sweep cancels
ended, not proven ours        ``unproven``: reported; cancelled only with ``sweep_unproven``
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
    >>> owner_of(b).label
    'prefect:run-1'
    >>> judge(b, OwnerState.ENDED, now=2000, min_age=60).verdict
    'orphan'
    >>> judge(b, OwnerState.ACTIVE, now=2000, min_age=60).verdict  # its run will collect it
    'kept'
    >>> judge(b, OwnerState.ENDED, now=1010, min_age=60).verdict  # too young to judge
    'kept'
    >>> a = Batch(id="b2", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=1000,
    ...           metadata=airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="prod-1"))
    >>> [judge(a, OwnerState.ENDED, now=2000, min_age=60, deployment=d).verdict for d in ("prod-1", "staging-7")]
    ['orphan', 'foreign']
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
    "DEPLOYMENT_MAX",
    "OWNER_METADATA_KEYS",
    "PREFECT_OWNER_KEY",
    "Judgement",
    "Owner",
    "OwnerState",
    "SweepReport",
    "VERDICTS",
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
#: The longest deployment identity or name kept in an owner record (the ids must fit beside them).
DEPLOYMENT_MAX = 64

Verdict = Literal["kept", "orphan", "unproven", "foreign", "unknown", "unowned"]
#: Every verdict, in the order reports count them.
VERDICTS: tuple[Verdict, ...] = ("kept", "orphan", "unproven", "foreign", "unknown", "unowned")


class OwnerState(str, Enum):
    """What the orchestrator says of a batch's owner."""

    ACTIVE = "active"
    ENDED = "ended"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Owner:
    """The run that created a batch: ``system`` (``airflow``/``prefect``), an ``id`` and its fields.

    ``deployment`` is the identity of the orchestrator deployment that recorded it (Airflow; None
    in records an earlier batch_ops made), ``deployment_name`` its readable name, if it had one.
    ``id_is_unique`` says the id is unique to one orchestrator's database (a Prefect flow-run
    UUID): the orchestrator knowing it proves the batch belongs to whoever asked.
    """

    system: str
    id: str
    fields: tuple[tuple[str, Any], ...] = ()
    deployment: str | None = None
    deployment_name: str | None = None
    id_is_unique: bool = False

    def get(self, name: str) -> Any:
        return dict(self.fields).get(name)

    @property
    def label(self) -> str:
        """``system:id``, and the deployment (its name, else its identity) where the record names one."""
        where = self.deployment_name or self.deployment
        return f"{self.system}:{self.id}" + (f" @{where}" if where else "")

    def proven_for(self, deployment: str | None) -> bool:
        """True when this owner is provably the sweeper's (whose own identity is ``deployment``),
        once its orchestrator has answered for it."""
        return self.id_is_unique or (self.deployment is not None and self.deployment == deployment)

    def foreign_to(self, deployment: str | None) -> bool:
        """True when this owner names a deployment, and it is not ``deployment``."""
        return self.deployment is not None and deployment is not None and self.deployment != deployment


def _short(value: str | None) -> str | None:
    value = (value or "").strip()
    return value[:DEPLOYMENT_MAX] or None


def airflow_owner_metadata(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    deployment: str | None = None,
    ti_id: str | None = None,
    deployment_name: str | None = None,
) -> dict[str, str]:
    """The metadata pair naming an Airflow task instance, and the deployment that ran it, as a batch's owner.

    ``deployment`` is what lets that deployment's sweep prove the batch its own (see the module
    doc); ``ti_id`` (the try's task-instance UUID) and ``deployment_name`` are for people reading
    a batch's metadata. When the ids are too long for the API's 512 characters, the name goes
    first, then the try's id; a record that still does not fit is cut, and a sweep then reports
    its batch as unknown (never cancelled).

    Examples:
        >>> airflow_owner_metadata(dag_id="d", run_id="manual__1", task_id="t")
        {'airflow_task_instance': '{"dag_id":"d","run_id":"manual__1","task_id":"t","map_index":-1}'}
        >>> json.loads(airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="3f9c",
        ...                                   deployment_name="prod")["airflow_task_instance"])
        {'dag_id': 'd', 'run_id': 'r', 'task_id': 't', 'map_index': -1, 'deployment': '3f9c', 'deployment_name': 'prod'}

    """
    doc: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id,
                           "map_index": int(map_index)}
    extras = {"deployment": _short(deployment), "ti": _short(ti_id), "deployment_name": _short(deployment_name)}
    doc.update({k: v for k, v in extras.items() if v is not None})
    value = json.dumps(doc, separators=(",", ":"))
    for optional in ("deployment_name", "ti"):  # for people: they give way to the ids and the deployment
        if len(value) <= _VALUE_MAX:
            break
        doc.pop(optional, None)
        value = json.dumps(doc, separators=(",", ":"))
    if len(value) > _VALUE_MAX:  # ids of 250 characters each: keep what fits, the sweep then says "unknown"
        value = value[:_VALUE_MAX]
    return {AIRFLOW_OWNER_KEY: value}


def owner_of(batch: Batch) -> Owner | None:
    """The owner named in ``batch``'s metadata, or None."""
    meta = batch.metadata or {}
    if meta.get(PREFECT_OWNER_KEY):
        run = str(meta[PREFECT_OWNER_KEY])
        return Owner("prefect", run, (("flow_run_id", run),), id_is_unique=True)
    raw = meta.get(AIRFLOW_OWNER_KEY)
    if raw:
        try:
            doc = json.loads(raw)
            ident = f"{doc['dag_id']}/{doc['run_id']}/{doc['task_id']}/{int(doc.get('map_index', -1))}"
        except (ValueError, KeyError, TypeError):
            return Owner("airflow", str(raw), ())  # cut short or edited: the oracle will not know it
        fields = tuple((k, doc[k]) for k in ("dag_id", "run_id", "task_id", "map_index", "ti") if k in doc)
        deployment, name = doc.get("deployment"), doc.get("deployment_name")
        return Owner("airflow", ident, fields, deployment=str(deployment) if deployment else None,
                     deployment_name=str(name) if name else None)
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
                "owner": self.owner.label if self.owner else None,
                "owner_state": self.state.value if self.state else None, "verdict": self.verdict,
                "reason": self.reason, "cancelled": self.cancelled}


def judge(
    batch: Batch,
    state: OwnerState | None,
    *,
    now: float,
    min_age: float,
    deployment: str | None = None,
    sweep_unproven: bool = False,
) -> Judgement:
    """The verdict on one unfinished batch, given its owner's state (see the module table).

    ``deployment`` is the sweeper's own deployment identity (None: it has none, so no Airflow
    owner can be proven its own); ``sweep_unproven`` makes an ended owner naming no deployment
    an orphan (an account used by a single deployment, with batches an earlier batch_ops made).
    """
    owner = owner_of(batch)
    if owner is None:
        return Judgement(batch, None, None, "unowned", "no owner in metadata: made outside an orchestrator")
    if owner.foreign_to(deployment):
        return Judgement(batch, owner, None, "foreign",
                         f"made by another deployment ({owner.deployment_name or owner.deployment}): never cancelled "
                         "here")
    if state is None or state is OwnerState.UNKNOWN:
        return Judgement(batch, owner, OwnerState.UNKNOWN, "unknown", "the orchestrator does not know this run")
    if state is OwnerState.ACTIVE:
        return Judgement(batch, owner, state, "kept", "its run is still going: it will collect the batch")
    if now - batch.created_at < min_age:
        return Judgement(batch, owner, state, "kept", f"created less than {min_age:.0f} s ago")
    if owner.proven_for(deployment):
        return Judgement(batch, owner, state, "orphan", "its run ended without it")
    why = ("its owner names no deployment (an earlier batch_ops made it): another deployment's run may have this id"
           if owner.deployment is None else "this sweep does not know its own deployment")
    if sweep_unproven:
        return Judgement(batch, owner, state, "orphan", f"its run ended without it; {why}, swept as asked")
    return Judgement(batch, owner, state, "unproven", f"its run ended, but {why}: never cancelled unless asked "
                     "(sweep_unproven)")


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
        out: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        for j in self.judgements:
            out[j.verdict] += 1
        return {**out, "cancelled": len(self.cancelled)}

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts()), "batches": [j.as_dict() for j in self.judgements]}


def _judge_all(batches: list[Batch], states: Mapping[str, OwnerState], *, min_age: float,
               deployment: str | None, sweep_unproven: bool) -> list[Judgement]:
    now = time.time()
    out = []
    for batch in batches:
        owner = owner_of(batch)
        state = states.get(owner.id) if owner else None
        out.append(judge(batch, state, now=now, min_age=min_age, deployment=deployment, sweep_unproven=sweep_unproven))
    return out


def _owners(batches: Iterable[Batch], systems: Iterable[str] | None, deployment: str | None) -> list[Owner]:
    """The owners to ask the orchestrator about: of the asked systems, and not another deployment's."""
    wanted = None if systems is None else set(systems)
    owners = (o for b in batches if (o := owner_of(b)) is not None)
    return list({o.id: o for o in owners if (wanted is None or o.system in wanted) and not o.foreign_to(deployment)}
                .values())


def _since(since: float | None) -> float:
    return since if since is not None else time.time() - DEFAULT_LOOKBACK


def sweep(
    client: BatchClient,
    oracle: Oracle,
    *,
    cancel: bool = False,
    since: float | None = None,
    min_age: float = DEFAULT_MIN_AGE,
    systems: Iterable[str] | None = None,
    deployment: str | None = None,
    sweep_unproven: bool = False,
) -> SweepReport:
    """List the unfinished batches created since ``since``, judge each, and cancel the orphans when ``cancel``.

    ``oracle`` answers for the owners of ``systems`` (e.g. ``["prefect"]``); owners of other
    systems are reported as unknown. ``deployment`` is the sweeper's own deployment identity:
    owners naming another are foreign and the oracle is not asked about them. A cancel that fails
    (the batch finished meanwhile) is reported in the judgement's reason, and the sweep goes on.
    """
    start = _since(since)
    batches = []
    for batch in client.batches.iter_all(limit=100):
        if batch.created_at < start:
            break
        batches.append(batch)
    batches = sweep_candidates(batches)
    owners = _owners(batches, systems, deployment)
    report = SweepReport(_judge_all(batches, oracle(owners) if owners else {}, min_age=min_age,
                                    deployment=deployment, sweep_unproven=sweep_unproven))
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
    deployment: str | None = None,
    sweep_unproven: bool = False,
) -> SweepReport:
    """Async version of :func:`sweep`."""
    start = _since(since)
    batches = []
    async for batch in client.batches.iter_all(limit=100):
        if batch.created_at < start:
            break
        batches.append(batch)
    batches = sweep_candidates(batches)
    owners = _owners(batches, systems, deployment)
    report = SweepReport(_judge_all(batches, await oracle(owners) if owners else {}, min_age=min_age,
                                    deployment=deployment, sweep_unproven=sweep_unproven))
    if cancel:
        for i, j in enumerate(report.judgements):
            if j.verdict == "orphan":
                try:
                    await client.batches.cancel(j.batch.id)
                    report.judgements[i] = dataclasses.replace(j, cancelled=True)
                except BatchOpsError as exc:
                    report.judgements[i] = dataclasses.replace(j, reason=f"{j.reason}; cancel failed: {exc}")
    return report

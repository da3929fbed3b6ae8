"""Orphaned batches: batches still running whose owning run has ended without them.

A run that dies hard (a lost pod, ``kill -9`` of a worker and its flow-run process, a task
marked failed while the triggerer was down) leaves its batches running, with nobody to collect
or cancel them; they still cost money. Every batch batch_ops creates from an orchestrator names
its owner in metadata (the owner records: :mod:`batch_ops.identity.owners`; the names that
lived here before are still importable from here, with a ``DeprecationWarning``). This module
is the sweep over them, and the scan a cancelled run uses to find its own batches
(:func:`unfinished_batches_of`).

A sweep lists the account's recent batches, asks the orchestrator for each owner's state (an
*oracle*: :mod:`batch_ops.prefect.orphans`, :mod:`batch_ops.airflow.orphans`, or the CLI's
``batch-ops orphans``), and judges each unfinished batch with :func:`judge`, a pure function.

**A sweep cancels only what it can prove is its own.** Deployments share API projects
(production and staging with one key, one DAG, equal scheduled run ids): a run id names a run
in *some* Airflow, not in this one. A Prefect flow-run id is a UUID its server made, so the
oracle knowing it proves the batch ours. An Airflow owner is proven when the deployment it
names is the sweeper's own, or an earlier identity of it that the orchestrator proves (``proves``:
first tasks that made the identity at the same moment, one of them replaced). An owner naming
another deployment is ``foreign`` and is not even asked about; one naming none (made by an
earlier batch_ops) is ``unproven``: reported, and cancelled only with ``sweep_unproven=True`` (an
account used by one deployment only).

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
(nor in the key ledger)       adapters: by hand, by another tool; or on an API without
                              metadata and without a ledger: :func:`with_ledger_owners`)
============================  ==========================================================

Batches younger than ``min_age`` are kept whatever their owner says: a run's state reaches the
orchestrator's database a moment after the run acted.

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
    ...           created_at=1000, metadata={"prefect_flow_run_id": "run-1"})
    >>> judge(b, OwnerState.ENDED, now=2000, min_age=60).verdict
    'orphan'
    >>> judge(b, OwnerState.ACTIVE, now=2000, min_age=60).verdict  # its run will collect it
    'kept'
    >>> judge(b, OwnerState.ENDED, now=1010, min_age=60).verdict  # too young to judge
    'kept'
    >>> from batch_ops.identity import airflow_owner_metadata
    >>> a = Batch(id="b2", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=1000,
    ...           metadata=airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="prod-1"))
    >>> [judge(a, OwnerState.ENDED, now=2000, min_age=60, deployment=d).verdict for d in ("prod-1", "staging-7")]
    ['orphan', 'foreign']
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from batch_ops._deprecated import moved
from batch_ops.errors import BatchOpsError
from batch_ops.identity import owners as _owners_module
from batch_ops.identity.owners import unfinished_owned_by
from batch_ops.models import Batch, BatchStatus

if TYPE_CHECKING:
    from batch_ops.client import AsyncBatchClient, BatchClient
    from batch_ops.identity.ledger import KeyLedger

__all__ = [
    "DEFAULT_LOOKBACK",
    "DEFAULT_MIN_AGE",
    "Judgement",
    "OwnerState",
    "SweepReport",
    "VERDICTS",
    "arecent_batches",
    "asweep",
    "aunfinished_batches_of",
    "judge",
    "proven_identities",
    "recent_batches",
    "sweep",
    "sweep_candidates",
    "unfinished_batches_of",
    "with_ledger_owners",
]

#: How far back a sweep looks by default (seconds): the API's longest completion window, and then some.
DEFAULT_LOOKBACK = 3 * 24 * 3600.0
#: Batches younger than this are kept by default (seconds).
DEFAULT_MIN_AGE = 600.0

#: An oracle: the states of the given owners, by ``Owner.id`` (a missing id counts as unknown).
Oracle = Callable[[list[_owners_module.Owner]], Mapping[str, "OwnerState"]]
AsyncOracle = Callable[[list[_owners_module.Owner]], Awaitable[Mapping[str, "OwnerState"]]]

Verdict = Literal["kept", "orphan", "unproven", "foreign", "unknown", "unowned"]
#: Every verdict, in the order reports count them.
VERDICTS: tuple[Verdict, ...] = ("kept", "orphan", "unproven", "foreign", "unknown", "unowned")


class OwnerState(str, Enum):
    """What the orchestrator says of a batch's owner."""

    ACTIVE = "active"
    ENDED = "ended"
    UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------
# the account's recent batches, and a run's own
# ---------------------------------------------------------------------------------------------


def recent_batches(client: BatchClient, *, since: float) -> Iterator[Batch]:
    """The account's batches created since ``since`` (epoch seconds), newest first."""
    for batch in client.batches.iter_all(limit=100):
        if batch.created_at < since:  # the list is newest first: the rest is older still
            return
        yield batch


async def arecent_batches(client: AsyncBatchClient, *, since: float) -> AsyncIterator[Batch]:
    """Async version of :func:`recent_batches`."""
    async for batch in client.batches.iter_all(limit=100):
        if batch.created_at < since:
            return
        yield batch


def unfinished_batches_of(client: BatchClient, owner_key: str, owner: str, *, since: float | None) -> list[Batch]:
    """The batches created since ``since`` whose owner record names ``owner`` (under ``owner_key``,
    e.g. ``PREFECT_OWNER_KEY`` and a flow-run id) and that are still running: what a cancelled run cancels.
    ``since`` is when the run began, less ``batch_ops.identity.LOOKBACK_SKEW`` (``lookback_start``);
    None (the start is unknown): the client's ``idempotency_lookback``."""
    start = _lookback(client, since)
    return unfinished_owned_by(recent_batches(client, since=start), owner_key, owner)


async def aunfinished_batches_of(client: AsyncBatchClient, owner_key: str, owner: str, *,
                                 since: float | None) -> list[Batch]:
    """Async version of :func:`unfinished_batches_of`."""
    start = _lookback(client, since)
    return unfinished_owned_by([b async for b in arecent_batches(client, since=start)], owner_key, owner)


def _lookback(client: BatchClient | AsyncBatchClient, since: float | None) -> float:
    return since if since is not None else time.time() - client.settings.idempotency_lookback


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """One unfinished batch, its owner, what the orchestrator said, and the verdict."""

    batch: Batch
    owner: _owners_module.Owner | None
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
    proven: Collection[str] = (),
) -> Judgement:
    """The verdict on one unfinished batch, given its owner's state (see the module table).

    ``deployment`` is the sweeper's own deployment identity (None: it has none, so no Airflow
    owner can be proven its own); ``sweep_unproven`` makes an ended owner naming no deployment
    an orphan (an account used by a single deployment, with batches an earlier batch_ops made).
    ``proven``: the deployment's earlier identities, each proven its own by the orchestrator (an
    identity first tasks made at the same moment and one of them replaced): an owner naming one is
    this deployment's, as one naming ``deployment`` is.

    Examples:
        >>> from batch_ops.identity import airflow_owner_metadata
        >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0,
        ...           metadata=airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="replaced"))
        >>> [judge(b, OwnerState.ENDED, now=999, min_age=60, deployment="now", proven=p).verdict
        ...  for p in ((), {"replaced"})]
        ['foreign', 'orphan']
    """
    owner = _owners_module.owner_of(batch)
    if owner is None:
        return Judgement(batch, None, None, "unowned", "no owner in metadata: made outside an orchestrator")
    deployment = _mine(owner, deployment, proven)
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


def _mine(owner: _owners_module.Owner, deployment: str | None, proven: Collection[str]) -> str | None:
    """The sweeper's identity as ``owner`` should be judged against: the one it names when that is proven ours."""
    return owner.deployment if owner.deployment is not None and owner.deployment in proven else deployment


#: Other identities a sweep asks the orchestrator about, at most (each is one question: a Variable read).
PROVEN_ASKED_MAX = 16


def proven_identities(batches: Iterable[Batch], deployment: str | None,
                      proves: Callable[[str], bool] | None) -> frozenset[str]:
    """The identities other than ``deployment`` that ``batches``' owners name and the orchestrator proves
    this deployment's own (``proves``: Airflow's ``proves_identity``), newest batch first, at most
    :data:`PROVEN_ASKED_MAX` asked. None of them without ``proves`` or without a ``deployment``
    (a sweep that does not know its own identity proves nothing)."""
    if proves is None or deployment is None:
        return frozenset()
    asked: list[str] = []
    for batch in sorted(batches, key=lambda b: (b.created_at, b.id), reverse=True):
        owner = _owners_module.owner_of(batch)
        other = owner.deployment if owner is not None else None
        if other is not None and other != deployment and other not in asked:
            asked.append(other)
    return frozenset(i for i in asked[:PROVEN_ASKED_MAX] if proves(i))


def sweep_candidates(batches: Iterable[Batch]) -> list[Batch]:
    """The batches a sweep looks at: not finished, not already being cancelled."""
    return [b for b in batches if not b.status.is_terminal and b.status is not BatchStatus.CANCELLING]


def with_ledger_owners(batches: Iterable[Batch], ledger: KeyLedger | None) -> list[Batch]:
    """``batches``, each one whose metadata names no owner given the owner record the key ledger keeps for it.

    A batch of an API that keeps no metadata (Anthropic, Gemini, Together) cannot carry its owner; a
    submit with a key ledger records it there (:meth:`~batch_ops.identity.ledger.KeyLedger.own`). One
    small read per unfinished batch without an owner; without a ledger, ``batches`` as they are.
    """
    out = []
    for batch in batches:
        owner = ledger.owner(batch.id) if ledger is not None and _owners_module.owner_of(batch) is None else None
        out.append(batch.model_copy(update={"metadata": {**(batch.metadata or {}), **owner}}) if owner else batch)
    return out


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
               deployment: str | None, sweep_unproven: bool, proven: Collection[str]) -> list[Judgement]:
    now = time.time()
    out = []
    for batch in batches:
        owner = _owners_module.owner_of(batch)
        state = states.get(owner.id) if owner else None
        out.append(judge(batch, state, now=now, min_age=min_age, deployment=deployment, sweep_unproven=sweep_unproven,
                         proven=proven))
    return out


def _owners(
    batches: Iterable[Batch], systems: Iterable[str] | None, deployment: str | None, proven: Collection[str]
) -> list[_owners_module.Owner]:
    """The owners to ask the orchestrator about: of the asked systems, and not another deployment's."""
    wanted = None if systems is None else set(systems)
    owners = (o for b in batches if (o := _owners_module.owner_of(b)) is not None)
    return list({o.id: o for o in owners if (wanted is None or o.system in wanted)
                 and not o.foreign_to(_mine(o, deployment, proven))}.values())


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
    proves: Callable[[str], bool] | None = None,
) -> SweepReport:
    """List the unfinished batches created since ``since``, judge each, and cancel the orphans when ``cancel``.

    ``oracle`` answers for the owners of ``systems`` (e.g. ``["prefect"]``); owners of other
    systems are reported as unknown. ``deployment`` is the sweeper's own deployment identity:
    owners naming another are foreign and the oracle is not asked about them — unless ``proves``
    (the orchestrator's word: Airflow's ``proves_identity``) says that identity is an earlier one of
    this deployment (:func:`proven_identities`). A cancel that fails (the batch finished meanwhile)
    is reported in the judgement's reason, and the sweep goes on.
    """
    batches = with_ledger_owners(sweep_candidates(recent_batches(client, since=_since(since))), client.key_ledger)
    proven = proven_identities(batches, deployment, proves)
    owners = _owners(batches, systems, deployment, proven)
    report = SweepReport(_judge_all(batches, oracle(owners) if owners else {}, min_age=min_age,
                                    deployment=deployment, sweep_unproven=sweep_unproven, proven=proven))
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
    proves: Callable[[str], bool] | None = None,
) -> SweepReport:
    """Async version of :func:`sweep` (``proves`` is blocking orchestrator I/O: it runs in a thread)."""
    batches = sweep_candidates([b async for b in arecent_batches(client, since=_since(since))])
    if client.key_ledger is not None:
        batches = await asyncio.to_thread(with_ledger_owners, batches, client.key_ledger)
    proven = await asyncio.to_thread(proven_identities, batches, deployment, proves) if proves else frozenset()
    owners = _owners(batches, systems, deployment, proven)
    report = SweepReport(_judge_all(batches, await oracle(owners) if owners else {}, min_age=min_age,
                                    deployment=deployment, sweep_unproven=sweep_unproven, proven=proven))
    if cancel:
        for i, j in enumerate(report.judgements):
            if j.verdict == "orphan":
                try:
                    await client.batches.cancel(j.batch.id)
                    report.judgements[i] = dataclasses.replace(j, cancelled=True)
                except BatchOpsError as exc:
                    report.judgements[i] = dataclasses.replace(j, reason=f"{j.reason}; cancel failed: {exc}")
    return report


__getattr__ = moved(__name__, dict.fromkeys(
    ("AIRFLOW_OWNER_KEY", "DEPLOYMENT_MAX", "OWNER_METADATA_KEYS", "PREFECT_OWNER_KEY", "Owner",
     "airflow_owner_metadata", "owner_of"), _owners_module))

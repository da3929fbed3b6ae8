"""Run identity: who pays for a batch, named so that any retry, on any machine, finds it again.

One value, :class:`RunIdentity`, built once from what an orchestrator knows about the running
work (its system, its ids, when it started, the deployment it runs in), gives everything a submit
needs to know about *who* is submitting:

* ``key`` — the idempotency key (:mod:`batch_ops.identity.keys`): the same for every retry of the
  work, different for every other piece of work;
* ``owner`` — the metadata pair naming the run (:mod:`batch_ops.identity.owners`), so a sweep
  finds batches whose run ended without them, and a cancelled run finds its own;
* ``since`` — where the key's lookup in the batch list may stop: a batch of a run cannot predate
  the run (less :data:`LOOKBACK_SKEW` for clocks that disagree);
* ``legacy`` — a key the same work had under an earlier batch_ops, whose batches it may still take
  over (see *Deployments* below).

The request fingerprint (:mod:`batch_ops.identity.fingerprint`) completes the identity of a
chain: same key and same requests re-attach, other requests start a chain of their own.

Deployments. Two Airflow deployments (production and staging) often share one API project and
run the same DAG with the same run ids. A key made of (dag, task, run, map index) alone named the
same work in both: staging's task re-attached to production's batch, read its results, and could
cancel it (``cancel_on_kill``, ``cancel_on_timeout``). So the Airflow key also holds the
deployment's identity (:mod:`batch_ops.airflow.deployment`). A task retried across the upgrade
must not pay twice, so when its key has no batch yet the lookup also tries the key it had before
(``legacy``), taking over only batches whose owner record does not name another deployment.
What remains: a batch made by a batch_ops older than the deployment identity (its owner names no
deployment) under the same old key can still be adopted by the other deployment's try of that
task instance — the behaviour of those versions, for batches made before the upgrade only.

A deployment's identity is made by its first tasks, often several at once, and Airflow offers no
compare-and-set: under load one try can use a value that a later write replaces, so its next try
derives another key (seen: 35 requests paid for 20). Every value ever made is recorded where only
its deployment can read it, so the lookup also takes over a chain this task instance made under an
identity its deployment *proves* its own (``proven``, :class:`ProvenIdentities`), and never one of
an identity it cannot prove.

Examples:
    >>> ident = RunIdentity.airflow(dag_id="d", task_id="t", run_id="manual__1", started=10_000.0,
    ...                             deployment="3f9c0d1e7a2b4c68")
    >>> ident.key == airflow_key(dag_id="d", task_id="t", run_id="manual__1", deployment="3f9c0d1e7a2b4c68")
    True
    >>> ident.key != ident.legacy.key == airflow_key(dag_id="d", task_id="t", run_id="manual__1")
    True
    >>> ident.since, sorted(ident.metadata({"run": "nightly"}))
    (9400.0, ['airflow_task_instance', 'run'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from batch_ops.identity.keys import (
    IDEMPOTENCY_METADATA_KEY,
    LOOKBACK_SKEW,
    derive_key,
)
from batch_ops.identity.owners import (
    AIRFLOW_OWNER_KEY,
    FLOW_RUN_METADATA_KEY,
    OWNER_METADATA_KEYS,
    PREFECT_OWNER_KEY,
    Owner,
    airflow_owner_metadata,
    owner_of,
    prefect_owner_metadata,
    unfinished_owned_by,
)
from batch_ops.models import Batch

__all__ = [
    "AIRFLOW_OWNER_KEY",
    "FLOW_RUN_METADATA_KEY",
    "IDEMPOTENCY_METADATA_KEY",
    "LOOKBACK_SKEW",
    "OWNER_METADATA_KEYS",
    "PREFECT_OWNER_KEY",
    "PROVEN_MAX",
    "LegacyKey",
    "Owner",
    "ProvenIdentities",
    "RunIdentity",
    "airflow_key",
    "airflow_owner_metadata",
    "derive_key",
    "lookback_start",
    "owner_of",
    "prefect_owner_metadata",
    "unfinished_owned_by",
]


def lookback_start(started: Any) -> float | None:
    """Where a lookup for a run's batches may stop: its start (epoch seconds or a datetime) less
    :data:`LOOKBACK_SKEW`; None when the start is unknown (the client's ``idempotency_lookback`` then).

    Examples:
        >>> lookback_start(10_000), lookback_start(None)
        (9400.0, None)
    """
    if started is None:
        return None
    seconds = started.timestamp() if hasattr(started, "timestamp") else float(started)
    return seconds - LOOKBACK_SKEW


def airflow_key(*, dag_id: str, task_id: str, run_id: str, map_index: int = -1, deployment: str | None = None) -> str:
    """The idempotency key of one Airflow task instance in one deployment: every try computes the same.

    ``deployment`` None gives the key batch_ops used before the deployment was part of it (and
    still uses when the deployment's identity cannot be read).

    Examples:
        >>> airflow_key(dag_id="d", task_id="t", run_id="manual__1")
        'af-e6866ef7529bcffa9b85341864c332201091dd1c'
        >>> airflow_key(dag_id="d", task_id="t", run_id="manual__1", deployment="prod") != airflow_key(
        ...     dag_id="d", task_id="t", run_id="manual__1", deployment="staging")
        True
    """
    parts: tuple[Any, ...] = (dag_id, task_id, run_id, int(map_index))
    return derive_key("af", *parts, *((deployment,) if deployment else ()))


@dataclass(frozen=True)
class LegacyKey:
    """A key the same work had under an earlier batch_ops; its batches may be taken over.

    ``deployment`` is the running work's deployment: a batch of the old key whose owner record
    names *another* deployment is never taken over (it is that deployment's work).

    Examples:
        >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="completed", created_at=0,
        ...           metadata=airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="prod"))
        >>> LegacyKey("k", "prod").adopts(b), LegacyKey("k", "staging").adopts(b)
        (True, False)
    """

    key: str
    deployment: str | None = None

    def adopts(self, batch: Batch) -> bool:
        owner = owner_of(batch)
        return owner is None or not owner.foreign_to(self.deployment)


#: Other deployment identities a lookup asks about at most (one orchestrator read each): a fresh
#: deployment's first tasks make a handful at once, never more than its first burst of tasks.
PROVEN_MAX = 8


@dataclass(frozen=True)
class ProvenIdentities:
    """The other identities of the running deployment, proven one by one, under which an earlier try of
    this task instance may have made its chain (see *Deployments* in the module docstring).

    ``proves(identity)`` asks the orchestrator whether its deployment made ``identity`` (I/O: the plans
    run it as :class:`~batch_ops.effects.Work`); it must be False for any other deployment's identity,
    and False when it cannot tell (a retry may then pay again; it never takes over another's batch).

    Examples:
        >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="completed", created_at=0,
        ...           metadata=airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="lost"))
        >>> p = ProvenIdentities(dag_id="d", task_id="t", run_id="r", deployment="kept", proves=lambda _: True)
        >>> p.candidates([b]), p.key_for("lost") == airflow_key(dag_id="d", task_id="t", run_id="r", deployment="lost")
        (['lost'], True)
    """

    dag_id: str
    task_id: str
    run_id: str
    deployment: str
    proves: Callable[[str], bool]
    map_index: int = -1

    def names_task(self, batch: Batch) -> bool:
        """True when ``batch``'s owner record names this task instance (in any deployment)."""
        owner = owner_of(batch)
        return (owner is not None and owner.system == "airflow"
                and owner.id == f"{self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}")

    def candidates(self, batches: Iterable[Batch]) -> list[str]:
        """The identities other than the running one that this task instance's ``batches`` name, newest
        batch first, at most :data:`PROVEN_MAX` (each costs one question to the orchestrator)."""
        found: list[str] = []
        for batch in sorted(batches, key=lambda b: (b.created_at, b.id), reverse=True):
            owner = owner_of(batch) if self.names_task(batch) else None
            identity = owner.deployment if owner is not None else None
            if identity and identity != self.deployment and identity not in found:
                found.append(identity)
        return found[:PROVEN_MAX]

    @property
    def task(self) -> str:
        """This task instance's key without any deployment: what a key ledger files its identities under."""
        return airflow_key(dag_id=self.dag_id, task_id=self.task_id, run_id=self.run_id, map_index=self.map_index)

    def key_for(self, identity: str) -> str:
        """The key this task instance has under ``identity``."""
        return airflow_key(dag_id=self.dag_id, task_id=self.task_id, run_id=self.run_id, map_index=self.map_index,
                           deployment=identity)


@dataclass(frozen=True)
class RunIdentity:
    """Who is submitting: the key, the owner record, how far back to look (see the module docstring).

    Build it with the constructor of your orchestrator (:meth:`airflow`, :meth:`prefect_task`,
    :meth:`prefect_flow`, :meth:`prefect_subflow`, :meth:`job_part`) and hand it to
    ``SubmitSpec.of(identity=...)``.

    Examples:
        >>> RunIdentity.prefect_task(flow_run_id="f1", task_key="t", dynamic_key="0").owner
        {'prefect_flow_run_id': 'f1'}
        >>> RunIdentity.job_part(job_id="job", part="00001", started=1000.0)
        RunIdentity(key='job-00001', owner={}, since=400.0, legacy=None, proven=None)
    """

    key: str | None = None
    owner: Mapping[str, str] = field(default_factory=dict)
    since: float | None = None
    legacy: LegacyKey | None = None
    proven: ProvenIdentities | None = None

    def metadata(self, user: Mapping[str, str] | None = None) -> dict[str, str]:
        """The user's metadata with the owner record added (the idempotency key is added at create)."""
        return {**(user or {}), **self.owner}

    @classmethod
    def airflow(
        cls,
        *,
        dag_id: str,
        task_id: str,
        run_id: str,
        map_index: int | None = -1,
        started: Any = None,
        deployment: str | None = None,
        deployment_name: str | None = None,
        ti_id: str | None = None,
        reattach: bool = True,
        proves: Callable[[str], bool] | None = None,
    ) -> RunIdentity:
        """One Airflow task instance of one deployment (``started``: when its DAG run began).

        ``reattach=False``: every try is new work (a random key), still owned by the task instance.
        ``proves``: whether an identity is one this deployment made (see :class:`ProvenIdentities`).
        """
        index = -1 if map_index is None else int(map_index)
        owner = airflow_owner_metadata(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=index,
                                       deployment=deployment, ti_id=ti_id, deployment_name=deployment_name)
        if not reattach:
            return cls(None, owner)
        key = airflow_key(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=index, deployment=deployment)
        legacy = proven = None
        if deployment:
            legacy = LegacyKey(airflow_key(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=index),
                               deployment)
            if proves is not None:
                proven = ProvenIdentities(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=index,
                                          deployment=deployment, proves=proves)
        return cls(key, owner, lookback_start(started), legacy, proven)

    @classmethod
    def prefect_task(cls, *, flow_run_id: Any, task_key: str, dynamic_key: Any, started: Any = None) -> RunIdentity:
        """A Prefect task run: its flow run and its place in it (task key and dynamic key, numbered
        in call order, again from 0 when the flow run is retried); ``started``: when the flow run began."""
        return cls(derive_key("prefect", flow_run_id, task_key, dynamic_key), prefect_owner_metadata(flow_run_id),
                   lookback_start(started))

    @classmethod
    def prefect_flow(cls, *, flow_run_id: Any, started: Any = None) -> RunIdentity:
        """A ``run_batch`` flow run on its own (a deployment of it, retried as the same run)."""
        return cls(f"prefect-{flow_run_id}-run-batch", prefect_owner_metadata(flow_run_id), lookback_start(started))

    @classmethod
    def prefect_subflow(cls, *, parent_flow_run_id: Any, work: Mapping[str, Any], started: Any = None,
                        flow_run_id: Any = None) -> RunIdentity:
        """A ``run_batch`` subflow: Prefect makes *new* subflow runs when the parent is retried, so the
        key is the parent's run and the work itself; ``started``: when the parent began."""
        return cls(derive_key("prefect-sub", parent_flow_run_id, dict(work)), prefect_owner_metadata(flow_run_id),
                   lookback_start(started))

    @classmethod
    def job_part(cls, *, job_id: str, part: str, started: float) -> RunIdentity:
        """One part of a :class:`~batch_ops.jobs.BatchJob` (``started``: when the job was made)."""
        return cls(f"{job_id}-{part}", {}, lookback_start(started))

"""Owner records: the run that created a batch, written in its metadata.

Every batch batch_ops creates from an orchestrator names its owner, so that a sweep
(:mod:`batch_ops.orphans`) can find batches whose run ended without them, and a cancelled run can
find its own:

* Airflow: ``airflow_task_instance`` = ``{"dag_id", "run_id", "task_id", "map_index",
  "deployment", "ti", "deployment_name"}`` (JSON): the task instance, the identity of the Airflow
  deployment that ran it (see :mod:`batch_ops.airflow.deployment`), the try's task-instance id
  and the deployment's name, if it has one;
* Prefect: ``prefect_flow_run_id`` = the flow run that created it.

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="in_progress",
    ...           created_at=1000, metadata=prefect_owner_metadata("run-1"))
    >>> owner_of(b).label, [x.id for x in unfinished_owned_by([b], PREFECT_OWNER_KEY, "run-1")]
    ('prefect:run-1', ['b1'])
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from batch_ops.models import METADATA_VALUE_MAX, Batch, BatchStatus

__all__ = [
    "AIRFLOW_OWNER_KEY",
    "DEPLOYMENT_MAX",
    "FLOW_RUN_METADATA_KEY",
    "OWNER_METADATA_KEYS",
    "PREFECT_OWNER_KEY",
    "Owner",
    "airflow_owner_metadata",
    "owner_of",
    "prefect_owner_metadata",
    "unfinished_owned_by",
]

AIRFLOW_OWNER_KEY = "airflow_task_instance"
PREFECT_OWNER_KEY = "prefect_flow_run_id"
#: The Prefect owner key under the name the Prefect tasks gave it.
FLOW_RUN_METADATA_KEY = PREFECT_OWNER_KEY
#: The metadata pairs batch_ops' adapters add to name a batch's owner.
OWNER_METADATA_KEYS = (AIRFLOW_OWNER_KEY, PREFECT_OWNER_KEY)
#: The longest deployment identity or name kept in an owner record (the ids must fit beside them).
DEPLOYMENT_MAX = 64


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


def short_deployment(value: str | None) -> str | None:
    """A deployment identity or name as an owner record keeps it: stripped, at most :data:`DEPLOYMENT_MAX` characters.

    Examples:
        >>> short_deployment("  prod "), short_deployment(""), len(short_deployment("x" * 100) or "")
        ('prod', None, 64)
    """
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

    ``deployment`` is what lets that deployment's sweep prove the batch its own (see
    :mod:`batch_ops.orphans`); ``ti_id`` (the try's task-instance UUID) and ``deployment_name`` are
    for people reading a batch's metadata. When the ids are too long for the API's 512 characters,
    the name goes first, then the try's id; a record that still does not fit is cut, and a sweep
    then reports its batch as unknown (never cancelled).

    Examples:
        >>> airflow_owner_metadata(dag_id="d", run_id="manual__1", task_id="t")
        {'airflow_task_instance': '{"dag_id":"d","run_id":"manual__1","task_id":"t","map_index":-1}'}
        >>> json.loads(airflow_owner_metadata(dag_id="d", run_id="r", task_id="t", deployment="3f9c",
        ...                                   deployment_name="prod")["airflow_task_instance"])
        {'dag_id': 'd', 'run_id': 'r', 'task_id': 't', 'map_index': -1, 'deployment': '3f9c', 'deployment_name': 'prod'}

    """
    doc: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id,
                           "map_index": int(map_index)}
    extras = {"deployment": short_deployment(deployment), "ti": short_deployment(ti_id),
              "deployment_name": short_deployment(deployment_name)}
    doc.update({k: v for k, v in extras.items() if v is not None})
    value = json.dumps(doc, separators=(",", ":"))
    for optional in ("deployment_name", "ti"):  # for people: they give way to the ids and the deployment
        if len(value) <= METADATA_VALUE_MAX:
            break
        doc.pop(optional, None)
        value = json.dumps(doc, separators=(",", ":"))
    if len(value) > METADATA_VALUE_MAX:  # ids of 250 characters each: keep what fits, the sweep then says "unknown"
        value = value[:METADATA_VALUE_MAX]
    return {AIRFLOW_OWNER_KEY: value}


def prefect_owner_metadata(flow_run_id: str | None) -> dict[str, str]:
    """The metadata pair naming a Prefect flow run as a batch's owner (none outside a run).

    Examples:
        >>> prefect_owner_metadata("run-1"), prefect_owner_metadata(None)
        ({'prefect_flow_run_id': 'run-1'}, {})
    """
    return {PREFECT_OWNER_KEY: str(flow_run_id)} if flow_run_id else {}


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


def unfinished_owned_by(batches: Iterable[Batch], owner_key: str, owner: str) -> list[Batch]:
    """The batches whose metadata names ``owner`` under ``owner_key`` that are still running and not
    yet being cancelled: what a cancelled run cancels.

    Examples:
        >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="cancelling", created_at=0,
        ...           metadata={"prefect_flow_run_id": "run-1"})
        >>> unfinished_owned_by([b], PREFECT_OWNER_KEY, "run-1")
        []
    """
    return [
        b for b in batches
        if (b.metadata or {}).get(owner_key) == owner
        and not b.status.is_terminal and b.status is not BatchStatus.CANCELLING
    ]

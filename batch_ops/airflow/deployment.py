"""This Airflow deployment's identity, recorded in every batch it creates so its orphan sweep can prove them its own.

Two deployments often share one OpenAI project: production and staging, one key, one DAG file,
and a run of the same day with the same run id in both. A batch's owner ``dag/run/task`` then
names a run in *both* metadata databases, and a sweep that trusted it cancelled the other
deployment's running batches. So the owner record also names the deployment, and a sweep
cancels only batches that name its own (:mod:`batch_ops.orphans`).

The identity must need no configuration (the user with two deployments who never read this
must be safe), stay the same for every worker, try and clear of a deployment, and differ between
deployments. Airflow offers none: task-instance ids (UUID7) are unique but new for every try, and
a task cannot look up other task instances' ids (its Execution API token is scoped to itself,
and the ORM is blocked in task processes), so a sweep could never find a past try's id. So the
identity is stored where every task of the deployment can read it: the Airflow Variable
``batch_ops_deployment_id``, 16 random hex digits made on first use. It lives in the
deployment's metadata database, like the runs it names.

* Pin or move it like any Variable: ``AIRFLOW_VAR_BATCH_OPS_DEPLOYMENT_ID`` in the environment,
  a secrets backend, or copy the value when moving to a new metadata database (so the sweep
  still recognises the batches made before).
* Never copy it into *another* deployment (a staging database restored from production's
  backup: delete the Variable there): the two would then prove each other's batches.
* Made at the same moment by several first tasks (a fresh deployment starting many DAGs), the
  identity can differ between them: Airflow offers no compare-and-set on Variables, so a task
  that reads while the others' writes are still landing, or one slow between its own read and
  write, uses a value that is then replaced, and its next try derives another key (seen under
  load: a retry paid attempt 0 again). Whatever the timing, each value made is first
  recorded in a Variable of its own, ``batch_ops_deployment_id.<value>``, before it is written
  as the identity: a retry that finds its task instance's batches under such an earlier identity
  of its own deployment takes that chain over (:func:`proves_identity`), and never one of an
  identity its deployment did not make. Keep these Variables (and move them with the identity).
* ``[batch_ops] deployment_name`` (``AIRFLOW__BATCH_OPS__DEPLOYMENT_NAME``), optional, is a name
  for people: it is recorded beside the identity and shown in sweep reports, never trusted.

Example:
    ```python
    from batch_ops.airflow.deployment import deployment_identity, deployment_name
    deployment_identity()  # inside a task: '3f9c0d1e7a2b4c68'
    ```
"""

from __future__ import annotations

import logging
import secrets
import time

from batch_ops.identity.owners import DEPLOYMENT_MAX

__all__ = ["VARIABLE", "deployment_identity", "deployment_name", "made_variable", "proves_identity"]

log = logging.getLogger(__name__)

#: The Airflow Variable holding this deployment's identity.
VARIABLE = "batch_ops_deployment_id"
_DESCRIPTION = ("Identifies this Airflow deployment in the metadata of the OpenAI batches it creates, so that its "
                "orphan sweep never cancels another deployment's batches (batch_ops). Never copy it to another "
                "deployment; copy it when moving this one to a new metadata database.")
_MADE_DESCRIPTION = ("An identity this Airflow deployment made for batch_ops_deployment_id (several tasks can make one "
                     "at the same moment): proves that batches naming it are this deployment's, so a retry never pays "
                     "for them again (batch_ops). Keep it; never copy it to another deployment.")
#: Seconds to wait after making the identity before reading it back: tasks that make it at the same
#: moment (the deployment's very first batches) mostly end up with the value written last. Mostly:
#: a task that reads between their writes does not wait, and a write can land later than this
#: (see the module docstring for what keeps money safe then).
_SETTLE = 1.0


def deployment_identity(*, create: bool = True) -> str | None:
    """This deployment's identity (see the module doc), made on first use when ``create``.

    Call it inside a running task. Returns None, with a warning, when the Variable cannot be read
    or written: batches then carry no identity, and sweeps report them as unproven rather than
    cancel them.
    """
    from airflow.sdk import Variable

    try:
        value = Variable.get(VARIABLE, default=None)
        if not value and create:
            made = secrets.token_hex(8)
            # The record first: any value a task reads as the identity then has its record (proves_identity).
            Variable.set(made_variable(made), made, description=_MADE_DESCRIPTION)
            Variable.set(VARIABLE, made, description=_DESCRIPTION)
            time.sleep(_SETTLE)
            value = Variable.get(VARIABLE, default=None)
    except Exception as exc:  # the Execution API's own errors; a setting must not stop a batch
        log.warning("Could not read or make the Airflow Variable %s (%s: %s): batches created now carry no "
                    "deployment identity, and orphan sweeps will report them as unproven, never cancel them",
                    VARIABLE, type(exc).__name__, exc)
        return None
    value = str(value).strip() if value is not None else ""
    return value[:DEPLOYMENT_MAX] or None


def made_variable(identity: str) -> str:
    """The Variable recording that this deployment made ``identity``.

    Examples:
        >>> made_variable("3f9c0d1e7a2b4c68")
        'batch_ops_deployment_id.3f9c0d1e7a2b4c68'
    """
    return f"{VARIABLE}.{identity}"


def proves_identity(identity: str) -> bool:
    """True when this deployment made ``identity`` (its :func:`made_variable` exists): batches naming it
    are this deployment's. False when it did not, or when the Variable cannot be read (a retry may then
    pay again, never take over another deployment's batch). Call it inside a running task."""
    from airflow.sdk import Variable

    try:
        return Variable.get(made_variable(identity), default=None) == identity
    except Exception as exc:  # the Execution API's own errors
        log.warning("Could not read the Airflow Variable %s (%s: %s): batches made under that identity are not "
                    "taken over", made_variable(identity), type(exc).__name__, exc)
        return False


def deployment_name() -> str | None:
    """``[batch_ops] deployment_name`` when the deployment sets one (for people: never trusted), else None."""
    try:
        from airflow.configuration import conf

        name = conf.get("batch_ops", "deployment_name", fallback=None)
    except Exception:  # an unreadable setting must not stop a batch
        return None
    name = str(name or "").strip()[:DEPLOYMENT_MAX]
    return name or None

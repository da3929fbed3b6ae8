"""This provider's Airflow plugin: it makes the deployment's identity when an Airflow component starts.

Registered as an ``airflow.plugins`` entry point (pyproject.toml), so installing the package is enough (a
provider's own ``plugins`` are loaded only with ``[core] lazy_discover_providers`` off). Its one listener runs
:func:`batch_ops.airflow.deployment.ensure_identity` in every Airflow job (scheduler, triggerer, dag
processor) as it starts: the identity is then made once, atomically, before any task could make it (see
:mod:`batch_ops.airflow.deployment` for why a task cannot). Task processes are left alone: they have no
metadata database.

Example:
    ```console
    $ airflow plugins            # lists batch_ops, with its listener
    ```
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

__all__ = ["BatchOpsPlugin", "on_starting"]


@hookimpl
def on_starting(component: Any) -> None:
    """Make the deployment identity when an Airflow job (a component with the database) starts."""
    from airflow.jobs.job import Job

    if isinstance(component, Job):
        from batch_ops.airflow.deployment import ensure_identity

        ensure_identity()


class BatchOpsPlugin(AirflowPlugin):
    """batch_ops' plugin: the listener above."""

    name = "batch_ops"
    listeners = [sys.modules[__name__]]  # noqa: RUF012 (AirflowPlugin declares it a plain attribute)

"""The Airflow settings batch_ops reads, each read in one place.

``[operators] default_deferrable`` is the switch Airflow's own providers default their
``deferrable`` argument from. Airflow ships it as ``False``, for operators that poll on a worker
unless asked not to; ours never hold a worker while a batch runs, so they defer unless the
deployment sets the option in its environment (``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``, or
its ``_CMD`` / ``_SECRET`` forms), in which case they follow it like every other operator.

``airflow.cfg`` cannot say the same: Airflow writes a new ``airflow.cfg`` with every option at
its default (``default_deferrable = false`` included), so the file cannot tell a choice from a
default. Turn deferral off there with the environment variable, or ``deferrable=False`` on the
operator.

Example:
    >>> isinstance(default_deferrable(), bool)
    True
"""

from __future__ import annotations

import os

__all__ = ["default_deferrable"]

_ENV = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` when the deployment's environment sets it; True otherwise."""
    if any(f"{_ENV}{suffix}" in os.environ for suffix in ("", "_CMD", "_SECRET")):
        from airflow.configuration import conf

        return conf.getboolean("operators", "default_deferrable")
    return True

"""The Airflow settings batch_ops reads, each read in one place.

``[operators] default_deferrable`` is the switch Airflow's own providers default their
``deferrable`` argument from. Airflow ships it as ``False``, for operators that poll on a worker
unless asked not to; ours never hold a worker while a batch runs, so they defer unless the
deployment *sets* the option (``airflow.cfg``, or ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``, or
its ``_CMD`` / ``_SECRET`` forms), in which case they follow it like every other operator.

Examples:
    >>> isinstance(default_deferrable(), bool)
    True
"""

from __future__ import annotations

import configparser
import os

__all__ = ["default_deferrable"]

_ENV = "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"


def default_deferrable() -> bool:
    """``[operators] default_deferrable`` when the deployment sets it; True when it only has Airflow's default."""
    from airflow.configuration import conf

    # The parser's own sections hold what airflow.cfg says; Airflow's shipped defaults live apart.
    in_file = configparser.ConfigParser.has_option(conf, "operators", "default_deferrable")
    in_env = any(f"{_ENV}{suffix}" in os.environ for suffix in ("", "_CMD", "_SECRET"))
    if in_file or in_env:
        return conf.getboolean("operators", "default_deferrable")
    return True

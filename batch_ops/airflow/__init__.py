"""batch_ops for Apache Airflow (>= 3.1.8): hook, deferrable operator, sensor, trigger, and the
asset-watcher trigger that turns batch webhooks into asset events.

Names load on first use, so Airflow's providers manager can read
``batch_ops.airflow.provider`` without importing the operators.

Examples:
    >>> from batch_ops.airflow import OpenAIBatchOperator
    >>> # with DAG("nightly_embeddings", schedule="@daily"):
    >>> #     OpenAIBatchOperator(task_id="embed", endpoint="/v1/embeddings",
    >>> #                         input_path="/data/{{ ds }}/requests.jsonl")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batch_ops.airflow.evals import EvalReportLink, EvalReportOperator
    from batch_ops.airflow.event_triggers import OpenAIBatchEventTrigger
    from batch_ops.airflow.hooks import OpenAIBatchHook
    from batch_ops.airflow.jobs import OpenAIBatchJobOperator, OpenAIBatchJobTrigger
    from batch_ops.airflow.operators import OpenAIBatchOperator
    from batch_ops.airflow.orphans import OpenAIBatchOrphanSweepOperator
    from batch_ops.airflow.sensors import OpenAIBatchSensor
    from batch_ops.airflow.triggers import OpenAIBatchTrigger

__all__ = [
    "EvalReportLink",
    "EvalReportOperator",
    "OpenAIBatchEventTrigger",
    "OpenAIBatchHook",
    "OpenAIBatchJobOperator",
    "OpenAIBatchJobTrigger",
    "OpenAIBatchOperator",
    "OpenAIBatchOrphanSweepOperator",
    "OpenAIBatchSensor",
    "OpenAIBatchTrigger",
]

_MODULES = {
    "EvalReportLink": "evals",
    "EvalReportOperator": "evals",
    "OpenAIBatchEventTrigger": "event_triggers",
    "OpenAIBatchHook": "hooks",
    "OpenAIBatchJobOperator": "jobs",
    "OpenAIBatchJobTrigger": "jobs",
    "OpenAIBatchOperator": "operators",
    "OpenAIBatchOrphanSweepOperator": "orphans",
    "OpenAIBatchSensor": "sensors",
    "OpenAIBatchTrigger": "triggers",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'batch_ops.airflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"batch_ops.airflow.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""A DAG for tests/airflow/test_cost_airflow.py (``airflow dags test``): one budget refused, one run billed.

``refused`` has a budget below its estimate: it fails before uploading anything. ``billed`` fits its
budget; its result dict holds the estimate and the actual bill side by side.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from batch_ops.airflow import OpenAIBatchOperator

PRICES = {"gpt-4": {"input": 10, "output": 30}}

with DAG("batch_ops_cost", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
         tags=["batch_ops-test"]) as dag:
    OpenAIBatchOperator(task_id="refused", endpoint="/v1/chat/completions",
                        input_path="{{ dag_run.conf['input_path'] }}", poll_interval=0.2, max_cost_usd=0.000001,
                        prices=PRICES)
    OpenAIBatchOperator(task_id="billed", endpoint="/v1/chat/completions",
                        input_path="{{ dag_run.conf['input_path'] }}", poll_interval=0.2, max_cost_usd=5.0,
                        prices=PRICES)

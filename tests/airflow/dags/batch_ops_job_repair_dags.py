"""A DAG for tests/airflow/test_jobs_repair_airflow.py (``dag.test()``): a job with a response model and one
repair round per part, on OpenAIBatchJobOperator (inputs from ``dag_run.conf``)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG
from pydantic import BaseModel

from batch_ops.airflow import OpenAIBatchJobOperator


class City(BaseModel):
    name: str
    population: int
    tags: list[str]


with DAG("batch_ops_job_repair", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
         tags=["batch_ops-test"]):
    OpenAIBatchJobOperator(
        task_id="job",
        input_path="{{ dag_run.conf['input_path'] }}",
        output_path="{{ dag_run.conf['output_path'] }}",
        endpoint="/v1/chat/completions",
        max_lines=10,
        max_concurrent=2,
        poll_interval=0.1,
        response_schema=City,
        repair_rounds=1,
        repair_feedback=True,
        prices={"gpt-4o-mini": {"input": 0.001, "output": 100}},
    )

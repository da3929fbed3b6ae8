"""A DAG running a many-batch job with OpenAIBatchJobOperator (inputs from ``dag_run.conf``)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from batch_ops.airflow import OpenAIBatchJobOperator

with DAG("batch_ops_job", schedule=None, start_date=datetime(2025, 1, 1), catchup=False, tags=["batch_ops-test"]):
    OpenAIBatchJobOperator(
        task_id="job",
        input_path="{{ dag_run.conf['input_path'] }}",
        output_path="{{ dag_run.conf['output_path'] }}",
        endpoint="/v1/chat/completions",
        max_lines=40,
        max_concurrent=2,
        poll_interval=0.1,
        token_limit_backoff=0.5,
    )

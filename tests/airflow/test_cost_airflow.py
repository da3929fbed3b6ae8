"""The budget and the bill through Airflow, run as a user runs a DAG: ``airflow dags test``.

A task whose budget is below its estimate fails before any upload (uploads counted on the server); a task
within its budget returns the estimate and the actual bill side by side in XCom.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai

from tests.airflow.conftest import airflow_bin, connection_env


def _requests(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": "gpt-4", "max_tokens": 50, "messages": [
                                            {"role": "user", "content": f"question {i}: 日本語 👍"}]}}) + "\n"
                            for i in range(n)))
    return path


def test_airflow_budget_refuses_before_upload_and_the_bill_sits_next_to_the_estimate(
        airflow_db: None, airflow_home: Path, make_server: Callable[..., AbstractContextManager[str]],
        tmp_path: Path) -> None:
    path = _requests(tmp_path / "requests.jsonl", 8)
    with make_server() as url:
        env = {**os.environ, "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": connection_env(url)}
        run = subprocess.run([airflow_bin(), "dags", "test", "batch_ops_cost", "-c",
                              json.dumps({"input_path": str(path)})], env=env, capture_output=True, text=True,
                             timeout=300)
        with openai.OpenAI(api_key="x", base_url=str(url)) as sdk:
            uploads = [f for f in sdk.files.list() if f.purpose == "batch"]
            batches = list(sdk.batches.list())
    log = run.stdout + run.stderr
    assert "BudgetExceededError" in log and "Nothing was uploaded" in log, log[-3000:]
    assert len(uploads) == 1 and len(batches) == 1, "only the task within its budget uploaded"
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        states = dict(db.execute("select task_id, state from task_instance where dag_id = 'batch_ops_cost'"))
        (value,) = db.execute("select value from xcom where dag_id = 'batch_ops_cost' and task_id = 'billed' "
                              "and key = 'return_value'").fetchone()
    assert states == {"refused": "failed", "billed": "success"}
    result: dict[str, Any] = json.loads(value)
    estimate, cost = result["estimate"], result["cost"]
    assert estimate["requests"] == 8 and estimate["models"][0]["input_kind"] == "exact"
    assert cost["models"][0]["input_tokens"] == estimate["models"][0]["input_tokens"]
    assert estimate["lower_usd"] <= cost["cost_usd"] <= estimate["upper_usd"]

"""OpenAIBatchJobOperator with a response model and ``repair_rounds=1``, run as a user runs a DAG: ``airflow dags
test``. Each part's invalid answers (a fifth, spoiled by the server) are resubmitted, only they, and the merged
output is typed. The operator keeps its config as a dict (for Jinja) and opens the job with it: the schema
survives that. (dags/batch_ops_job_repair_dags.py)"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from batch_ops.models import ResultLine
from batch_ops.structured import ResponseSchema, parse_line
from tests.airflow.conftest import airflow_bin, connection_env
from tests.airflow.dags.batch_ops_job_repair_dags import City

DAG_ID = "batch_ops_job_repair"


def test_the_job_operator_repairs_each_parts_invalid_answers(
        make_server: Callable[..., AbstractContextManager[str]], airflow_db: None, airflow_home: Path,
        tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "gpt-4o-mini", "max_tokens": 15,
                                                "messages": [{"role": "user", "content": f"City {i}?"}]}}) + "\n"
                           for i in range(20)))
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        env = {**os.environ, "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": connection_env(url, api_key="sk-job-repair")}
        run = subprocess.run([airflow_bin(), "dags", "test", DAG_ID, "--conf",
                              json.dumps({"input_path": str(src), "output_path": str(out)})],
                             env=env, capture_output=True, text=True, timeout=300)
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        run_id = db.execute("select run_id from dag_run where dag_id = ? order by id desc", (DAG_ID,)).fetchone()[0]
        (state,) = db.execute("select state from task_instance where dag_id = ? and run_id = ? and task_id = 'job'",
                              (DAG_ID, run_id)).fetchone()
        (value,) = db.execute("select value from xcom where dag_id = ? and run_id = ? and task_id = 'job' "
                              "and key = 'return_value'", (DAG_ID, run_id)).fetchone()
    summary = json.loads(value)
    assert state == "success", log[-4000:]
    repairs = summary["repairs"]
    assert repairs["batches"] == 2 and repairs["repaired"] == repairs["invalid"] > 0, repairs
    assert repairs["still_invalid"] == 0 and repairs["refused"] == 0
    for rounds in repairs["parts"].values():
        (record,) = rounds
        assert record["carried"] == sum(record["invalid"].values()) > 0
    # Paid == needed: two parts, and one repair batch each, carrying exactly the part's invalid requests.
    assert calls.get("POST /v1/files") == calls.get("POST /v1/batches") == summary["batches"] == 4, calls
    assert summary["succeeded"] == 20
    schema = ResponseSchema.of(City)
    lines = [ResultLine.model_validate_json(raw) for raw in out.read_text().splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)
    assert "sk-job-repair" not in log + value

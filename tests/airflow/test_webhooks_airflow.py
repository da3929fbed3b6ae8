"""A deferred OpenAIBatchOperator wakes on the batch's webhook, run as Airflow runs it
(``airflow dags test``, which runs the trigger inline), with a poll interval of ten hours.

The local server sends the signed event to ``batch-ops webhooks serve``; the trigger's one
subscription (the connection's ``events_url``) wakes it; the task ends seconds after the batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
KEY = "sk-webhook-dag-secret-4471"

DAG_FILE = '''
import pendulum
from airflow.sdk import dag
from batch_ops.airflow import OpenAIBatchOperator

@dag(dag_id="webhook_wake", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def webhook_wake():
    OpenAIBatchOperator(
        task_id="batch", endpoint="/v1/embeddings", poll_interval=36000,
        requests=[{"custom_id": f"r{i}", "body": {"model": "m", "input": f"x{i}"}} for i in range(4)])

webhook_wake()
'''


def test_deferred_operator_wakes_on_the_webhook(make_server: Callable[..., AbstractContextManager[str]],
                                                receiver: Any, webhook_secret: str, tmp_path: Path) -> None:
    dags, home = tmp_path / "dags", tmp_path / "home"
    dags.mkdir()
    (dags / "webhook_wake.py").write_text(DAG_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI", "BATCH_OPS"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    # Each request takes a second: the batch runs ~4 s, so the trigger is waiting when it ends.
    with make_server(request_latency=1.0, concurrency=1, api_key=KEY, webhook_urls=[receiver.hook_url],
                     webhook_secret=webhook_secret) as url:
        env["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps({
            "conn_type": "openaibatch", "host": url, "password": KEY,
            "extra": {"events_url": receiver.events_url}})
        started = time.monotonic()
        run = subprocess.run([AIRFLOW, "dags", "test", "webhook_wake", "2026-03-01"], env=env, capture_output=True,
                             text=True, timeout=600)
        took = time.monotonic() - started
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-4000:]
        assert KEY not in log
        health = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()
    # Without the webhook the first poll comes after a random pause of up to poll_interval (10 h):
    # finishing within 90 s would then take a 1-in-400 draw.
    assert took < 90, f"airflow dags test took {took:.0f} s"
    assert receiver.counts()["accepted"] == 1
    polls = health["calls"].get("GET /v1/batches/{id}", 0)
    assert health["calls"]["POST /v1/batches"] == 1 and polls <= 2, health["calls"]

"""A repair round under a budget, through Airflow, run as a user runs a DAG: ``airflow dags test``.

With a fifth of the structured answers spoiled, ``tight``'s budget covers attempt 0 but not attempt 0's actual
cost plus the repair round's upper bound: the round is refused before anything of it is uploaded (counted on
the server), the task still succeeds — its valid answers typed, the invalid ones delivered as invalid — and the
round in XCom carries the budget's message with the numbers. ``roomy``'s budget covers both: the round runs,
and the bill in XCom covers the repair batch too. (dags/batch_ops_repair_budget_dags.py)
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from tests.airflow.conftest import airflow_bin
from tests.airflow.dags.batch_ops_repair_budget_dags import ANSWER_TOKENS, MODEL, PRICES, ROOMY, TIGHT, N


def test_a_budget_the_repair_round_would_cross_stops_it_and_the_paid_answers_arrive(
        make_server: Callable[..., AbstractContextManager[str]], airflow_db: None, airflow_home: Path) -> None:
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        env = {**os.environ, "AIRFLOW_CONN_BO_REPAIR_BUDGET": json.dumps({
            "conn_type": "openaibatch", "host": str(url), "password": "sk-repair-budget",
            "extra": {"provider": "openai", "model": MODEL}})}
        run = subprocess.run([airflow_bin(), "dags", "test", "batch_ops_repair_budget"], env=env,
                             capture_output=True, text=True, timeout=300)
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        run_id = db.execute("select run_id from dag_run where dag_id = 'batch_ops_repair_budget' "
                            "order by id desc").fetchone()[0]
        states = dict(db.execute("select task_id, state from task_instance where dag_id = 'batch_ops_repair_budget' "
                                 "and run_id = ?", (run_id,)))
        (value,) = db.execute("select value from xcom where dag_id = 'batch_ops_repair_budget' and run_id = ? "
                              "and task_id = 'typed' and key = 'return_value'", (run_id,)).fetchone()
    assert states == dict.fromkeys(("tight", "roomy", "typed"), "success"), states
    # Uploads and batches on the server: tight's attempt 0 only; roomy's attempt 0 and its repair round.
    typed = json.loads(value)
    assert calls.get("POST /v1/files") == 3 and calls.get("POST /v1/batches") == 3, (calls, typed)
    tight, roomy = typed["tight"], typed["roomy"]

    # tight: the round found the invalid answers and the budget refused it, naming the numbers.
    summary = tight["summary"]
    (refused,) = summary["structured"]["rounds"]
    invalid = sum(refused["invalid"].values())
    assert invalid > 0 and refused["batch_id"] is None and refused["carried"] is None
    assert summary["structured"]["repair_rounds"] == 0 and summary["structured"]["repair_requests"] == 0
    assert len(summary["batch_ids"]) == 1
    message = refused["refused"]
    assert message.startswith("Budget: attempt 1 would cost up to $") and "Nothing was uploaded" in message
    assert f"max_cost_usd ${TIGHT:.6f}" in message and "the chain's earlier attempts $" in message
    # Its upper bound: the invalid requests' output limits at the output price, and their (cheap) input.
    output = invalid * ANSWER_TOKENS * PRICES[MODEL]["output"] / 1e6
    assert output <= refused["upper_usd"] < output * 1.01, refused
    assert f"up to ${refused['upper_usd']:.6f}" in message
    # The paid-for answers are delivered: the valid typed, the invalid marked (and the bill is attempt 0's).
    assert tight["records"] == N and tight["parsed"] == N - invalid and len(tight["invalid"]) == invalid
    assert summary["cost"]["cost_usd"] <= summary["estimate"]["upper_usd"] <= TIGHT
    assert summary["cost"]["models"][0]["requests"] == N
    assert any("warning" in line and "Repair round 1" in line and "refused by the budget" in line
               for line in log.splitlines()), log[-3000:]  # the task log's warning
    assert "sk-repair-budget" not in log + value

    # roomy: the round ran, carried exactly the invalid answers, and every answer arrives typed.
    summary = roomy["summary"]
    (ran,) = summary["structured"]["rounds"]
    assert ran["refused"] is None and ran["carried"] == sum(ran["invalid"].values()) > 0
    assert summary["batch_ids"][1] == ran["batch_id"] and roomy["parsed"] == N and roomy["invalid"] == []
    # The result dict has the estimate (attempt 0's), each round's upper bound, and a bill covering both batches.
    cost, estimate = summary["cost"], summary["estimate"]
    assert estimate["requests"] == N and cost["models"][0]["requests"] == N + ran["carried"]
    assert cost["models"][0]["output_tokens"] == (N + ran["carried"]) * ANSWER_TOKENS
    assert estimate["upper_usd"] < cost["cost_usd"] <= estimate["upper_usd"] + ran["upper_usd"] <= ROOMY

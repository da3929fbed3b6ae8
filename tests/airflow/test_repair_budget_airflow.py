"""A repair round under a budget, through Airflow (``dag.test()``, what ``airflow dags test`` runs).

With a fifth of the structured answers spoiled, ``tight``'s budget covers attempt 0 but not attempt 0's actual
cost plus the repair round's upper bound: the round is refused before anything of it is uploaded (counted on
the server), the task still succeeds — its valid answers typed, the invalid ones delivered as invalid — and the
round in XCom carries the budget's message with the numbers. ``roomy``'s budget covers both: the round runs,
and the bill in XCom covers the repair batch too. (dags/batch_ops_repair_budget_dags.py)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from tests.airflow.dags.batch_ops_repair_budget_dags import ANSWER_TOKENS, MODEL, PRICES, ROOMY, TIGHT, N


def test_a_budget_the_repair_round_would_cross_stops_it_and_the_paid_answers_arrive(
        make_server: Callable[..., AbstractContextManager[str]], dagbag: Any, af: Any,
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        monkeypatch.setenv("AIRFLOW_CONN_BO_REPAIR_BUDGET", json.dumps({
            "conn_type": "openaibatch", "host": str(url), "password": "sk-repair-budget",
            "extra": {"provider": "openai", "model": MODEL}}))
        run = dagbag.get_dag("batch_ops_repair_budget").test()
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    assert {t: af.state(run, t) for t in ("tight", "roomy", "typed")} == dict.fromkeys(("tight", "roomy", "typed"),
                                                                                     "success")
    # Uploads and batches on the server: tight's attempt 0 only; roomy's attempt 0 and its repair round.
    assert calls.get("POST /v1/files") == 3 and calls.get("POST /v1/batches") == 3, calls
    typed = af.xcom(run, "typed")
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
    logged = capfd.readouterr()
    assert any("[warning" in line and "Repair round 1" in line and "refused by the budget" in line
               for line in (logged.out + logged.err).splitlines())  # the task log's warning

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

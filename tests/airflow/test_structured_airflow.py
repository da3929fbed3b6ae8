"""Structured outputs through Airflow, run as a user runs a DAG: ``airflow dags test`` (a process of its own;
deferred waits run inline). A pydantic model on the operator round-trips to typed results on OpenAI's,
Anthropic's and Gemini's batch APIs of the local server; with a fifth of the answers spoiled, one repair round
(the operator defers again) resubmits exactly the invalid requests, and the rest arrive typed through
``OpenAIBatchHook.get_results``.

``airflow dags test`` resumes a deferred task with the trigger's event only (its ``next_kwargs`` are dropped):
the operator finds its chain again from the API and its rounds from XCom, so this also proves a resume that
lost its kwargs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.airflow.conftest import airflow_bin


def connection(url: str, **extra: Any) -> str:
    return json.dumps({"conn_type": "openaibatch", "host": url, "password": "sk-structured-test", "extra": extra})


@pytest.fixture
def spoiling(make_server: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        yield url


def test_operator_repairs_only_the_invalid_answers_on_three_providers(
        spoiling: str, airflow_db: None, airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(spoiling).removesuffix("/v1")
    for name, url, extra in (
            ("OPENAI", spoiling, {"provider": "openai", "model": "gpt-4o-mini"}),
            ("ANTHROPIC", spoiling, {"provider": "anthropic", "model": "claude-sonnet-4-5",
                                     "key_ledger": str(tmp_path / "ledger")}),
            ("GEMINI", root + "/v1beta", {"provider": "gemini", "model": "gemini-2.5-flash"})):
        monkeypatch.setenv(f"AIRFLOW_CONN_BO_STRUCTURED_{name}", connection(url, **extra))
    run = subprocess.run([airflow_bin(), "dags", "test", "structured_outputs"], env=dict(os.environ),
                         capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        (value,) = db.execute("select value from xcom where dag_id = 'structured_outputs' and task_id = 'typed' "
                              "and key = 'return_value' order by timestamp desc").fetchone()
    typed = json.loads(value)
    for conn_id in ("bo_structured_openai", "bo_structured_anthropic", "bo_structured_gemini"):
        got = typed[conn_id]
        structured = got["summary"]["structured"]
        (round_one,) = structured["rounds"]
        invalid = sum(round_one["invalid"].values())
        assert invalid > 0, (conn_id, structured)
        # One repair round carried exactly the invalid answers, as the chain's second attempt.
        assert round_one["carried"] == invalid == structured["repair_requests"], (conn_id, structured)
        assert len(got["summary"]["batch_ids"]) == 2 and got["summary"]["batch_ids"][1] == round_one["batch_id"]
        assert got["summary"]["chain_request_counts"]["completed"] == 20
        # ... and every answer arrives typed.
        assert got["parsed"] == 20 and got["invalid"] == [], (conn_id, got)
        assert got["first"] == {"name": "", "population": 0, "tags": []}
    calls = httpx.get(root + "/healthz").json()["calls"]
    assert calls.get("POST /v1/batches", 0) == 2  # OpenAI's route: the batch and its one repair, nothing more
    assert "sk-structured-test" not in json.dumps(typed) + log  # no key in XCom or the run's output

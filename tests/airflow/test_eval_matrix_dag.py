"""The example DAG ``dags/eval_matrix.py`` end to end (``airflow dags test``, deferred waits run inline):
three models as three mapped batches on one local server whose replay engine answers each model from its
own recording, a judge stage as three more mapped batches, the gate, and the HTML report linked from the
task. A second run with a weaker "model" under the same name makes the gate fail, the report written first."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from batch_ops.evals.matrix import DEMO_MATRIX, MATRIX_RUN
from batch_ops.evals.record import RunRecord
from tests.airflow.conftest import example_dags_env, migrate

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
KEY = "sk-matrix-dag-secret-5521"


def _env(tmp_path: Path) -> dict[str, str]:
    return example_dags_env(tmp_path / "home", BATCH_OPS_EVAL_DIR=str(tmp_path / "eval"),
                            BATCH_OPS_EVAL_POLL_INTERVAL="0.2")


def _xcom(home: Path, task_id: str, key: str = "return_value") -> list[object]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select value from xcom where dag_id = 'eval_matrix' and task_id = ? and key = ? "
                          "order by map_index", (task_id, key)).fetchall()
    return [json.loads(v) for (v,) in rows]


def _dags_test(make_server: Callable[..., AbstractContextManager[str]], env: dict[str, str],
               recording: Path, conf: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    with make_server(engine="replay", replay_files=(str(recording),), seed=5, api_key=KEY) as url:
        env["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps({"conn_type": "openaibatch", "host": url,
                                                               "password": KEY})
        extra = ["-c", json.dumps(conf)] if conf else []
        return subprocess.run([AIRFLOW, "dags", "test", *extra, "eval_matrix"], env=env, capture_output=True,
                              text=True, timeout=600)


def _migrated(tmp_path: Path) -> dict[str, str]:
    env = _env(tmp_path)
    migrate(env)
    return env


def test_eval_matrix_dag_three_models_judge_gate_report(make_server: Callable[..., AbstractContextManager[str]],
                                                        tmp_path: Path) -> None:
    env = _migrated(tmp_path)
    run = _dags_test(make_server, env, MATRIX_RUN)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "state=success" in log and KEY not in log
    home = Path(env["AIRFLOW_HOME"])
    # Mapped: one answer batch and one judge batch per model, six distinct batches.
    answers, judges = _xcom(home, "answer"), _xcom(home, "judge")
    assert len(answers) == 3 and len(judges) == 3
    assert len({a["batch_id"] for a in answers + judges}) == 6  # type: ignore[index]
    reports = tmp_path / "eval" / "matrix"
    record = RunRecord.from_json(next((reports / "runs").glob("*/record.json")).read_text())
    scores = {m.model: m.overall.mean for m in record.models}
    assert list(scores) == [m["model"] for m in DEMO_MATRIX["models"]]
    assert scores["demo-large"] > scores["demo-medium"] > scores["demo-small"], scores
    for m in record.models:
        assert m.result_counts.unparsed == 2 and not m.complete  # the recorded judge's two ungraded answers
        assert m.judge_usage is not None and m.judge_usage.requests == m.result_counts.total
        assert m.cost.actual and m.judge_cost and m.judge_cost.actual and len(m.batch_ids) == 2
        # the estimate each operator made before its upload, beside the actual bill (batch_ops.cost)
        for cost in (m.cost, m.judge_cost):
            assert cost.estimate_low is not None and cost.estimate_high is not None
            assert cost.estimate_low <= cost.estimate_high and cost.estimate_high >= cost.actual > 0, (m.model, cost)
        assert m.turnaround_s is not None and m.judge_turnaround_s is not None
    assert record.gate is not None and record.gate.status == "incomplete"
    assert {c.model for c in record.comparisons if c.kind == "baseline_model"} == {"demo-medium", "demo-small"}
    html = (reports / "latest.html").read_text()
    assert html.count("<svg") == 3 and "demo-small" in html
    openai = json.loads(next((reports / "runs").glob("*/openai_report.json")).read_text())
    assert openai["result_counts"]["total"] == 630 and len(openai["per_model_usage"]) == 4
    # The task's extra link: the report's URL, in the XCom Airflow's UI reads.
    (link,) = _xcom(home, "report", "_link_EvalReportLink")
    assert str(link).startswith("file://") and str(link).endswith("/report.html")
    assert Path(str(link).removeprefix("file://")).exists()


@pytest.mark.scenario  # two `airflow dags test` nights (~45 s): `make drill`
def test_a_failed_gate_fails_the_run_after_the_report_and_keeps_its_link(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path, regressed_matrix_run: Path) -> None:
    """Night 1 as recorded; night 2 demo-large answers as demo-small did: the report task fails (significant drop
    of at least min_drop against its previous run), its report is on disk and its extra link points at it."""
    env = _migrated(tmp_path)
    assert _dags_test(make_server, env, MATRIX_RUN).returncode == 0
    night2 = _dags_test(make_server, env, regressed_matrix_run)
    log = night2.stdout + night2.stderr
    assert night2.returncode != 0 and "ScoreRegressionError" in log and "demo-large" in log, log[-3000:]
    runs = [RunRecord.from_json(p.read_text()) for p in (tmp_path / "eval" / "matrix" / "runs").glob("*/record.json")]
    failed = [r for r in runs if r.gate is not None and r.gate.status == "fail"]
    assert len(runs) == 2 and len(failed) == 1 and failed[0].gate.failing == ["demo-large"]  # type: ignore[union-attr]
    links = [str(v) for v in _xcom(Path(env["AIRFLOW_HOME"]), "report", "_link_EvalReportLink")]
    assert len(links) == 2 and all(Path(v.removeprefix("file://")).exists() for v in links)


@pytest.mark.scenario  # ~20 s: `make drill`
def test_several_judges_as_mapped_batches_with_a_run_budget(make_server: Callable[..., AbstractContextManager[str]],
                                                           tmp_path: Path) -> None:
    """``judge`` as a list: one mapped judge batch per (model, judge), the majority through the library; the run's
    ``max_cost_usd`` shared by the batches, each refused by the core before upload if it could pass its share."""
    from tests.test_eval_matrix import more_judges

    price = {"input_per_million": 0.1, "output_per_million": 0.4}
    conf = {"models": DEMO_MATRIX["models"][:1], "max_cost_usd": 1.0,
            "judge": [DEMO_MATRIX["judge"], {"model": "demo-judge-b", "price": price},
                      {"model": "demo-judge-c", "price": price}]}
    env = _migrated(tmp_path)
    run = _dags_test(make_server, env, more_judges(tmp_path / "judges.jsonl"), conf)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    home = Path(env["AIRFLOW_HOME"])
    (answers,), judges = _xcom(home, "answer"), _xcom(home, "judge")
    assert len(judges) == 3 and len({j["batch_id"] for j in judges}) == 3  # type: ignore[index]
    plan = _xcom(home, "plan")[0][0]  # type: ignore[index]
    assert answers["estimate"]["upper_usd"] <= plan["max_cost_usd"] < 1.0  # type: ignore[index]
    (m,) = RunRecord.from_json(next((tmp_path / "eval" / "matrix" / "runs").glob("*/record.json")).read_text()).models
    judge = next(g for g in m.graders if g.name == "judge")
    assert judge.judge_models == ["demo-judge", "demo-judge-b", "demo-judge-c"] and len(m.batch_ids) == 4
    votes = [s.verdicts["judge"].detail or "" for s in m.samples if s.verdicts["judge"].status == "graded"]
    assert votes and all(v.startswith("votes") for v in votes)
    assert m.judge_cost is not None and m.judge_cost.actual and m.judge_cost.estimate_high
    assert m.judge_cost.estimate_high >= m.judge_cost.actual

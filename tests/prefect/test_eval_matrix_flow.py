"""The example flow ``flows/eval_matrix.py`` end to end on the local server: three models at once, a judge
batch each, the report and its artifacts; then a night where one model got worse, and the gate fails the run
with the report written first."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest

from batch_ops.evals import ScoreRegressionError
from batch_ops.evals.matrix import MATRIX_RUN
from batch_ops.evals.record import RunRecord

FLOW_FILE = Path(__file__).resolve().parents[2] / "flows" / "eval_matrix.py"


def load_flow_module(monkeypatch: pytest.MonkeyPatch, eval_dir: Path) -> ModuleType:
    monkeypatch.setenv("BATCH_OPS_EVAL_DIR", str(eval_dir))  # read when the module loads
    monkeypatch.delenv("BATCH_OPS_EVAL_MATRIX", raising=False)
    spec = importlib.util.spec_from_file_location("eval_matrix_flow_example", FLOW_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_eval_matrix_flow_runs_three_models_and_gates_a_real_regression(
    make_server: Callable[..., AbstractContextManager[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    regressed_matrix_run: Path,
) -> None:
    module = load_flow_module(monkeypatch, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "local-matrix-key")
    with make_server(engine="replay", replay_files=(str(MATRIX_RUN),), seed=3, api_key="local-matrix-key") as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        first = asyncio.run(module.eval_matrix(poll_interval=0.1))
    assert first["gate"]["status"] == "incomplete"  # the judge's unparsed answers, counted apart
    means = {m: v["mean"] for m, v in first["models"].items()}
    assert means["demo-large"] > means["demo-medium"] > means["demo-small"]
    html = Path(first["report"]["html"])
    assert html.exists() and first["report"]["url"] == html.resolve().as_uri()
    record = RunRecord.from_json((html.parent / "record.json").read_text())
    for m in record.models:  # run_batch's estimate (before the upload) beside its bill, answers and judge
        for cost in (m.cost, m.judge_cost):
            assert cost is not None and cost.estimate_high is not None and cost.actual is not None
            assert cost.estimate_high >= cost.actual > 0, (m.model, cost)

    with make_server(engine="replay", replay_files=(str(regressed_matrix_run),), seed=3,
                     api_key="local-matrix-key") as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        with pytest.raises(ScoreRegressionError, match="demo-large"):
            asyncio.run(module.eval_matrix(poll_interval=0.1))
    runs = sorted((tmp_path / "matrix" / "runs").glob("*/record.json"))
    assert len(runs) == 2  # the failing run's report was written before the gate failed it
    second = max((RunRecord.from_json(p.read_text()) for p in runs), key=lambda r: r.finished_at or 0)
    assert second.gate is not None and second.gate.status == "fail" and second.gate.failing == ["demo-large"]
    drop = next(c for c in second.comparisons if c.kind == "previous_run" and c.model == "demo-large")
    assert drop.significant and drop.diff < -0.2
    # the other two answered as the night before: no significant change, not failing
    assert not any(c.significant for c in second.comparisons if c.kind == "previous_run" and c.model != "demo-large")
    history = list((tmp_path / "matrix" / "models" / "demo-large").glob("*.json"))
    assert len(history) == 2
    assert "local-matrix-key" not in (tmp_path / "matrix" / "latest.html").read_text()

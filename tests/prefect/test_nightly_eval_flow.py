"""The example flow ``flows/nightly_eval.py`` runs end to end against the local server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest

from batch_ops.evals import SAMPLE_RUN, ScoreRegressionError, read_history

FLOW_FILE = Path(__file__).resolve().parents[2] / "flows" / "nightly_eval.py"


def load_flow_module(monkeypatch: pytest.MonkeyPatch, eval_dir: Path) -> ModuleType:
    monkeypatch.setenv("BATCH_OPS_EVAL_DIR", str(eval_dir))  # read when the module loads
    spec = importlib.util.spec_from_file_location("nightly_eval_flow_example", FLOW_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_nightly_eval_flow_scores_the_servers_answers_and_gates_regressions(
    make_server: Callable[..., AbstractContextManager[str]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = load_flow_module(monkeypatch, tmp_path)
    with make_server(engine="replay", replay_files=(str(SAMPLE_RUN),), fail_requests=0.03, seed=3) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        monkeypatch.setenv("OPENAI_API_KEY", "local-flow-key")
        summary = asyncio.run(module.nightly_eval(poll_interval=0.1))
        assert summary["total"] == 210 and 0.75 < summary["score"] < 0.95
        assert summary["failed"] == 210 - summary["correct"] - summary["wrong"]
        report = json.loads(Path(summary["report"]["json"]).read_text())
        assert report["pipeline"] == "prefect" and report["batch"]["status"] == "completed"
        assert Path(summary["report"]["chart"]).exists()
        # A second run that may not drop at all (max_drop below zero) must fail loudly,
        # with its report written first.
        with pytest.raises(ScoreRegressionError, match="score fell"):
            asyncio.run(module.nightly_eval(poll_interval=0.1, max_drop=-1.0))
    history = read_history(tmp_path / "reports")
    assert [h["pipeline"] for h in history] == ["prefect", "prefect"]
    assert "local-flow-key" not in (tmp_path / "reports" / "latest.md").read_text()

"""The eval matrix's core (batch_ops.evals.matrix) on the local server, with no orchestrator: the replay engine
answers each model from its own recording, the matrix steps grade three models and a judge stage, bad params are
refused before anything is paid for."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, SubmitSpec
from batch_ops.errors import BatchOpsError, BudgetExceededError, InputValidationError
from batch_ops.evals.matrix import (
    DEMO_MATRIX,
    MATRIX_RUN,
    MatrixConfig,
    answer_requests,
    finish_run,
    grade_answers,
    model_record,
    with_times,
)
from batch_ops.results import result_records

KEY = "sk-matrix-core-5531"


def _run(client: BatchClient, requests: list[dict[str, Any]], *, prices: dict[str, Any] | None = None,
         max_cost_usd: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One batch of neutral requests, waited for; its result records and its outcome with times, the estimate
    made before the upload and the bill, as the adapters return them (``estimate``, ``cost``)."""
    sub = client.submit_spec(requests, SubmitSpec.of(endpoint="/v1/chat/completions", prices=prices,
                                                     max_cost_usd=max_cost_usd))
    done = client.batches.wait(sub.batch.id, poll_interval=0.05)
    outcome = done.summary() | {"batch_ids": [done.id], "estimate": sub.estimate.as_dict() if sub.estimate else None,
                                "cost": client.bill(done, prices=prices).as_dict()}
    return result_records(client.results(done), raw=False), with_times(outcome, [done])


def test_one_replay_server_answers_each_model_from_its_own_recording(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    """Before: the replay engine keyed answers by custom_id alone, so three models asked the same question got
    the same recorded answer (the last recorded), and a matrix scored three copies of one model."""
    config = MatrixConfig.from_params(DEMO_MATRIX)
    texts: dict[str, dict[str, str | None]] = {}
    with make_server(engine="replay", replay_files=(str(MATRIX_RUN),), api_key=KEY) as url, \
            BatchClient(api_key=KEY, base_url=url) as client:
        for spec in config.models:
            records, _ = _run(client, answer_requests(config, spec)[:40])
            texts[spec.model] = {r["custom_id"]: r["text"] for r in records}
        # a model recorded for none of these ids, while several are: refused, never another model's answer
        stranger = [{**answer_requests(config, config.models[0])[0], "model": "demo-unknown"}]
        (refused,), _ = _run(client, stranger)
    large, small = texts["demo-large"], texts["demo-small"]
    assert all(t is not None for t in (*large.values(), *small.values()))
    assert sum(large[k] != small[k] for k in large) >= 10, "the models answered alike"
    assert not refused["ok"] and refused["error"]["code"] == "replay_not_found"
    assert "demo-large" in refused["error"]["message"]


def test_three_models_and_a_judge_stage_end_to_end_without_an_orchestrator(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    config = MatrixConfig.from_params(DEMO_MATRIX)
    config.check()
    records = []
    with make_server(engine="replay", replay_files=(str(MATRIX_RUN),), api_key=KEY) as url, \
            BatchClient(api_key=KEY, base_url=url) as client:
        for spec in config.models:
            answers, outcome = _run(client, answer_requests(config, spec), prices=config.prices())
            graded = grade_answers(config, spec, answers, outcome)
            (judge,) = graded["judge_batches"]
            assert len(judge["requests"]) == 210  # the judge batch: every answer, the judge pinned
            assert {r["model"] for r in judge["requests"]} == {"demo-judge"} and judge["judge"] == "demo-judge"
            verdicts, judged = _run(client, judge["requests"], prices=config.prices())
            records.append(model_record(config, spec, graded, verdicts, judged))
    run, report = finish_run(config, records, run_id="core-1", pipeline="test", report_dir=tmp_path)
    means = [m.overall.mean for m in run.models]
    assert means == sorted(means, reverse=True) and means[0] - means[-1] > 0.3
    for m in run.models:
        # the recorded judge's two answers with no grade: counted apart, never a pass or a fail
        assert m.result_counts.unparsed == 2 and m.result_counts.errored == 0 and not m.complete
        judge = next(g for g in m.graders if g.name == "judge")
        assert judge.unparsed == 2 and judge.judge_models == ["demo-judge"]
        assert m.judge_usage is not None and m.judge_usage.requests == 210
        assert m.cost.actual is not None and m.judge_cost is not None and m.judge_cost.actual is not None
        assert m.turnaround_s is not None and m.judge_turnaround_s is not None and len(m.batch_ids) == 2
        # the estimate made before each upload bounds what the batch cost (batch_ops.cost, one table of prices)
        for cost in (m.cost, m.judge_cost):
            assert cost.estimate_low is not None and cost.estimate_high is not None and cost.actual is not None
            assert cost.estimate_high >= cost.actual > 0, (m.model, cost)
    # actual = usage x the price the params give, as an override of the price table (USD per 1M batch tokens)
    large = run.models[0]
    assert large.cost.actual == pytest.approx((large.usage.input_tokens * 1.25 + large.usage.output_tokens * 5.0) / 1e6)
    assert large.judge_usage is not None and large.judge_cost is not None and large.judge_cost.actual == pytest.approx(
        (large.judge_usage.input_tokens * 0.1 + large.judge_usage.output_tokens * 0.4) / 1e6)
    markdown = Path(report["markdown"]).read_text()
    low, high = large.cost.estimate_low, large.cost.estimate_high
    assert f"${low:.4f}-${high:.4f} / ${large.cost.actual:.4f}" in markdown  # estimate range and actual, side by side
    assert run.gate is not None and run.gate.status == "incomplete"
    assert Path(report["html"]).exists() and json.loads(Path(report["openai"]).read_text())["result_counts"][
        "unparsed"] == 6


@pytest.mark.parametrize(("params", "rule"), [
    ({"models": []}, "invalid_matrix_param"),
    ({"models": ["a", "a"]}, "duplicate_model"),
    ({"models": ["a"], "baseline": "b"}, "unknown_baseline"),
    ({"models": [{"model": "a", "price": {"input_per_million": -1, "output_per_million": 1}}]},
     "invalid_matrix_param"),
])
def test_bad_params_are_refused_before_any_batch(params: dict[str, Any], rule: str) -> None:
    with pytest.raises(InputValidationError) as caught:
        MatrixConfig.from_params(params)
    assert rule in str(caught.value) and "fix:" in str(caught.value)


def test_a_floating_judge_alias_is_refused_and_a_bad_eval_set_fails_up_front(tmp_path: Path) -> None:
    with pytest.raises(BatchOpsError, match="pin a dated model"):
        MatrixConfig.from_params({"models": ["a"], "judge": "gpt-4o-latest"})
    with pytest.raises(BatchOpsError, match=r"unknown kind 'levenshtein'.*fix"):
        MatrixConfig.from_params({"models": ["a"], "graders": ["levenshtein"]})
    bad = tmp_path / "mine.csv"
    bad.write_text("id,input\nq1,What is 2+2?\n")  # no expected answer, which the default grader needs
    config = MatrixConfig.from_params({"models": ["a"], "eval_set": str(bad)})
    with pytest.raises(InputValidationError, match="missing_expected"):
        config.check()

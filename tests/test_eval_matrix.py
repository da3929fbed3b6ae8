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
    answer_estimate,
    answer_requests,
    batch_budgets,
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


def test_a_run_budget_is_refused_before_any_upload_and_each_batch_carries_its_share(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    """Before: the matrix had no budget; a run could spend any amount. Now the answers' upper bounds (estimated by
    batch_ops.cost, the core's function) are checked against the run's budget before anything is uploaded, and each
    batch's share is its own max_cost_usd, which the submission core checks before the upload."""
    config = MatrixConfig.from_params({**DEMO_MATRIX, "max_cost_usd": 0.01})
    estimates = {s.model: answer_estimate(config, answer_requests(config, s)) for s in config.models}
    uppers = {m: float(e.upper) for m, e in estimates.items()}
    with pytest.raises(BudgetExceededError, match=r"max_cost_usd \$0\.010000.*Nothing was uploaded"):
        batch_budgets(config, estimates)  # demo-large alone may cost ~$0.07
    budget = sum(uppers.values()) + 0.03
    config = MatrixConfig.from_params({**DEMO_MATRIX, "max_cost_usd": budget})
    shares = batch_budgets(config, estimates)
    assert shares["judge"] == pytest.approx(0.03 / 6, abs=1e-8)  # 3 answers + 3 judge batches share the slack
    assert shares["answers"]["demo-large"] == pytest.approx(uppers["demo-large"] + 0.005, abs=1e-8)
    assert sum(shares["answers"].values()) + 3 * shares["judge"] <= budget  # the caps never add up past it
    spec = config.models[0]
    with make_server(engine="replay", replay_files=(str(MATRIX_RUN),), api_key=KEY) as url, \
            BatchClient(api_key=KEY, base_url=url) as client:
        with pytest.raises(BudgetExceededError, match="Nothing was uploaded"):  # a share below the bound: refused
            _run(client, answer_requests(config, spec), prices=config.prices(), max_cost_usd=uppers[spec.model] / 2)
        assert not list(client.files.list())
        _, outcome = _run(client, answer_requests(config, spec), prices=config.prices(),
                          max_cost_usd=shares["answers"][spec.model])
    assert outcome["estimate"]["upper_usd"] <= shares["answers"][spec.model]
    assert 0 < outcome["cost"]["cost_usd"] <= outcome["estimate"]["upper_usd"]


def more_judges(path: Path) -> Path:
    """The demo recording plus two more judges for demo-large: judge b and c both flip every ``arith`` grade (so the
    majority flips them), c alone flips every ``units`` grade (so the majority keeps them)."""
    out = [raw for raw in MATRIX_RUN.read_text().splitlines()]
    for raw in MATRIX_RUN.read_text().splitlines():
        line = json.loads(raw)
        cid = str(line["custom_id"])
        if not (cid.startswith("demo-large__") and cid.endswith("__j1")):
            continue
        for k, judge, flips in ((2, "demo-judge-b", ("arith",)), (3, "demo-judge-c", ("arith", "units"))):
            copy = json.loads(raw)
            body = copy["response"]["body"]
            body["model"] = judge
            copy["custom_id"] = cid[:-1] + str(k)
            msg = body["choices"][0]["message"]
            if cid.removeprefix("demo-large__").startswith(flips):
                msg["content"] = msg["content"].replace("GRADE: C", "GRADE: x").replace(
                    "GRADE: I", "GRADE: C").replace("GRADE: x", "GRADE: I")
            out.append(json.dumps(copy))
    path.write_text("\n".join(out) + "\n")
    return path


def test_several_judges_grade_in_one_batch_each_and_the_majority_decides(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    """Before: the matrix pinned one judge. Now ``judge`` may be a list: one judge batch per judge model (through its
    own connection, with its own price and cost line), the grade the judges' majority (ModelGraded)."""
    price = {"input_per_million": 0.1, "output_per_million": 0.4}
    params = {**DEMO_MATRIX, "models": DEMO_MATRIX["models"][:1],
              "judge": [DEMO_MATRIX["judge"], {"model": "demo-judge-b", "price": price},
                        {"model": "demo-judge-c", "price": price}]}
    config = MatrixConfig.from_params(params)
    assert [j.model for j in config.judge_specs()] == ["demo-judge", "demo-judge-b", "demo-judge-c"]
    one_judge = MatrixConfig.from_params({**params, "judge": DEMO_MATRIX["judge"]})
    spec = config.models[0]
    with make_server(engine="replay", replay_files=(str(more_judges(tmp_path / "rec.jsonl")),), api_key=KEY) as url, \
            BatchClient(api_key=KEY, base_url=url) as client:
        answers, outcome = _run(client, answer_requests(config, spec), prices=config.prices())
        graded = grade_answers(config, spec, answers, outcome)
        assert [b["judge"] for b in graded["judge_batches"]] == ["demo-judge", "demo-judge-b", "demo-judge-c"]
        verdicts: list[dict[str, Any]] = []
        judged = []
        for batch in graded["judge_batches"]:
            assert {r["model"] for r in batch["requests"]} == {batch["judge"]} and len(batch["requests"]) == 210
            records, done = _run(client, batch["requests"], prices=config.prices())
            verdicts += records
            judged.append(done)
        many = model_record(config, spec, graded, verdicts, judged)
        single = model_record(one_judge, spec, grade_answers(one_judge, spec, answers, outcome),
                              [v for v in verdicts if v["custom_id"].endswith("__j1")], judged[0])
    by_item = {s.item_id: s for s in many.samples}
    alone = {s.item_id: s for s in single.samples}
    flipped = [i for i in by_item if i.startswith("arith") and by_item[i].verdicts["judge"].status == "graded"]
    assert flipped and all(by_item[i].scores["judge"] == 1 - alone[i].scores["judge"] for i in flipped)
    kept = [i for i in by_item if i.startswith("units") and by_item[i].verdicts["judge"].status == "graded"]
    assert kept and all(by_item[i].scores["judge"] == alone[i].scores["judge"] for i in kept)
    assert "votes" in by_item[kept[0]].verdicts["judge"].detail
    judge = next(g for g in many.graders if g.name == "judge")
    assert judge.judge_models == ["demo-judge", "demo-judge-b", "demo-judge-c"]
    assert many.judge_usage is not None and many.judge_usage.requests == 630 and len(many.batch_ids) == 4
    assert many.judge_cost is not None and many.judge_cost.actual == pytest.approx(
        sum(d["cost"]["cost_usd"] for d in judged))
    assert many.judge_cost.estimate_high is not None and many.judge_cost.estimate_high >= many.judge_cost.actual


def test_epochs_answer_each_item_several_times_and_the_report_gives_pass_at_k(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    """Before: the matrix asked each item once. ``epochs`` asks it k times in the same batch (``<id>__e<k>``); the
    item scores the mean of its epochs, and pass@k (unbiased) is in the record and the report. Hand-computed: right
    answers per item q1..q4 of 3 epochs: 3, 1, 0, 2 → pass@1 = (1 + 1/3 + 0 + 2/3) / 4 = 0.5, pass@3 = 3/4."""
    eval_set = tmp_path / "set.jsonl"
    eval_set.write_text("".join(json.dumps({"id": f"q{i}", "input": f"Say {i}", "expected": str(i)}) + "\n"
                                for i in range(1, 5)))
    right = {"q1": {1, 2, 3}, "q2": {1}, "q3": set(), "q4": {2, 3}}
    recording = tmp_path / "epochs.jsonl"
    recording.write_text("".join(json.dumps({"custom_id": f"{q}__e{k}", "response": {"status_code": 200, "body": {
        "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": {
            "role": "assistant", "content": q[1:] if k in ok else "no"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}}, "error": None}) + "\n"
        for q, ok in right.items() for k in (1, 2, 3)))
    with pytest.raises(InputValidationError, match="epochs_without_temperature"):
        MatrixConfig.from_params({"models": ["m"], "eval_set": str(eval_set), "graders": ["exact"], "epochs": 3})
    config = MatrixConfig.from_params({"models": [{"model": "m", "price": {"input_per_million": 1,
                                                                           "output_per_million": 2}}],
                                       "eval_set": str(eval_set), "graders": ["exact"], "epochs": 3,
                                       "temperature": 0.7})
    spec = config.models[0]
    requests = answer_requests(config, spec)
    assert [r["custom_id"] for r in requests[:3]] == ["q1__e1", "q1__e2", "q1__e3"] and len(requests) == 12
    assert {r["temperature"] for r in requests} == {0.7}
    with make_server(engine="replay", replay_files=(str(recording),), api_key=KEY) as url, \
            BatchClient(api_key=KEY, base_url=url) as client:
        answers, outcome = _run(client, requests, prices=config.prices())
    graded = grade_answers(config, spec, answers, outcome)
    assert graded["judge_batches"] == []
    m = model_record(config, spec, graded)
    assert m.epochs == 3 and m.pass_at_k == {1: pytest.approx(0.5), 3: pytest.approx(0.75)}
    assert m.overall.mean == pytest.approx(0.5) and m.overall.n == 4 and len(m.samples) == 12
    assert m.cost.estimate_high is not None and m.cost.actual is not None and m.cost.estimate_high >= m.cost.actual
    _, report = finish_run(config, [m], run_id="epochs-1", pipeline="test", report_dir=tmp_path / "reports")
    markdown = Path(report["markdown"]).read_text()
    assert "| pass@1 | pass@3 |" in markdown and "| 50.0% | 75.0% |" in markdown

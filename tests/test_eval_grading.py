"""From results to the run record: grading, epochs, intervals per category, comparisons, the gate, and a real
answer batch + judge batch on the local server."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient
from batch_ops.evals import (
    EvalItem,
    Exact,
    ModelGraded,
    Numeric,
    PythonGrader,
    RunRecord,
    ScoreRegressionError,
    apply_judge,
    check_gate,
    grade_answers,
    model_record,
    read_eval_set,
    run_record,
    usage_of,
)
from batch_ops.evals.graders import judge_usage
from batch_ops.jsonl import write_requests
from batch_ops.models import ResultLine


def chat(text: str, prompt_tokens: int = 10) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2}}


def said(custom_id: str, text: str) -> ResultLine:
    return ResultLine(custom_id=custom_id, response={"status_code": 200, "body": chat(text)})  # type: ignore[arg-type]


def failed(custom_id: str, code: str) -> ResultLine:
    return ResultLine(custom_id=custom_id, error={"code": code, "message": code})  # type: ignore[arg-type]


ITEMS = [EvalItem(id=f"q{i}", input=f"{i}+0?", expected=str(i), category="even" if i % 2 == 0 else "odd",
                  metadata={"source": f"s{i // 3}"}) for i in range(6)]


def test_failed_requests_count_apart_and_never_raise_the_score() -> None:
    everyone = [said("q0", "0"), said("q1", "1"), said("q2", "9"), said("q3", "3"), said("q4", "9"), said("q5", "5")]
    full = model_record(grade_answers(ITEMS, everyone, [Numeric()], model="m"), model="m", graders=[Numeric()])
    # The same model, but its two wrong answers never came back (expired, cancelled).
    outage = [*everyone[:2], failed("q2", "batch_expired"), everyone[3], failed("q4", "batch_cancelled"), everyone[5]]
    samples = grade_answers(ITEMS, outage, [Numeric()], model="m")
    rec = model_record(samples, model="m", graders=[Numeric()])
    assert [s.status for s in samples] == ["graded", "graded", "failed", "graded", "failed", "graded"]
    assert rec.overall.mean == full.overall.mean == pytest.approx(4 / 6)  # not better
    assert rec.answered is not None and rec.answered.mean == 1.0  # what it scored where it answered, said apart
    counts = rec.result_counts
    assert (counts.total, counts.passed, counts.failed, counts.errored, counts.expired, counts.cancelled) == (
        6, 4, 0, 2, 1, 1)
    assert not rec.complete and full.complete
    assert rec.graders[0].model_dump(include={"name", "passed", "failed", "errored"}) == {
        "name": "numeric", "passed": 4, "failed": 0, "errored": 2}
    record = run_record(run_id="r", eval_set=read_eval_set(), models=[rec], graders=[Numeric()])
    assert record.gate is not None and record.gate.status == "incomplete"
    assert "2 requests failed (1 expired, 1 cancelled)" in record.gate.reason
    assert record.to_openai_report()["result_counts"] == {"total": 6, "passed": 4, "failed": 0, "errored": 2,
                                                          "unparsed": 0}


def test_several_graders_per_category_intervals_and_clusters() -> None:
    def short(answer: str, item: EvalItem) -> bool:
        return len(answer) <= 1

    graders = [Numeric(), PythonGrader(short), Exact(name="exact")]
    results = [said("q0", "0"), said("q1", "1.0"), said("q2", "2"), said("q3", "x"), said("q4", "4"), said("q5", "5")]
    samples = grade_answers(ITEMS, results, graders, model="m")
    q1 = samples[1]
    assert q1.scores == {"numeric": 1.0, "short": 0.0, "exact": 0.0} and q1.score == pytest.approx(1 / 3)
    assert not q1.passed and q1.outcome == "failed"  # a sample passes when every grader passes it
    rec = model_record(samples, model="m", graders=graders, cluster="source")
    assert set(rec.by_category) == {"even", "odd"} and rec.by_category["even"].n == 3
    # A sample's score is the mean of its graders' scores: odd = (1/3 + 1/3 + 1) / 3
    assert rec.by_category["even"].mean == 1.0 and rec.by_category["odd"].mean == pytest.approx(5 / 9)
    assert rec.overall.method == "clustered_stderr" and rec.overall.cluster == "source"
    boot = model_record(samples, model="m", graders=graders, ci="bootstrap", seed=5)
    assert boot.overall.method == "bootstrap" and boot.overall == model_record(
        samples, model="m", graders=graders, ci="bootstrap", seed=5).overall


def test_epochs_pass_at_k_and_item_level_intervals() -> None:
    # Two items, three epochs: q0 right 2 of 3, q1 right 0 of 3.
    items = ITEMS[:2]
    answers = {"q0__e1": "0", "q0__e2": "7", "q0__e3": "0", "q1__e1": "9", "q1__e2": "9", "q1__e3": "9"}
    samples = grade_answers(items, [said(k, v) for k, v in answers.items()], [Numeric()], model="m", epochs=3)
    assert [(s.item_id, s.epoch) for s in samples][:3] == [("q0", 1), ("q0", 2), ("q0", 3)]
    rec = model_record(samples, model="m", pass_k=(1, 2, 3, 4))
    assert rec.epochs == 3 and rec.overall.n == 2  # items, not samples: epochs of one item are not independent
    assert rec.overall.mean == pytest.approx((2 / 3 + 0) / 2)
    # pass@1 = mean c/n = 1/3; pass@2 for q0 = 1 - C(1,2)/C(3,2) = 1; q1 = 0 -> 0.5; pass@3 = 0.5; k=4 > 3 epochs: none
    assert rec.pass_at_k == pytest.approx({1: 1 / 3, 2: 0.5, 3: 0.5})
    assert RunRecord.model_validate_json(run_record(run_id="r", eval_set=read_eval_set(), models=[rec])
                                         .to_json()).models[0].pass_at_k == rec.pass_at_k


def _rec(model: str, right: list[int], items: list[EvalItem]) -> Any:
    results = [said(i.id, i.expected if n in right else "wrong") for n, i in enumerate(items)]  # type: ignore[arg-type]
    return model_record(grade_answers(items, results, [Exact()], model=model), model=model, graders=[Exact()])


def test_comparisons_against_the_baseline_and_the_previous_run_and_the_gate() -> None:
    items = [EvalItem(id=f"q{i}", input="?", expected=f"a{i}") for i in range(40)]
    eval_set = read_eval_set()  # any set: only its name and hash go into the record
    yesterday = run_record(run_id="yesterday", eval_set=eval_set,
                           models=[_rec("big", list(range(36)), items), _rec("small", list(range(20)), items)])
    today_big = _rec("big", list(range(20)), items)  # lost 16 items it had right: a significant 40-point drop
    today_small = _rec("small", list(range(1, 21)), items)  # one item lost, one gained: noise
    today = run_record(run_id="today", eval_set=eval_set, models=[today_big, today_small], previous=yesterday,
                       baseline_model="big", min_drop=0.05)
    by = {(c.model, c.kind): c for c in today.comparisons}
    prev_big = by[("big", "previous_run")]
    assert (prev_big.n, prev_big.mean, prev_big.reference_mean, prev_big.reference) == (40, 0.5, 0.9, "yesterday")
    assert prev_big.diff == pytest.approx(-0.4) and prev_big.significant
    assert by[("small", "previous_run")].diff == 0.0 and not by[("small", "previous_run")].significant
    assert by[("small", "baseline_model")].reference == "big"
    assert today.gate is not None and today.gate.status == "fail" and today.gate.failing == ["big"]
    with pytest.raises(ScoreRegressionError, match=r"eval gate failed for big: big vs yesterday: 50\.0% from 90\.0%"):
        check_gate(today)
    # A previous run of another version of the set is not compared with, and the reason says so.
    other = yesterday.model_copy(update={"eval_set": yesterday.eval_set.model_copy(update={"hash": "sha256:other"})})
    fresh = run_record(run_id="today", eval_set=eval_set, models=[today_big], previous=other, min_drop=0.05)
    assert fresh.gate is not None and fresh.gate.status == "no_reference"
    assert "another version of the eval set" in fresh.gate.reason
    check_gate(fresh)


def _replay_line(custom_id: str, text: str | None, code: str | None = None) -> str:
    if text is None:
        return json.dumps({"id": f"r-{custom_id}", "custom_id": custom_id, "response": None,
                           "error": {"code": code, "message": code}})
    return json.dumps({"id": f"r-{custom_id}", "custom_id": custom_id, "response": {
        "status_code": 200, "request_id": "req", "body": chat(text, prompt_tokens=30)}, "error": None})


def test_answer_batch_then_judge_batch_on_the_local_server(
    make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    """The whole core path over real HTTP: a team's CSV set, the answer batch, a second batch of judge requests
    (two pinned judges), grades back, an unparsable judge answer counted apart, the record and its OpenAI shape."""
    csv = tmp_path / "team.csv"
    csv.write_text("id,input,expected,category\n"
                   "q1,Capital of Peru?,Lima,geo\nq2,Capital of Chad?,N'Djamena,geo\n"
                   "q3,Largest planet?,Jupiter,space\nq4,Red planet?,Mars,space\n")
    eval_set = read_eval_set(csv, template="Answer in one word. {input}")
    judge = ModelGraded(judges=["judge-a-2026-01", "judge-b-2026-01"], template="closed_qa")
    graders = [Exact(), judge]
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("\n".join([
        # the model's answers (q4 is never recorded: the server answers 404 replay_not_found)
        _replay_line("q1", "Lima"), _replay_line("q2", "Ndjamena"), _replay_line("q3", "Jupiter"),
        # the judges' answers
        _replay_line("q1__j1", "The submission names Lima.\nGRADE: C"), _replay_line("q1__j2", "GRADE: C"),
        _replay_line("q2__j1", "Same city, other spelling.\nGRADE: C"), _replay_line("q2__j2", "GRADE: C"),
        _replay_line("q3__j1", "I am not sure what to say."), _replay_line("q3__j2", "Hard to tell."),
    ]) + "\n")
    with make_server(engine="replay", replay_files=(str(recorded),)) as url, \
            BatchClient(api_key="sk-local-dev-7f3a", base_url=url) as client:
        write_requests(eval_set.requests("model-x"), tmp_path / "answers.jsonl", endpoint="/v1/chat/completions")
        answers = client.batches.wait(client.submit(tmp_path / "answers.jsonl", endpoint="/v1/chat/completions").id,
                                      poll_interval=0.1)
        results = list(client.results(answers))
        samples = grade_answers(eval_set, results, graders, model="model-x")
        assert [s.verdicts["judge"].status for s in samples if s.status != "failed"] == ["pending"] * 3
        batches = judge.judge_batches(samples, {i.id: i for i in eval_set.items})
        # 3 answers x 2 judges, one batch per judge model (a batch file takes one model); the failed q4 goes to none
        assert {m: [r.custom_id for r in reqs] for m, reqs in batches.items()} == {
            "judge-a-2026-01": ["q1__j1", "q2__j1", "q3__j1"], "judge-b-2026-01": ["q1__j2", "q2__j2", "q3__j2"]}
        judge_results, judge_ids = [], []
        for n, reqs in enumerate(batches.values()):
            write_requests(reqs, tmp_path / f"judge{n}.jsonl", endpoint="/v1/chat/completions")
            judged = client.batches.wait(client.submit(tmp_path / f"judge{n}.jsonl",
                                                       endpoint="/v1/chat/completions").id, poll_interval=0.1)
            judge_results += list(client.results(judged))
            judge_ids.append(judged.id)
    samples = apply_judge(samples, judge, judge.grades_from_judge(judge_results))
    rows = {s.item_id: s for s in samples}
    assert (rows["q1"].status, rows["q1"].passed) == ("graded", True)
    assert (rows["q2"].status, rows["q2"].scores) == ("graded", {"exact": 0.0, "judge": 1.0})  # judge passes it
    assert not rows["q2"].passed  # ... exact does not: not every grader passed
    assert (rows["q3"].status, rows["q3"].error_code) == ("unparsed", "judge_unparsed")
    assert rows["q3"].score is None and rows["q3"].passed is None  # never a pass or a fail
    assert (rows["q4"].status, rows["q4"].error_code) == ("failed", "replay_not_found")
    rec = model_record(samples, model="model-x", graders=graders, usage=usage_of(results),
                       judge_usage=judge_usage(judge_results), batch_ids=[answers.id, *judge_ids])
    assert rec.result_counts.model_dump(include={"passed", "failed", "errored", "unparsed"}) == {
        "passed": 1, "failed": 1, "errored": 1, "unparsed": 1}
    assert rec.overall.mean == (1 + 0.5 + 0 + 0) / 4 and not rec.complete  # q2 half: exact 0, judge 1
    judge_row = next(g for g in rec.graders if g.name == "judge")
    assert (judge_row.passed, judge_row.unparsed, judge_row.judge_models) == (
        2, 1, ["judge-a-2026-01", "judge-b-2026-01"])
    assert rec.usage.input_tokens == 3 * 30 and rec.judge_usage is not None and rec.judge_usage.requests == 6
    record = run_record(run_id="night-1", eval_set=eval_set, models=[rec], graders=graders)
    report = record.to_openai_report()
    assert report["result_counts"] == {"total": 4, "passed": 1, "failed": 1, "errored": 1, "unparsed": 1}
    assert [u["model_name"] for u in report["per_model_usage"]] == ["model-x", "judge-a-2026-01,judge-b-2026-01"]
    assert record.graders[1]["judges"] == ["judge-a-2026-01", "judge-b-2026-01"]
    assert RunRecord.from_json(record.to_json()) == record


def test_judge_ids_with_epochs_and_a_shared_judge_batch() -> None:
    """Several epochs and several models in one judge batch: ids stay within Anthropic's [A-Za-z0-9_-]{1,64}
    and every grade finds its sample."""
    import re

    items = ITEMS[:2]
    judge = ModelGraded(judges=["j-2026-01"], template="rubric", criterion="Says {expected}")
    answers = [said(f"q{i}__e{e}", str(i)) for i in range(2) for e in (1, 2)]
    by_model = {m: grade_answers(items, answers, [judge], model=m, epochs=2) for m in ("big", "small")}
    requests = [r for m, samples in by_model.items()
                for r in judge.judge_requests(samples, {i.id: i for i in items}, prefix=f"{m}__")]
    assert [r.custom_id for r in requests][:2] == ["big__q0__e1__j1", "big__q0__e2__j1"]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", r.custom_id) for r in requests)
    replies = [said(r.custom_id, "GRADE: C" if r.custom_id.startswith("big") else "GRADE: P") for r in requests]
    for m, samples in by_model.items():
        graded = apply_judge(samples, judge, judge.grades_from_judge(replies, prefix=f"{m}__"))
        assert [(s.custom_id, s.score) for s in graded] == [
            (f"q{i}__e{e}", 1.0 if m == "big" else 0.5) for i in range(2) for e in (1, 2)]
    # A judge grade never read leaves the sample errored (judge_missing), not passed or failed.
    missing = apply_judge(by_model["big"], judge, {})
    assert {(s.status, s.error_code) for s in missing} == {("errored", "judge_missing")}

"""Graders: deterministic with explicit normalisation, a user's function, and model-graded judging."""

from __future__ import annotations

from typing import Any

import pytest

from batch_ops.errors import ConfigurationError, InputValidationError
from batch_ops.evals import EvalItem
from batch_ops.evals.graders import (
    F1,
    Exact,
    Grade,
    Includes,
    ItemScorer,
    JsonMatch,
    ModelGraded,
    Normalise,
    Numeric,
    PythonGrader,
    Regex,
    check_graders,
)
from batch_ops.evals.record import SampleResult
from batch_ops.models import ResultLine


def item(expected: str | None = "Paris", **kw: Any) -> EvalItem:
    return EvalItem(id="q", input="?", expected=expected, **kw)


@pytest.mark.parametrize(
    ("grader", "expected", "answer", "passed"),
    [
        (Exact(), "Paris", "  paris ", True),
        (Exact(), "Paris", "Paris.", False),  # punctuation counts unless asked
        (Exact(Normalise(punctuation=True)), "Paris", "Paris.", True),
        (Exact(Normalise.NONE), "Paris", "paris", False),
        (Exact(Normalise.SQUAD), "The Beatles", "beatles!", True),
        (Exact(Normalise(accents=True)), "Sao Paulo", "São Paulo", True),
        (Exact(), "Sao Paulo", "São Paulo", False),
        (Includes(), "iron", "The element is Iron.", True),
        (Includes(Normalise.NONE), "iron", "The element is Iron.", False),
        (Includes(whole_words=True), "cat", "concatenate", False),
        (Regex(r"ANSWER:\s*([A-D])"), "C", "so... ANSWER: c", True),
        (Regex(r"ANSWER:\s*([A-D])"), "C", "ANSWER: B", False),
        (Regex(r"^\d{4}-\d{2}-\d{2}$"), None, "2026-12-06", True),
        (Regex(r"\b{expected}\b"), "3.14", "pi is 3.14 roughly", True),
        (Regex(r"\b{expected}\b"), "3.14", "pi is 3x14", False),  # the expected answer is escaped
        (Numeric(), "1875", "1,875", True),
        (Numeric(), "-12", "It is -12.", True),
        (Numeric(), "12", "twelve", False),
        (Numeric(tolerance=0.01), "35.41", "about 35.415", True),
        (Numeric(tolerance=0.01), "35.41", "35.39", False),
        (Numeric(tolerance=0.05, relative=True), "200", "$209", True),
        (Numeric(take="last"), "7", "3 + 4 = 7", True),
        (Numeric(), "50", "50%", True),
        (JsonMatch(), '{"a": 1, "b": "X"}', '{"b": "x", "a": 1.0}', True),
        (JsonMatch(fields=["a"]), '{"a": 1, "b": 2}', 'Here: ```json\n{"a": 1, "b": 3}\n```', True),
        (JsonMatch(), '{"a": 1}', "no json here", False),
        (F1(), "a cat sat down", "the cat sat", True),
        (F1(threshold=0.9), "a cat sat down", "the cat sat", False),
    ],
)
def test_deterministic_graders(grader: Any, expected: str | None, answer: str, passed: bool) -> None:
    grade = grader.grade(answer, item(expected))
    assert grade.status == "graded" and grade.passed is passed


def test_scores_and_descriptions_say_what_equal_meant() -> None:
    assert F1().grade("the cat sat", item("a cat sat down")).score == pytest.approx(0.8)  # P 1, R 2/3
    partial = JsonMatch(fields=["a", "b.c", "d"]).grade('{"a": 1, "b": {"c": 2}}',
                                                        item('{"a": 1, "b": {"c": 3}, "d": 0}'))
    assert partial.score == pytest.approx(1 / 3) and partial.detail == "differs: b.c, d" and not partial.passed
    assert Exact().describe() == {"name": "exact", "kind": "exact", "normalise": {
        "case": True, "whitespace": True, "punctuation": False, "articles": False, "accents": False}}
    assert Numeric().grade("7", item("seven")).status == "errored"  # the set's fault, counted apart


def test_json_schema_grader() -> None:
    schema = {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}, "required": ["qty"]}
    g = JsonMatch(schema=schema, name="shape")
    assert g.grade('{"qty": 3}', item(None)).passed
    bad = g.grade('{"qty": 0}', item(None))
    assert not bad.passed and bad.detail == "schema: 0 is less than the minimum of 1"
    with pytest.raises(ConfigurationError, match="not a JSON schema"):
        JsonMatch(schema={"type": "no-such-type"})


def test_python_grader_returns_and_failures() -> None:
    def length_ok(answer: str, it: EvalItem, limit: int = 10) -> dict[str, Any]:
        return {"score": 1.0 if len(answer) <= limit else 0.25, "reason": f"{len(answer)} chars"}

    g = PythonGrader(length_ok, threshold=0.5, options={"limit": 5})
    assert g.name == "length_ok" and g.grade("Lima", item()) == Grade(status="graded", score=1.0, passed=True,
                                                                      detail="4 chars")
    assert not g.grade("Lima, Peru", item()).passed
    assert PythonGrader(lambda a, i: a == i.expected, name="eq").grade("Paris", item()).passed
    assert PythonGrader(lambda a, i: {"score": 0.2, "passed": True}).grade("x", item()).passed  # its own verdict
    raised = PythonGrader(lambda a, i: int(a), name="strict").grade("x", item())
    assert raised.status == "errored" and raised.detail is not None and raised.detail.startswith("ValueError")
    assert PythonGrader(lambda a, i: "yes").grade("x", item()).status == "errored"
    assert PythonGrader("operator:contains").grade("abc", item("b")).status == "errored"  # wrong arity: the sample's
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        PythonGrader("no_such_module_x:fn")
    with pytest.raises(ConfigurationError, match=r"package\.module:function"):
        PythonGrader("just_a_name")


def test_item_scorer_keeps_the_shipped_per_item_scoring() -> None:
    g = ItemScorer()
    assert g.grade("1,875", item("1875", scorer="numeric")).passed
    assert g.grade("It is Iron", item("iron", scorer="contains")).passed
    with pytest.raises(ConfigurationError, match="register_scorer"):
        g.grade("x", item("x", scorer="fuzzy"))


def test_check_graders_refuses_before_spending() -> None:
    items = [EvalItem(id="a", input="?", expected="1"), EvalItem(id="b", input="?")]
    with pytest.raises(InputValidationError) as err:
        check_graders([Exact(), Exact(), Regex("x", name="r")], items)
    assert [(p.rule, p.line) for p in err.value.problems] == [("duplicate_grader", None), ("missing_expected", 2)]
    check_graders([Regex("x"), JsonMatch(), PythonGrader(lambda a, i: True),
                   ModelGraded(judges=["j"], template="rubric", criterion="Polite and under 50 words.")], items)
    with pytest.raises(InputValidationError, match="grader 'judge' needs"):
        check_graders([ModelGraded(judges=["j"])], items)  # the default criterion quotes the expected answer
    with pytest.raises(InputValidationError, match="grader 'regex' needs"):
        check_graders([Regex(r"\b{expected}\b")], items)


def said(custom_id: str, text: str) -> ResultLine:
    return ResultLine(custom_id=custom_id, response={"status_code": 200, "body": {  # type: ignore[arg-type]
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}})


def failed(custom_id: str, code: str = "batch_expired") -> ResultLine:
    return ResultLine(custom_id=custom_id, error={"code": code, "message": "x"})  # type: ignore[arg-type]


def test_judge_requests_are_a_pinned_second_batch() -> None:
    judge = ModelGraded(judges=["judge-2026-01-01"], template="factuality", name="fact")
    items = {"q1": EvalItem(id="q1", input="Who wrote Dune?", expected="Frank Herbert"),
             "q2": EvalItem(id="q2", input="?", expected="x")}
    samples = [SampleResult(custom_id="q1", item_id="q1", model="m", status="graded", answer="Herbert."),
               SampleResult(custom_id="q2", item_id="q2", model="m", status="failed", error_code="batch_expired")]
    reqs = judge.judge_requests(samples, items, prefix="m1__")
    assert [(r.custom_id, r.model, r.temperature) for r in reqs] == [("m1__q1__j1", "judge-2026-01-01", 0.0)]
    prompt = reqs[0].messages[0]["content"]
    assert "[Expert]: Frank Herbert" in prompt and "[Submission]: Herbert." in prompt and "GRADE: X" in prompt
    grades = judge.grades_from_judge([said("m1__q1__j1", "They disagree.\nGRADE: D"), said("other", "GRADE: A")],
                                     prefix="m1__")
    assert grades == {"q1": Grade(status="graded", score=0.0, passed=False, detail="grade D")}
    assert judge.grades_from_judge([said("m1__q1__j1", "GRADE: E")], prefix="m1__")["q1"].passed  # E: irrelevant diff
    with pytest.raises(ConfigurationError, match="pin a dated model"):
        ModelGraded(judges=["gpt-4o-latest"])
    with pytest.raises(ConfigurationError, match="no judge model"):
        ModelGraded(judges=[])
    with pytest.raises(ConfigurationError, match="second batch"):
        judge.grade("x", items["q1"])


@pytest.mark.parametrize(
    ("replies", "status", "score", "detail"),
    [
        (["GRADE: C", "GRADE: C", "GRADE: I"], "graded", 1.0, "votes C, C, I"),
        (["GRADE: I", "no idea", "GRADE: C"], "graded", 0.0, "votes I, C (1 unparsed, 0 failed)"),  # tie: lower
        (["GRADE: P", None, "GRADE: P"], "graded", 0.5, "votes P, P (0 unparsed, 1 failed)"),
        (["I would say correct", "Grade: maybe", "C"], "unparsed", None, None),
        ([None, None, None], "errored", None, "judge request failed: batch_expired, batch_expired, batch_expired"),
        (["grade: c", "**GRADE:** I", "GRADE: I\nActually GRADE: C"], "graded", 1.0, "votes C, I, C"),
    ],
)
def test_several_judges_majority_and_unparsed_apart(replies: list[str | None], status: str, score: float | None,
                                                    detail: str | None) -> None:
    judge = ModelGraded(judges=["a", "b", "c"], template="rubric", criterion="Correct: {expected}")
    results = [said(f"q__j{k}", r) if r is not None else failed(f"q__j{k}") for k, r in enumerate(replies, 1)]
    grade = judge.grades_from_judge(results)["q"]
    assert grade.status == status and grade.score == score
    if detail is not None:
        assert grade.detail == detail
    assert grade.passed is (None if status != "graded" else score == 1.0)  # P is partial credit: not a pass


def test_graders_from_json_config_and_back() -> None:
    from batch_ops.evals import grader_from_config, graders_from_config
    from batch_ops.evals.graders import JudgeTemplate

    specs = [
        {"kind": "exact", "normalise": "squad"},
        {"kind": "includes", "normalise": {"case": True, "accents": True}, "whole_words": True, "name": "has"},
        {"kind": "regex", "pattern": r"ANSWER:\s*(\w)"},
        {"kind": "numeric", "tolerance": 0.01, "relative": True},
        {"kind": "json_match", "fields": ["a"], "schema": {"type": "object"}},
        {"kind": "f1", "threshold": 0.7},
        {"kind": "python", "function": "operator:eq", "name": "same"},
        {"kind": "model_graded", "judges": ["j-2026-01"], "template": "factuality", "name": "fact"},
        {"kind": "model_graded", "judges": ["j-2026-01", "k-2026-01"], "name": "custom", "template": {
            "text": "Is {answer} polite? GRADE: Y or N", "grades": {"Y": 1.0, "N": 0.0}}},
    ]
    graders = graders_from_config(specs)
    assert [g.kind for g in graders] == ["exact", "includes", "regex", "numeric", "json_match", "f1", "python",
                                        "model_graded", "model_graded"]
    assert graders[0].normalise == Normalise.SQUAD and graders[1].normalise.accents
    assert graders[6].describe()["function"] == "operator:eq" and graders[6].grade("x", item("x")).passed is False
    assert isinstance(graders[8].template, JudgeTemplate) and graders[8].parse("GRADE: y") == "Y"
    # A record's description builds the same grader again.
    for g in graders:
        if g.kind != "python":
            again = grader_from_config(g.describe())
            assert again.describe() == g.describe()
    for bad, message in [({"kind": "fuzzy"}, "unknown kind 'fuzzy'"),
                         ({"kind": "exact", "tolerance": 1}, r"unknown options \['tolerance'\]"),
                         ({"kind": "exact", "normalise": "loose"}, "no normalisation preset 'loose'"),
                         ({"kind": "python"}, "no function"),
                         ({"kind": "model_graded", "judges": ["gpt-4o-latest"]}, "pin a dated model")]:
        with pytest.raises(ConfigurationError, match=message):
            grader_from_config(bad)

"""The eval pipeline's shared pieces: scoring, reports, regression gate, and a replayed run."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from batch_ops import BatchClient
from batch_ops.evals import (
    SAMPLE_RUN,
    EvalItem,
    ScoreRegressionError,
    check_regression,
    extract_answer,
    load_eval_set,
    previous_score,
    read_history,
    score_results,
    write_report,
    write_request_file,
)
from batch_ops.jsonl import validate_file
from batch_ops.models import ResultLine


def chat(content: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


def ok(custom_id: str, content: str) -> ResultLine:
    return ResultLine(custom_id=custom_id, response={"status_code": 200, "body": chat(content)})  # type: ignore[arg-type]


def test_shipped_set_is_large_unique_and_builds_a_valid_request_file(tmp_path: Path) -> None:
    items = load_eval_set()
    assert len(items) >= 200
    assert len({i.id for i in items}) == len(items)
    assert {i.scorer for i in items} == {"exact", "contains", "numeric"}
    report = write_request_file(tmp_path / "req.jsonl", items=items)
    assert report.lines == len(items)
    validate_file(tmp_path / "req.jsonl", endpoint="/v1/chat/completions")


@pytest.mark.parametrize(
    ("scorer", "expected", "answer", "tolerance", "verdict"),
    [
        ("exact", "Buenos Aires", "buenos aires.", 0, True),
        ("exact", "Paris", "The capital is Paris", 0, False),
        ("contains", "iron", "The element is Iron.", 0, True),
        ("contains", "tin", "The element is titanium.", 0, False),
        ("numeric", "1875", "1,875", 0, True),
        ("numeric", "35.41", "35.39", 0.01, False),
        ("numeric", "35.41", "about 35.415", 0.01, True),
        ("numeric", "-12", "It is -12.", 0, True),
        ("numeric", "12", "twelve", 0, False),
    ],
)
def test_scorers(scorer: str, expected: str, answer: str, tolerance: float, verdict: bool) -> None:
    item = EvalItem(id="q", question="?", expected=expected, scorer=scorer, tolerance=tolerance)
    run = score_results([item], [ok("q", answer)])
    assert (run.correct == 1) is verdict


def test_failed_and_missing_requests_count_against_the_score() -> None:
    items = [EvalItem(id=f"q{i}", question="?", expected="4", scorer="numeric") for i in range(4)]
    failed = ResultLine(custom_id="q2", response={"status_code": 500, "body": {"error": {"code": "server_error"}}})  # type: ignore[arg-type]
    run = score_results(items, [ok("q0", "4"), ok("q1", "5"), failed])
    assert (run.correct, run.wrong, run.failed, run.total) == (1, 1, 2, 4)
    assert run.score == 0.25 and run.accuracy_answered == 0.5
    assert {r.id: r.error_code for r in run.items if r.outcome == "failed"} == {"q2": "server_error",
                                                                                "q3": "missing_result"}
    assert run.usage.input_tokens == 20


def test_extract_answer_across_endpoints() -> None:
    assert extract_answer(chat("x")) == "x"
    assert extract_answer({"output_text": "y"}) == "y"
    assert extract_answer({"output": [{"content": [{"type": "output_text", "text": "z"}]}]}) == "z"
    assert extract_answer({"choices": [{"text": "w"}]}) == "w"
    assert extract_answer({"data": []}) is None


def test_unknown_scorer_names_the_fix() -> None:
    with pytest.raises(ValueError, match="register_scorer"):
        score_results([EvalItem(id="q", question="?", expected="1", scorer="fuzzy")], [ok("q", "1")])


def test_reports_history_chart_and_regression_gate(tmp_path: Path) -> None:
    items = [EvalItem(id=f"q{i}", question="?", expected="4", scorer="numeric") for i in range(10)]
    good = score_results(items, [ok(f"q{i}", "4") for i in range(9)])
    worse = score_results(items, [ok(f"q{i}", "4") for i in range(7)])
    assert previous_score(tmp_path) is None
    first = write_report(good, report_dir=tmp_path, run_id="2026-11-20", pipeline="airflow",
                         batch={"batch_id": "batch_1", "status": "completed"})
    assert previous_score(tmp_path, pipeline="airflow") == 0.9
    check_regression(current=worse.score, previous=0.9, max_drop=0.25)  # 20 points: within 25
    with pytest.raises(ScoreRegressionError, match=r"90\.0% to 70\.0%"):
        check_regression(current=worse.score, previous=previous_score(tmp_path, pipeline="airflow"), max_drop=0.05)
    second = write_report(worse, report_dir=tmp_path, run_id="2026-11-21", pipeline="airflow")
    assert "-20.0 points vs previous run (90.0%)" in second.markdown.read_text()
    assert "first recorded run" in first.markdown.read_text()
    assert [h["score"] for h in read_history(tmp_path)] == [0.9, 0.7]
    doc = json.loads(second.json.read_text())
    assert doc["failed"] == 3 and len(doc["items"]) == 10
    assert second.chart is not None and second.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "latest.md").read_text() == second.markdown.read_text()


def test_replayed_run_is_scored_from_the_servers_responses(
    make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    items = load_eval_set()
    path = tmp_path / "req.jsonl"
    write_request_file(path, items=items)
    with make_server(engine="replay", replay_files=(str(SAMPLE_RUN),)) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        batch = client.batches.wait(client.submit(path, endpoint="/v1/chat/completions").id, poll_interval=0.1)
        run = score_results(items, client.results(batch, input_path=path))
    # The recorded sample run is right on most items and wrong on some: a real score, not 0 or 1.
    assert run.failed == 0 and run.total == len(items)
    assert 0.75 < run.score < 0.95
    assert run.echo_answers == 0 and "warning" not in run.summary()


def test_a_run_against_the_echo_engine_says_so_plainly(
    make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    """The echo engine repeats prompts: the score (0%) means nothing, and the summary and the report say
    so and name the fix, instead of reporting a plain 0.0% that looks like a broken model."""
    from batch_ops.evals import score_and_report

    items = load_eval_set()[:20]
    path = tmp_path / "req.jsonl"
    write_request_file(path, items=items)
    with make_server() as url, BatchClient(api_key="sk-local-dev-7f3a", base_url=url) as client:
        batch = client.batches.wait(client.submit(path, endpoint="/v1/chat/completions").id, poll_interval=0.1)
        output = client.files.download(batch.output_file_id, tmp_path / "out.jsonl")
    summary = score_and_report(request_path=path, output_path=output, error_path=None, report_dir=tmp_path / "reports",
                               run_id="echo-1", pipeline="test", max_drop=1.0)
    assert summary["score"] == 0.0
    assert "20 of 20 answers came from the local server's echo engine" in summary["warning"]
    assert "batch-ops serve --eval-sample" in summary["warning"]
    report = (tmp_path / "reports" / "latest.md").read_text()
    assert "> **Warning:**" in report and "echo engine" in report


def test_serve_eval_sample_replays_the_recorded_run() -> None:
    from batch_ops.server.options import ServerOptions

    options = ServerOptions.from_argv(["--eval-sample", "--port", "0"])
    assert options.engine == "replay" and options.replay_files == (str(SAMPLE_RUN),)
    with pytest.raises(ValueError, match="cannot go with --engine echo"):
        ServerOptions.from_argv(["--eval-sample", "--engine", "echo"])

"""The eval run record: JSON round trip, OpenAI's report shape, and the shipped fixture file."""

from __future__ import annotations

import json
from pathlib import Path

from batch_ops.evals.record import ResultCounts, RunRecord, SampleResult, example_run_record

FIXTURE = Path(__file__).parent / "data" / "eval_run_record.json"


def test_round_trip_keeps_every_field_and_unknown_ones() -> None:
    run = example_run_record()
    back = RunRecord.from_json(run.to_json())
    assert back == run
    doc = json.loads(run.to_json())
    doc["models"][0]["added_later"] = {"x": 1}  # a newer writer's field survives an older reader
    again = RunRecord.model_validate(doc)
    assert json.loads(again.to_json())["models"][0]["added_later"] == {"x": 1}


def test_the_fixture_file_is_the_example_record() -> None:
    # Regenerate with: .venv/bin/python -c "from batch_ops.evals.record import example_run_record as e; \
    #   open('tests/data/eval_run_record.json','w').write(e().to_json() + '\n')"
    assert RunRecord.from_json(FIXTURE.read_text()) == example_run_record()


def test_statuses_map_to_openai_counts() -> None:
    def s(status: str, **kw: object) -> SampleResult:
        return SampleResult(custom_id="x", item_id="x", model="m", status=status, **kw)  # type: ignore[arg-type]

    rows = [s("graded", score=1.0, passed=True), s("graded", score=0.0, passed=False),
            s("failed", error_code="batch_expired"), s("failed", error_code="batch_cancelled"),
            s("errored", error_code="grader_raised"), s("unparsed", error_code="judge_unparsed")]
    counts = ResultCounts.tally(rows)
    assert counts.model_dump() == {"total": 6, "passed": 1, "failed": 1, "errored": 3, "unparsed": 1,
                                   "expired": 1, "cancelled": 1}
    assert not counts.complete


def test_openai_report_shape() -> None:
    report = example_run_record().to_openai_report()
    assert report["result_counts"] == {"total": 36, "passed": 24, "failed": 10, "errored": 1, "unparsed": 1}
    assert report["status"] == "partial"  # model-c is incomplete
    rows = report["per_testing_criteria_results"]
    assert {r["testing_criteria"] for r in rows} >= {"model-a/exact", "model-c/judge"}
    assert [u["model_name"] for u in report["per_model_usage"]] == ["model-a", "model-b", "model-c", "judge-1"]
    # model-c: 10 graded + 1 unparsed; its expired request never reached the judge
    assert report["per_model_usage"][-1]["invocation_count"] == 12 + 12 + 11
    one = report["runs"][2]
    assert one["object"] == "eval.run" and one["result_counts"]["unparsed"] == 1
    assert set(one) >= {"result_counts", "per_testing_criteria_results", "per_model_usage"}
    json.dumps(report)  # plain JSON all the way down

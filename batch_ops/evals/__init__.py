"""The nightly eval pipeline's shared pieces: eval set, request building, scoring, reports.

The Airflow DAG (``dags/nightly_eval.py``) and the Prefect flow (``flows/nightly_eval.py``)
both call these, so the two pipelines score and report identically.

Examples:
    >>> from batch_ops.evals import load_eval_set, score_results
    >>> from batch_ops.models import ResultLine
    >>> items = load_eval_set()[:2]
    >>> answer = {"choices": [{"message": {"role": "assistant", "content": items[0].expected}}]}
    >>> run = score_results(items, [ResultLine(custom_id=items[0].id,
    ...     response={"status_code": 200, "body": answer})])
    >>> run.correct, run.failed
    (1, 1)
"""

from __future__ import annotations

from batch_ops.evals.dataset import (
    DEFAULT_EVAL_SET,
    DEFAULT_MODEL,
    SAMPLE_RUN,
    EvalItem,
    build_requests,
    load_eval_set,
    write_request_file,
)
from batch_ops.evals.pipeline import DEFAULT_MAX_DROP, prepare_requests, run_dir, score_and_report
from batch_ops.evals.record import (
    Aggregate,
    Comparison,
    Cost,
    EvalSetInfo,
    GateDecision,
    GraderResult,
    ModelRecord,
    ResultCounts,
    RunRecord,
    SampleResult,
    TokenUsage,
    example_run_record,
)
from batch_ops.evals.report import (
    ReportPaths,
    ScoreRegressionError,
    check_regression,
    previous_score,
    read_history,
    write_report,
)
from batch_ops.evals.scoring import SCORERS, EvalRun, ItemScore, extract_answer, register_scorer, score_results

__all__ = [
    "Aggregate",
    "Comparison",
    "Cost",
    "EvalSetInfo",
    "GateDecision",
    "GraderResult",
    "ModelRecord",
    "ResultCounts",
    "RunRecord",
    "SampleResult",
    "TokenUsage",
    "example_run_record",
    "DEFAULT_EVAL_SET",
    "DEFAULT_MAX_DROP",
    "DEFAULT_MODEL",
    "SAMPLE_RUN",
    "SCORERS",
    "EvalItem",
    "EvalRun",
    "ItemScore",
    "ReportPaths",
    "ScoreRegressionError",
    "build_requests",
    "check_regression",
    "extract_answer",
    "load_eval_set",
    "prepare_requests",
    "previous_score",
    "read_history",
    "register_scorer",
    "run_dir",
    "score_and_report",
    "score_results",
    "write_report",
    "write_request_file",
]

"""The nightly eval pipeline's shared pieces: eval sets, graders, statistics, the run record, reports.

The Airflow DAGs (``dags/nightly_eval.py``, ``dags/eval_matrix.py``) and the Prefect flows
(``flows/``) call these, so the pipelines score and report identically:

* a team's own eval set: :func:`read_eval_set` (JSONL or CSV, local or object storage, a
  :class:`PromptTemplate`, epochs) → neutral chat requests for any provider;
* graders (:mod:`batch_ops.evals.graders`): deterministic with explicit normalisation, a Python
  function, and :class:`ModelGraded` judges run as a second batch;
* :mod:`batch_ops.evals.grading`: results → samples → a :class:`ModelRecord` per model →
  the :class:`RunRecord` with comparisons and the gate (:mod:`batch_ops.evals.stats`);
* the shipped single-model pipeline (:func:`score_results`, :func:`score_and_report`), as before.

Examples:
    >>> from batch_ops.evals import load_eval_set, score_results
    >>> from batch_ops.models import ResultLine
    >>> items = load_eval_set()[:2]
    >>> answer = {"choices": [{"message": {"role": "assistant", "content": items[0].expected}}]}
    >>> run = score_results(items, [ResultLine(custom_id=items[0].id,
    ...     response={"status_code": 200, "body": answer})])
    >>> run.correct, run.failed
    (1, 1)
    >>> record = model_record(grade_answers(items, [ResultLine(custom_id=items[0].id,
    ...     response={"status_code": 200, "body": answer})], [ItemScorer()], model="m"), model="m")
    >>> record.overall.mean, record.result_counts.errored, record.complete
    (0.5, 1, False)
"""

from __future__ import annotations

from batch_ops.evals.dataset import (
    DEFAULT_EVAL_SET,
    DEFAULT_MODEL,
    SAMPLE_RUN,
    EvalItem,
    EvalSet,
    PromptTemplate,
    build_requests,
    load_eval_set,
    parse_custom_id,
    read_eval_set,
    sample_custom_id,
    write_request_file,
)
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
    grader_from_config,
    graders_from_config,
)
from batch_ops.evals.grading import (
    apply_judge,
    check_gate,
    compare_to_baseline,
    compare_to_previous,
    grade_answers,
    item_scores,
    model_record,
    run_record,
    usage_of,
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
    Verdict,
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
from batch_ops.evals.stats import (
    aggregate,
    bootstrap_interval,
    clustered_interval,
    gate,
    mean_interval,
    mean_pass_at_k,
    paired,
    pass_at_k,
)

__all__ = [
    "Aggregate",
    "Comparison",
    "Cost",
    "DEFAULT_EVAL_SET",
    "DEFAULT_MAX_DROP",
    "DEFAULT_MODEL",
    "EvalItem",
    "EvalRun",
    "EvalSet",
    "EvalSetInfo",
    "Exact",
    "F1",
    "GateDecision",
    "Grade",
    "GraderResult",
    "Includes",
    "ItemScore",
    "ItemScorer",
    "JsonMatch",
    "ModelGraded",
    "ModelRecord",
    "Normalise",
    "Numeric",
    "PromptTemplate",
    "PythonGrader",
    "Regex",
    "ReportPaths",
    "ResultCounts",
    "RunRecord",
    "SAMPLE_RUN",
    "SCORERS",
    "SampleResult",
    "ScoreRegressionError",
    "TokenUsage",
    "Verdict",
    "aggregate",
    "apply_judge",
    "bootstrap_interval",
    "build_requests",
    "check_gate",
    "check_graders",
    "check_regression",
    "clustered_interval",
    "compare_to_baseline",
    "compare_to_previous",
    "example_run_record",
    "extract_answer",
    "gate",
    "grade_answers",
    "grader_from_config",
    "graders_from_config",
    "item_scores",
    "load_eval_set",
    "mean_interval",
    "mean_pass_at_k",
    "model_record",
    "paired",
    "parse_custom_id",
    "pass_at_k",
    "prepare_requests",
    "previous_score",
    "read_eval_set",
    "read_history",
    "register_scorer",
    "run_dir",
    "run_record",
    "sample_custom_id",
    "score_and_report",
    "score_results",
    "usage_of",
    "write_report",
    "write_request_file",
]

"""The nightly eval's steps, once, for both orchestrators.

``dags/nightly_eval.py`` (Airflow) and ``flows/nightly_eval.py`` (Prefect) are thin wrappers
around these two calls, with the batch run in between by each orchestrator's own adapter:

1. :func:`prepare_requests` — the request file for the eval set, in the run's work directory;
2. (the orchestrator runs the batch and downloads its output and error files);
3. :func:`score_and_report` — score, write the report, *then* gate on the previous run, so a
   regression fails the pipeline loudly with the report already on disk to explain it.

Example:
    >>> import tempfile
    >>> path = prepare_requests(work_dir=tempfile.mkdtemp(), run_id="manual__2026-11-21")
    >>> path.name, sum(1 for _ in path.open()) >= 200
    ('requests.jsonl', True)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from batch_ops.evals.dataset import DEFAULT_MODEL, load_eval_set, write_request_file
from batch_ops.evals.report import check_regression, previous_score, write_report
from batch_ops.evals.scoring import score_results
from batch_ops.results import join_results

__all__ = ["DEFAULT_MAX_DROP", "prepare_requests", "run_dir", "score_and_report"]

#: Fail the pipeline when the score falls more than this (a share: 0.05 = 5 points).
DEFAULT_MAX_DROP = float(os.environ.get("BATCH_OPS_EVAL_MAX_DROP", "0.05"))


def run_dir(work_dir: str | os.PathLike[str], run_id: str) -> Path:
    """The run's own directory (run ids such as ``scheduled__2026-11-21T00:00:00+00:00`` made safe)."""
    return Path(work_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def prepare_requests(
    *, work_dir: str | os.PathLike[str], run_id: str, eval_set: str | None = None, model: str = DEFAULT_MODEL
) -> Path:
    """Write the validated request file for the eval set; returns its path."""
    path = run_dir(work_dir, run_id) / "requests.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_request_file(path, items=load_eval_set(eval_set), model=model)
    return path


def score_and_report(
    *,
    request_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    error_path: str | os.PathLike[str] | None,
    report_dir: str | os.PathLike[str],
    run_id: str,
    pipeline: str,
    batch: dict[str, Any] | None = None,
    eval_set: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
) -> dict[str, Any]:
    """Score the joined results, write the report, then raise ScoreRegressionError on a drop.

    Returns the run's headline figures with the report paths and the previous score.
    """
    items = load_eval_set(eval_set)
    results = join_results(input_path=request_path, output_path=output_path or None, error_path=error_path or None)
    run = score_results(items, results)
    previous = previous_score(report_dir, pipeline=pipeline)
    paths = write_report(run, report_dir=report_dir, run_id=run_id, pipeline=pipeline, batch=batch)
    check_regression(current=run.score, previous=previous, max_drop=max_drop)
    return {**run.summary(), "previous_score": previous, "report": paths.as_dict()}

"""The nightly eval's steps, once, for both orchestrators.

``dags/nightly_eval.py`` (Airflow) and ``flows/nightly_eval.py`` (Prefect) are thin wrappers
around these two calls, with the batch run in between by each orchestrator's own adapter:

1. :func:`prepare_requests` — the request file for the eval set, in the run's work directory;
2. (the orchestrator runs the batch and downloads its output and error files);
3. :func:`score_and_report` — score, write the report, *then* gate on the previous run, so a
   regression fails the pipeline loudly with the report already on disk to explain it.

Every folder may be on object storage (``s3://bucket/eval/work``, an ``ObjectStoragePath``; see
:mod:`batch_ops.storage`), so that workers which share no disk pass the files between steps:
the request file is written there, the scored files are read from there, and the report and the
history are written back there. The history is read, appended to and put back whole: two runs
writing the same history at once could lose one line, so run one nightly eval at a time per
history (both pipelines do: ``max_active_runs=1``, one deployment).

Examples:
    >>> import tempfile
    >>> path = prepare_requests(work_dir=tempfile.mkdtemp(), run_id="manual__2026-11-21")
    >>> path.name, sum(1 for _ in path.open()) >= 200
    ('requests.jsonl', True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from batch_ops import storage
from batch_ops.evals.dataset import DEFAULT_MODEL, load_eval_set, write_request_file
from batch_ops.evals.report import check_regression, previous_score_in, read_history, write_report
from batch_ops.evals.scoring import score_results
from batch_ops.results import join_results
from batch_ops.storage import StorageTarget

__all__ = ["DEFAULT_MAX_DROP", "prepare_requests", "run_dir", "score_and_report"]

_log = logging.getLogger("batch_ops.evals")

#: Fail the pipeline when the score falls more than this (a share: 0.05 = 5 points).
DEFAULT_MAX_DROP = float(os.environ.get("BATCH_OPS_EVAL_MAX_DROP", "0.05"))


def run_dir(work_dir: StorageTarget, run_id: str) -> Any:
    """The run's own directory (run ids such as ``scheduled__2026-11-21T00:00:00+00:00`` made safe).

    Of the same kind as ``work_dir``: a local ``Path``, or a URL / path object on object storage.

    Examples:
        >>> run_dir("memory://bucket/eval/work", "scheduled__2026-11-21T00:00:00+00:00")
        'memory://bucket/eval/work/scheduled__2026-11-21T00_00_00_00_00'
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    where = storage.location(work_dir)
    return storage.join(work_dir, safe) if isinstance(where, storage.Location) else where / safe


def prepare_requests(
    *, work_dir: StorageTarget, run_id: str, eval_set: str | None = None, model: str = DEFAULT_MODEL
) -> Any:
    """Write the validated request file for the eval set; returns its path (or URL, on object storage)."""
    target = storage.join(run_dir(work_dir, run_id), "requests.jsonl")
    with storage.local_output(target) as path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_request_file(path, items=load_eval_set(eval_set), model=model)
    return target


def score_and_report(
    *,
    request_path: StorageTarget,
    output_path: StorageTarget | None,
    error_path: StorageTarget | None,
    report_dir: StorageTarget,
    run_id: str,
    pipeline: str,
    batch: dict[str, Any] | None = None,
    eval_set: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
) -> dict[str, Any]:
    """Score the joined results, write the report, then raise ScoreRegressionError on a drop.

    Returns the run's headline figures with the report paths (URLs, on object storage) and the
    previous score.
    """
    items = load_eval_set(eval_set)
    with contextlib.ExitStack() as stack:
        def local(target: StorageTarget | None) -> Path | None:
            return stack.enter_context(storage.local_copy(target)) if target else None

        requests = stack.enter_context(storage.local_copy(request_path))
        results = join_results(input_path=requests, output_path=local(output_path), error_path=local(error_path))
        run = score_results(items, results)
    history = read_history(report_dir)
    previous = previous_score_in(history, pipeline)
    # Written locally, then put back file by file: this run adds its own history object and
    # rewrites nobody else's (runs that finish together keep both records).
    with storage.local_folder(report_dir) as root:
        paths = write_report(run, report_dir=root, run_id=run_id, pipeline=pipeline, batch=batch, history=history)
    shown = paths.as_dict()
    if storage.is_remote(report_dir):  # name the files where they went, not the staging folder
        shown = {k: storage.display(storage.join(report_dir, *Path(v).relative_to(root).parts)) if v else None
                 for k, v in shown.items()}
    if run.echo_warning:  # a 0% that looks like a broken model: say what it is, in the task's log
        _log.warning("%s", run.echo_warning)
    check_regression(current=run.score, previous=previous, max_drop=max_drop)
    return {**run.summary(), "previous_score": previous, "report": shown}

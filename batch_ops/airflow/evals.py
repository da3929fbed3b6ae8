"""The eval matrix's last step on Airflow: the run's record, the report (linked from the task), the gate.

:class:`EvalReportOperator` hands the model records of a matrix run
(:func:`batch_ops.evals.matrix.model_record`, one per mapped task) to
:func:`batch_ops.evals.matrix.finish_run`, which compares, gates and writes the report; the task
then carries an extra link, **Eval report**, to the HTML page, and fails when the gate does (the
report is written first, so the failure has its explanation one click away).

Examples:
    >>> EvalReportLink().name, EvalReportLink().xcom_key
    ('Eval report', '_link_EvalReportLink')
    >>> report_url("/srv/eval/matrix/reports", "runs/r1/report.html")
    'file:///srv/eval/matrix/reports/runs/r1/report.html'
    >>> report_url("s3://bucket/eval", "runs/r1/report.html", base_url="https://reports.example.com/eval/")
    'https://reports.example.com/eval/runs/r1/report.html'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from batch_ops import storage
from batch_ops.evals.matrix import MatrixConfig, enforce_gate, finish_run
from batch_ops.evals.render import matrix_header, matrix_rows

__all__ = ["EvalReportLink", "EvalReportOperator", "report_url"]


def report_url(report_dir: Any, relative: str, *, base_url: str | None = None) -> str:
    """Where a person opens a report file: under ``base_url`` when the report folder is served over HTTP,
    else the file's own URL (``file://`` for a local folder, the object storage URL otherwise)."""
    if base_url:
        return base_url.rstrip("/") + "/" + relative.lstrip("/")
    where = storage.location(report_dir)
    if isinstance(where, Path):
        return (where / relative).resolve().as_uri()
    return storage.display(storage.join(report_dir, *relative.split("/")))


class EvalReportLink(BaseOperatorLink):
    """Extra link "Eval report" on :class:`EvalReportOperator` tasks: the run's HTML report."""

    name = "Eval report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = getattr(operator, "_report_url", None)
        if url:
            return str(url)
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return value if isinstance(value, str) else ""


class EvalReportOperator(BaseOperator):
    """Finish a matrix eval run: record, comparisons, gate, report (HTML, Markdown, JSON) and history.

    Args:
        models: The model records (an XComArg of the mapped scoring task).
        report_dir: The report folder (local path or object storage URL / ``ObjectStoragePath``).
        config: The matrix config (DAG params); default: the DAG run's params.
        report_base_url: When the report folder is served over HTTP, its URL (the link then opens it).

    Returns (XCom): the gate's status and reason, where the report is, and each model's score with its interval.
    Fails with :class:`~batch_ops.evals.matrix.EvalGateError` when the gate fails, after writing the report.
    """

    template_fields: Sequence[str] = ("models", "report_dir", "report_base_url")
    operator_extra_links = (EvalReportLink(),)
    ui_color = "#f4c542"

    def __init__(self, *, models: Any, report_dir: Any, config: Mapping[str, Any] | None = None,
                 report_base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.report_dir = report_dir
        self.config = dict(config) if config is not None else None
        self.report_base_url = report_base_url
        self._report_url: str | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        config = MatrixConfig.from_params(self.config if self.config is not None else dict(context["params"]))
        dag_run = context.get("dag_run")
        run, shown = finish_run(config, list(self.models), run_id=str(context["run_id"]), pipeline="airflow",
                                report_dir=self.report_dir, started_at=getattr(dag_run, "start_date", None))
        relative = f"runs/{Path(shown['html']).parent.name}/report.html"
        self._report_url = report_url(self.report_dir, relative, base_url=self.report_base_url)
        # Pushed now, not only when the task ends: a failed gate keeps its link to the report explaining it.
        context["ti"].xcom_push(key=EvalReportLink().xcom_key, value=self._report_url)
        header = matrix_header(run)
        self.log.info("eval matrix %s:\n%s", run.run_id, "\n".join(
            " | ".join(row) for row in [header, *matrix_rows(run)]))
        self.log.info("report: %s; gate: %s (%s)", self._report_url, run.gate.status if run.gate else None,
                      run.gate.reason if run.gate else "")
        enforce_gate(run, shown)
        return {
            "gate": run.gate.model_dump() if run.gate else None,
            "report": {**shown, "url": self._report_url},
            "complete": run.complete,
            "models": {m.model: {"mean": m.overall.mean, "ci_low": m.overall.ci_low, "ci_high": m.overall.ci_high,
                                 "n": m.overall.n, "result_counts": m.result_counts.model_dump(),
                                 "cost_actual": m.cost.actual} for m in run.models},
        }

"""Eval reports: markdown + JSON per run, a history across runs, a PNG trend chart, and the
regression gate that fails the pipeline loudly when the score drops.

Layout under ``report_dir``::

    history/<time>-<run>.json one object per run: run id, time, score, failures, batch (written
                              once, never rewritten: runs that finish together on object storage
                              cannot overwrite each other's record)
    history.jsonl             the older layout, one line per run: still read, no longer written
    runs/<run_id>/report.md   human summary: headline, trend vs previous run, categories, misses
    runs/<run_id>/report.json every item's row, for dashboards and diffing
    trend.png                 score and failed requests across runs (needs matplotlib)
    latest.md                 a copy of the newest report.md

Examples:
    >>> check_regression(current=0.80, previous=0.86, max_drop=0.05)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.evals.report.ScoreRegressionError: score fell from 86.0% to 80.0% (-6.0 points), more than ...
    >>> check_regression(current=0.84, previous=0.86, max_drop=0.05) is None
    True
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pendulum

from batch_ops import storage
from batch_ops._files import atomic_write
from batch_ops.errors import BatchOpsError
from batch_ops.evals.scoring import EvalRun
from batch_ops.storage import StorageTarget

__all__ = [
    "HISTORY",
    "LEGACY_HISTORY",
    "ReportPaths",
    "ScoreRegressionError",
    "check_regression",
    "previous_score",
    "previous_score_in",
    "read_history",
    "write_report",
]


class ScoreRegressionError(BatchOpsError):
    """Raised when an eval score dropped more than the allowed margin versus the previous run."""


@dataclass(frozen=True)
class ReportPaths:
    """Where a run's report went."""

    markdown: Path
    json: Path
    history: Path
    chart: Path | None

    def as_dict(self) -> dict[str, str | None]:
        return {"markdown": str(self.markdown), "json": str(self.json), "history": str(self.history),
                "chart": str(self.chart) if self.chart else None}


#: The history's folder in the report folder: one JSON object per run.
HISTORY = "history"
#: The older history, one JSON line per run (read, not written).
LEGACY_HISTORY = "history.jsonl"


def read_history(report_dir: StorageTarget) -> list[dict[str, Any]]:
    """All recorded runs, oldest first (an absent history is empty); the folder may be on object storage."""
    text = storage.read_text(storage.join(report_dir, LEGACY_HISTORY), default="") or ""
    runs = [json.loads(line) for line in text.splitlines() if line.strip()]
    runs += [json.loads(doc) for doc in storage.read_all(storage.join(report_dir, HISTORY), suffix=".json")]
    return sorted(runs, key=lambda r: str(r.get("time", "")))


def previous_score_in(runs: list[dict[str, Any]], pipeline: str | None) -> float | None:
    """The score of the newest run in ``runs`` (of ``pipeline``, when given)."""
    mine = [r for r in runs if pipeline is None or r.get("pipeline") == pipeline]
    return float(mine[-1]["score"]) if mine else None


def previous_score(report_dir: StorageTarget, *, pipeline: str | None = None) -> float | None:
    """The score of the newest recorded run (of ``pipeline``, when given)."""
    return previous_score_in(read_history(report_dir), pipeline)


def check_regression(*, current: float, previous: float | None, max_drop: float) -> None:
    """Raise ScoreRegressionError when ``current`` is more than ``max_drop`` below ``previous``."""
    if previous is None:
        return
    drop = previous - current
    if drop > max_drop + 1e-12:
        raise ScoreRegressionError(
            f"score fell from {previous:.1%} to {current:.1%} ({-drop * 100:+.1f} points), more than the "
            f"allowed {max_drop * 100:.1f} points; see the report's wrong and failed items, or raise max_drop "
            "if the change is expected"
        )


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, [text.encode("utf-8")])


def _markdown(run: EvalRun, *, run_id: str, pipeline: str, when: str, previous: float | None,
              extra: dict[str, Any]) -> str:
    trend = "first recorded run"
    if previous is not None:
        trend = f"{(run.score - previous) * 100:+.1f} points vs previous run ({previous:.1%})"
    lines = [
        f"# Nightly eval — {pipeline} — {run_id}",
        "",
        f"*{when}*",
        "",
        *([f"> **Warning:** {run.echo_warning}", ""] if run.echo_warning else []),
        "| score | correct | wrong | failed requests | total | accuracy on answered | trend |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| **{run.score:.1%}** | {run.correct} | {run.wrong} | {run.failed} | {run.total} | "
        f"{run.accuracy_answered:.1%} | {trend} |",
        "",
        f"Tokens: {run.usage.input_tokens} input ({run.usage.input_tokens_details.cached_tokens} cached), "
        f"{run.usage.output_tokens} output.",
        "",
    ]
    if extra:
        lines += ["| batch | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in extra.items()], ""]
    lines += ["## By category", "", "| category | score |", "|---|---:|"]
    lines += [f"| {cat} | {score:.1%} |" for cat, score in run.by_category.items()]
    misses = [r for r in run.items if r.outcome != "correct"]
    lines += ["", f"## Not correct ({len(misses)})", "", "| id | outcome | expected | answer / error |",
              "|---|---|---|---|"]
    for r in misses[:50]:
        shown = (r.answer or "").replace("|", "\\|").replace("\n", " ")[:80] if r.outcome == "wrong" else r.error_code
        lines.append(f"| {r.id} | {r.outcome} | {r.expected} | {shown} |")
    if len(misses) > 50:
        lines.append(f"| … | {len(misses) - 50} more in report.json | | |")
    return "\n".join(lines) + "\n"


def _chart(history: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the chart is a nicety; the report stands without it
        return None
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    failures = ax.twinx()  # failed requests are a count, not a percentage: their own axis
    pipelines = sorted({str(h.get("pipeline", "")) for h in history})
    width = 0.8 / max(len(pipelines), 1)
    most = 1
    for i, pipeline in enumerate(pipelines):
        runs = [h for h in history if str(h.get("pipeline", "")) == pipeline]
        xs = list(range(1, len(runs) + 1))
        most = max(most, len(runs))
        ax.plot(xs, [100 * float(h["score"]) for h in runs], marker="o", label=f"score % ({pipeline})")
        failures.bar([x - 0.4 + width * (i + 0.5) for x in xs], [int(h.get("failed", 0)) for h in runs],
                     width=width, alpha=0.3, label=f"failed requests ({pipeline})")
    ax.set_xlabel("run")
    ax.set_ylabel("score (%)")
    failures.set_ylabel("failed requests")
    # Bars in the lower third, so they never hide the score line.
    failures.set_ylim(0, 3 * max([int(h.get("failed", 0)) for h in history] + [1]))
    ax.set_ylim(0, 100)
    ax.set_xticks(list(range(1, most + 1)))
    ax.set_zorder(failures.get_zorder() + 1)  # the score line above the bars
    ax.patch.set_visible(False)
    ax.set_title("Nightly eval: score and failed requests per run")
    handles = ax.get_legend_handles_labels()[0] + failures.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    run: EvalRun,
    *,
    report_dir: str | os.PathLike[str],
    run_id: str,
    pipeline: str = "batch_ops",
    batch: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> ReportPaths:
    """Write this run's markdown and JSON, add it to the history and redraw the chart.

    ``history``: the runs recorded so far, when the caller has read them already (default: read
    from ``report_dir``). Returns the paths. Call :func:`check_regression` with
    :func:`previous_score` read *before* this call to gate on the previous run.
    """
    root = Path(report_dir)
    runs = read_history(root) if history is None else list(history)
    previous = previous_score_in(runs, pipeline)
    when = pendulum.now("UTC").to_iso8601_string()
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    run_dir = root / "runs" / f"{pipeline}-{safe_id}"
    extra = {k: v for k, v in (batch or {}).items() if k in ("batch_id", "status", "output_file_id",
                                                               "error_file_id", "request_counts")}
    md = _markdown(run, run_id=run_id, pipeline=pipeline, when=when, previous=previous, extra=extra)
    _atomic_write(run_dir / "report.md", md)
    doc = {"run_id": run_id, "pipeline": pipeline, "time": when, "previous_score": previous, "batch": batch,
           **run.summary(), "items": [r.model_dump() for r in run.items]}
    _atomic_write(run_dir / "report.json", json.dumps(doc, indent=2) + "\n")
    entry = {"run_id": run_id, "pipeline": pipeline, "time": when, "score": run.score, "failed": run.failed,
             "total": run.total, "batch_id": (batch or {}).get("batch_id")}
    stamp = pendulum.parse(when).format("YYYYMMDDTHHmmssSSSSSS")  # type: ignore[union-attr]
    history_path = root / HISTORY / f"{stamp}-{pipeline}-{safe_id}.json"
    _atomic_write(history_path, json.dumps(entry) + "\n")
    shutil.copyfile(run_dir / "report.md", root / "latest.md")
    chart = _chart([*runs, entry], root / "trend.png")
    return ReportPaths(markdown=run_dir / "report.md", json=run_dir / "report.json", history=history_path,
                       chart=chart)

"""The matrix report: one self-contained HTML file, Markdown, JSON, and the history kept per model.

Everything here reads a :class:`~batch_ops.evals.record.RunRecord` (and the history of earlier
runs); nothing grades, counts or decides: the record already says it all, so the HTML, the
Markdown, the JSON and the console table can never disagree.

Layout under ``report_dir``::

    runs/<run>/report.html        one file: tables and plots inline (SVG), no scripts, no outside links
    runs/<run>/report.md          the same tables, for a pull request, a Prefect artifact or Slack
    runs/<run>/record.json        the whole RunRecord (every sample), read back with RunRecord.from_json
    runs/<run>/openai_report.json the run in OpenAI's eval-run report shape (result_counts, per grader, usage)
    models/<model>/<time>-<run>.json   one small object per model and run: the history (never rewritten)
    latest.html, latest.md        copies of the newest report

The plots (matplotlib, the ``evals`` extra; without it the report keeps its tables and says so):
score per model over the history with its 95 % interval, per-category bars with intervals, and
cost against score.

Examples:
    >>> from batch_ops.evals.record import example_run_record
    >>> run = example_run_record()
    >>> print(markdown_report(run).splitlines()[0])
    # Eval run example — scheduled__2026-12-01T03:00:00+00:00
    >>> [row[0] for row in matrix_rows(run)]
    ['model-a', 'model-b', 'model-c']
    >>> history_entry(run.models[0], run)["mean"]
    0.875
"""

from __future__ import annotations

import html
import io
import json
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_ops import storage
from batch_ops._files import atomic_write
from batch_ops.evals.record import Aggregate, ModelRecord, RunRecord
from batch_ops.storage import StorageTarget

__all__ = [
    "MODELS_HISTORY",
    "ReportFiles",
    "history_entry",
    "html_report",
    "markdown_report",
    "matrix_rows",
    "read_model_history",
    "safe_name",
    "write_run_report",
]

#: The per-model history's folder under the report folder.
MODELS_HISTORY = "models"


@dataclass(frozen=True)
class ReportFiles:
    """Where one run's report went (local paths; the pipeline maps them to object storage when it must)."""

    html: Path
    markdown: Path
    record: Path
    openai: Path
    history: tuple[Path, ...]

    def as_dict(self) -> dict[str, str]:
        return {"html": str(self.html), "markdown": str(self.markdown), "record": str(self.record),
                "openai": str(self.openai)}


def safe_name(text: str) -> str:
    """A run id or model name as a file name (``/`` and ``:`` would make folders or break Windows).

    Examples:
        >>> safe_name("scheduled__2026-12-01T03:00:00+00:00"), safe_name("org/model:v1")
        ('scheduled__2026-12-01T03_00_00_00_00', 'org_model_v1')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ---- formatting -----------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _interval(a: Aggregate | None) -> str:
    """``71.4% [64.9, 77.9]``: the mean and its interval in points."""
    if a is None:
        return "-"
    if a.method == "none" or a.n < 2:
        return f"{_pct(a.mean)} (n={a.n})"
    return f"{_pct(a.mean)} [{a.ci_low * 100:.1f}, {a.ci_high * 100:.1f}]"


def _money(x: float | None, currency: str = "USD") -> str:
    if x is None:
        return "-"
    sign = "$" if currency == "USD" else f"{currency} "
    return f"{sign}{x:.4f}" if x < 1 else f"{sign}{x:,.2f}"


def _estimate(low: float | None, high: float | None, currency: str = "USD") -> str:
    if low is None and high is None:
        return "-"
    if low == high or high is None:
        return _money(low, currency)
    return f"{_money(low, currency)}-{_money(high, currency)}"


def _total_cost(m: ModelRecord) -> float | None:
    """Answers plus judge, actual; None when the answers' actual cost is unknown."""
    if m.cost.actual is None:
        return None
    return m.cost.actual + (m.judge_cost.actual or 0.0 if m.judge_cost else 0.0)


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _pass_ks(run: RunRecord) -> list[int]:
    """The k of pass@k the run's models report (several epochs only)."""
    return sorted({k for m in run.models for k in m.pass_at_k})


def _pass_at_k(m: ModelRecord, ks: list[int]) -> list[str]:
    return [f"{m.pass_at_k[k] * 100:.1f}%" if k in m.pass_at_k else "-" for k in ks]


def _turnaround(m: ModelRecord) -> str:
    """Each batch's turnaround: ``answers / judges`` (the judges' column only with a judge)."""
    if m.judge_usage is None:
        return _seconds(m.turnaround_s)
    return f"{_seconds(m.turnaround_s)} / {_seconds(m.judge_turnaround_s)}"


def _total_estimate(m: ModelRecord) -> tuple[float | None, float | None]:
    """Answers plus judges, the estimate range made before the uploads (None: a part unknown)."""
    parts = [m.cost, *([m.judge_cost] if m.judge_cost else [])]
    lows, highs = [c.estimate_low for c in parts], [c.estimate_high for c in parts]
    return (None if None in lows else sum(x for x in lows if x is not None),
            None if None in highs else sum(x for x in highs if x is not None))


def _categories(run: RunRecord) -> list[str]:
    seen: dict[str, None] = {}
    for m in run.models:
        for c in m.by_category:
            seen.setdefault(c, None)
    return sorted(seen)


def _counts(m: ModelRecord) -> str:
    c = m.result_counts
    return f"{c.passed}/{c.failed}/{c.errored}/{c.unparsed}"


def _short_interval(a: Aggregate | None) -> str:
    """``86.2 ±4.1``: the mean and the interval's half width, in points (the console's narrow form)."""
    if a is None:
        return "-"
    if a.method == "none" or a.n < 2:
        return f"{a.mean * 100:.1f}"
    return f"{a.mean * 100:.1f} ±{a.half_width * 100:.1f}"


def matrix_rows(run: RunRecord, *, compact: bool = False) -> list[list[str]]:
    """The model x category table as strings: model, overall, each category, counts, cost, judge cost, time.

    The header is :func:`matrix_header`; the Markdown and the HTML tables hold these rows. ``compact``:
    a console's narrow form (``86.2 ±4.1`` points; one cost column, answers + judge, actual).
    """
    rows = []
    for m in run.models:
        judge = m.judge_cost
        if compact:
            rows.append([m.model, _short_interval(m.overall), *_pass_at_k(m, _pass_ks(run)),
                         *[_short_interval(m.by_category.get(c)) for c in _categories(run)], _counts(m),
                         f"{_estimate(*_total_estimate(m), m.cost.currency)} / "
                         f"{_money(_total_cost(m), m.cost.currency)}",
                         _turnaround(m)])
            continue
        rows.append([
            m.model, _interval(m.overall), *_pass_at_k(m, _pass_ks(run)),
            *[_interval(m.by_category.get(c)) for c in _categories(run)],
            _counts(m),
            f"{_estimate(m.cost.estimate_low, m.cost.estimate_high, m.cost.currency)} / "
            f"{_money(m.cost.actual, m.cost.currency)}",
            f"{_estimate(judge.estimate_low, judge.estimate_high, judge.currency)} / "
            f"{_money(judge.actual, judge.currency)}" if judge else "-",
            _turnaround(m),
            "yes" if m.complete else "NO",
        ])
    return rows


def matrix_header(run: RunRecord, *, compact: bool = False) -> list[str]:
    """Column names of :func:`matrix_rows`."""
    if compact:
        return ["model", "overall", *[f"pass@{k}" for k in _pass_ks(run)], *_categories(run), "p/f/e/u",
                "cost est. / actual", "time ans./judge"]
    return ["model", "overall [95% CI]", *[f"pass@{k}" for k in _pass_ks(run)], *_categories(run),
            "pass/fail/err/unparsed", "cost est. / actual",
            "judge cost est. / actual", "turnaround answers / judge", "complete"]


# ---- history --------------------------------------------------------------------------------------

def history_entry(m: ModelRecord, run: RunRecord) -> dict[str, Any]:
    """What the history keeps of one model in one run: enough for the trend plot and the previous-run
    comparison's headline (the full samples stay in the run's ``record.json``)."""
    when = run.finished_at or run.started_at
    return {
        "run_id": run.run_id, "pipeline": run.pipeline, "time": when.isoformat() if when else None,
        "model": m.model, "provider": m.provider, "eval_set": run.eval_set.name, "eval_set_hash": run.eval_set.hash,
        "n": m.overall.n, "mean": m.overall.mean, "ci_low": m.overall.ci_low, "ci_high": m.overall.ci_high,
        "by_category": {c: a.mean for c, a in m.by_category.items()},
        "result_counts": m.result_counts.model_dump(), "complete": m.complete,
        "cost_actual": _total_cost(m), "record": f"runs/{safe_name(run.run_id)}/record.json",
    }


def read_model_history(report_dir: StorageTarget, models: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every recorded run of each of ``models``, oldest first; the folder may be on object storage.

    A model never recorded has no key (an absent history is empty).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        texts = storage.read_all(storage.join(report_dir, MODELS_HISTORY, safe_name(model)), suffix=".json")
        runs = [json.loads(t) for t in texts if t.strip()]
        if runs:
            out[model] = sorted(runs, key=lambda r: str(r.get("time") or ""))
    return out


def _with_this_run(history: Mapping[str, Sequence[Mapping[str, Any]]], run: RunRecord) -> dict[str, list[Any]]:
    merged = {k: [h for h in v if h.get("run_id") != run.run_id] for k, v in history.items()}
    for m in run.models:
        merged.setdefault(m.model, []).append(history_entry(m, run))
    return merged


# ---- plots ----------------------------------------------------------------------------------------

def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "batch_ops"  # the same record draws the same file
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small files, selectable labels
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _svg(fig: Any, plt: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype inside HTML


def _yerr(aggs: Sequence[Aggregate | None]) -> list[list[float]]:
    lows = [100 * max(0.0, a.mean - a.ci_low) if a else 0.0 for a in aggs]
    highs = [100 * max(0.0, a.ci_high - a.mean) if a else 0.0 for a in aggs]
    return [lows, highs]


def _trend_plot(plt: Any, history: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    for model, runs in sorted(history.items()):
        xs = list(range(1, len(runs) + 1))
        ys = [100 * float(r["mean"]) for r in runs]
        err = [[y - 100 * float(r.get("ci_low", r["mean"])) for y, r in zip(ys, runs, strict=True)],
               [100 * float(r.get("ci_high", r["mean"])) - y for y, r in zip(ys, runs, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=model)
        for x, y, r in zip(xs, ys, runs, strict=True):
            if not r.get("complete", True):  # an incomplete run: an open ring around its point
                ax.plot([x], [y], marker="o", markersize=11, markerfacecolor="none", color="crimson")
    most = max((len(v) for v in history.values()), default=1)
    ax.set_xticks(list(range(1, most + 1)))
    ax.set_xlabel("run (oldest first; a red ring: incomplete)")
    ax.set_ylabel("score % (95% CI)")
    ax.set_ylim(0, 100)
    ax.set_title("Score per model over the history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return _svg(fig, plt)


def _category_plot(plt: Any, run: RunRecord) -> str:
    cats = _categories(run)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    width = 0.8 / max(len(run.models), 1)
    for i, m in enumerate(run.models):
        aggs = [m.by_category.get(c) for c in cats]
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(cats))]
        ax.bar(xs, [100 * a.mean if a else 0.0 for a in aggs], width=width, yerr=_yerr(aggs), capsize=2,
               label=m.model, alpha=0.85)
    ax.set_xticks(list(range(len(cats))))
    ax.set_xticklabels(cats, rotation=20, ha="right")
    ax.set_ylabel("score % (95% CI)")
    ax.set_ylim(0, 105)
    ax.set_title("Score per category")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small", ncols=min(len(run.models), 4), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _svg(fig, plt)


def _cost_plot(plt: Any, run: RunRecord) -> str | None:
    points = [(m, _total_cost(m)) for m in run.models]
    if not any(c is not None for _, c in points):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    for m, cost in points:
        if cost is None:
            continue
        y = 100 * m.overall.mean
        ax.errorbar([cost], [y], yerr=[[y - 100 * m.overall.ci_low], [100 * m.overall.ci_high - y]], marker="o",
                    capsize=3, label=m.model)
        ax.annotate(m.model, (cost, y), textcoords="offset points", xytext=(6, 4), fontsize="small")
    ax.set_xlabel(f"actual cost, answers + judge ({run.models[0].cost.currency}, batch prices)")
    ax.set_ylabel("score % (95% CI)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_title("Cost against score")
    ax.grid(alpha=0.3)
    return _svg(fig, plt)


# ---- Markdown -------------------------------------------------------------------------------------

def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def _gate_line(run: RunRecord) -> str:
    if run.gate is None:
        return "Gate: not run."
    mark = {"pass": "PASS", "fail": "FAIL", "incomplete": "INCOMPLETE", "no_reference": "NO REFERENCE"}
    reason = run.gate.reason
    if reason.lower().startswith(run.gate.status + ":"):  # the status once, not twice
        reason = reason[len(run.gate.status) + 1:].lstrip()
    return f"Gate: **{mark.get(run.gate.status, run.gate.status)}** — {reason}"


def _comparison_rows(run: RunRecord) -> list[list[str]]:
    return [[c.model, "previous run" if c.kind == "previous_run" else f"baseline {c.reference}",
             f"{c.reference_mean * 100:.1f}% → {c.mean * 100:.1f}%",
             f"{c.diff * 100:+.1f} [{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}]",
             "-" if c.p_value is None else f"{c.p_value:.3f}", "yes" if c.significant else "no", str(c.n)]
            for c in run.comparisons]


_COMPARISON_HEADER = ["model", "against", "score", "difference, points [95% CI]", "p", "significant", "pairs"]


def _grader_rows(run: RunRecord) -> list[list[str]]:
    return [[m.model, g.name, g.kind, str(g.passed), str(g.failed), str(g.errored), str(g.unparsed),
             _interval(g.mean), ", ".join(g.judge_models) or "-"] for m in run.models for g in m.graders]


_GRADER_HEADER = ["model", "grader", "kind", "passed", "failed", "errored", "unparsed", "mean [95% CI]", "judge"]


def _usage_rows(run: RunRecord) -> list[list[str]]:
    rows = []
    for m in run.models:
        rows.append([m.model, "answers", str(m.usage.requests), f"{m.usage.input_tokens:,}",
                     f"{m.usage.output_tokens:,}", _estimate(m.cost.estimate_low, m.cost.estimate_high),
                     _money(m.cost.actual), ", ".join(m.batch_ids[:1]) or "-"])
        if m.judge_usage is not None:
            judge = m.judge_cost
            rows.append([m.model, "judge", str(m.judge_usage.requests), f"{m.judge_usage.input_tokens:,}",
                         f"{m.judge_usage.output_tokens:,}",
                         _estimate(judge.estimate_low, judge.estimate_high) if judge else "-",
                         _money(judge.actual) if judge else "-", ", ".join(m.batch_ids[1:]) or "-"])
    return rows


_USAGE_HEADER = ["model", "batch", "requests", "input tokens", "output tokens", "estimate", "actual", "batch ids"]


def _not_graded(run: RunRecord, limit: int = 30) -> list[list[str]]:
    rows = []
    for m in run.models:
        for s in m.samples:
            if s.status != "graded":
                rows.append([m.model, s.item_id, s.status, s.error_code or "-", (s.detail or "")[:80]])
    return rows[:limit]


def markdown_report(run: RunRecord) -> str:
    """The report as Markdown: headline, the model x category matrix, comparisons, graders, usage and cost."""
    when = run.finished_at or run.started_at
    lines = [f"# Eval run {run.eval_set.name} — {run.run_id}", "",
             f"*{run.pipeline}, {when:%Y-%m-%d %H:%M UTC}; {run.eval_set.n_items} items, "
             f"set {run.eval_set.hash[:19]}…*" if when else f"*{run.pipeline}*", "", _gate_line(run), ""]
    if not run.complete:
        lines += ["> **Incomplete:** some requests errored or a judge answer did not parse; they count as 0 in "
                  "`overall`, never as a better score (see *not graded*).", ""]
    lines += ["## Score per model and category (95% intervals)", "",
              *_md_table(matrix_header(run), matrix_rows(run)), ""]
    if run.comparisons:
        lines += ["## Paired comparisons", "", *_md_table(_COMPARISON_HEADER, _comparison_rows(run)), ""]
    lines += ["## Graders", "", *_md_table(_GRADER_HEADER, _grader_rows(run)), "",
              "## Usage and cost (batch prices)", "", *_md_table(_USAGE_HEADER, _usage_rows(run)), ""]
    missing = _not_graded(run)
    if missing:
        lines += [f"## Not graded ({sum(m.result_counts.errored + m.result_counts.unparsed for m in run.models)})",
                  "", *_md_table(["model", "item", "status", "code", "detail"], missing), ""]
    return "\n".join(lines)


# ---- HTML -----------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d6d9e0;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f2f4f8}td:first-child,th:first-child{text-align:left}
.gate{padding:8px 12px;border-radius:6px;display:inline-block;margin:6px 0}
.pass{background:#e3f6e8}.fail{background:#fde2e1}.incomplete,.no_reference{background:#fff3d6}
.meta{color:#5a6270}.plots{display:flex;flex-wrap:wrap;gap:16px}.plot{flex:1 1 460px;max-width:580px;margin:0}
.scroll{overflow-x:auto}
.plot svg{width:100%;height:auto}.warn{background:#fff3d6;padding:6px 10px;border-radius:6px}
"""


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def html_report(run: RunRecord, history: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no script, no outside request).

    ``history``: each model's earlier runs (:func:`read_model_history`); this run is added to it for
    the trend plot.
    """
    merged = _with_this_run(history or {}, run)
    plt = _pyplot()
    plots: list[tuple[str, str]] = []
    if plt is not None:
        plots.append(("trend", _trend_plot(plt, merged)))
        plots.append(("categories", _category_plot(plt, run)))
        cost = _cost_plot(plt, run)
        if cost is not None:
            plots.append(("cost", cost))
    when = run.finished_at or run.started_at
    gate_class = run.gate.status if run.gate else "no_reference"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Eval {html.escape(run.eval_set.name)} — {html.escape(run.run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Eval run {html.escape(run.eval_set.name)}</h1>",
        f"<div class='meta'>run {html.escape(run.run_id)} · {html.escape(run.pipeline)}"
        f"{' · ' + f'{when:%Y-%m-%d %H:%M} UTC' if when else ''} · {run.eval_set.n_items} items · "
        f"set {html.escape(run.eval_set.hash[:19])}…"
        f"{' · baseline ' + html.escape(run.baseline_model) if run.baseline_model else ''}</div>",
        f"<div class='gate {html.escape(gate_class)}'>{html.escape(_gate_line(run).replace('**', ''))}</div>",
    ]
    if not run.complete:
        parts.append("<p class='warn'>Incomplete: some requests errored or a judge answer did not parse; they "
                     "count as 0 in <em>overall</em>, never as a better score.</p>")
    parts += ["<h2>Score per model and category (95% intervals)</h2>",
              _html_table(matrix_header(run), matrix_rows(run))]
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [f"<figure class='plot' id='plot-{name}'>{svg}</figure>" for name, svg in plots]
        parts.append("</div>")
    else:
        parts.append("<p class='warn'>No plots: matplotlib is not installed (pip install "
                     "'openai-batch-ops[evals]').</p>")
    if run.comparisons:
        parts += ["<h2>Paired comparisons</h2>", _html_table(_COMPARISON_HEADER, _comparison_rows(run))]
    parts += ["<h2>Graders</h2>", _html_table(_GRADER_HEADER, _grader_rows(run)),
              "<h2>Usage and cost (batch prices)</h2>", _html_table(_USAGE_HEADER, _usage_rows(run))]
    missing = _not_graded(run)
    if missing:
        parts += ["<h2>Not graded</h2>", _html_table(["model", "item", "status", "code", "detail"], missing)]
    trend_rows = [[model, str(len(runs)), " → ".join(_pct(r.get("mean")) for r in runs[-8:])]
                  for model, runs in sorted(merged.items())]
    parts += ["<h2>History per model</h2>",
              _html_table(["model", "runs", "score, last runs (oldest → this run)"], trend_rows),
              "</body></html>"]
    return "\n".join(parts)


# ---- writing --------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    atomic_write(path, [text.encode("utf-8")])


def write_run_report(run: RunRecord, report_dir: str | Path,
                     history: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> ReportFiles:
    """Write the run's HTML, Markdown, record and OpenAI-shaped JSON, and add each model to its history.

    ``history``: read before (default: :func:`read_model_history` of ``report_dir``). Each history
    entry is a file of its own, written once: runs that finish together never overwrite each other.
    """
    root = Path(report_dir)
    known = read_model_history(root, [m.model for m in run.models]) if history is None else history
    folder = root / "runs" / safe_name(run.run_id)
    files = ReportFiles(html=folder / "report.html", markdown=folder / "report.md", record=folder / "record.json",
                        openai=folder / "openai_report.json", history=tuple(
                            root / MODELS_HISTORY / safe_name(m.model) / f"{_stamp(run)}-{safe_name(run.run_id)}.json"
                            for m in run.models))
    _write(files.record, run.to_json() + "\n")
    _write(files.openai, json.dumps(run.to_openai_report(), indent=2, default=str) + "\n")
    _write(files.markdown, markdown_report(run))
    _write(files.html, html_report(run, known))
    for m, path in zip(run.models, files.history, strict=True):
        _write(path, json.dumps(history_entry(m, run)) + "\n")
    shutil.copyfile(files.html, root / "latest.html")
    shutil.copyfile(files.markdown, root / "latest.md")
    return files


def _stamp(run: RunRecord) -> str:
    when = run.finished_at or run.started_at
    return when.strftime("%Y%m%dT%H%M%S%f") if when else "00000000T000000000000"

"""The matrix report (batch_ops.evals.render): one self-contained HTML file with its plots, Markdown, the record and
OpenAI's report shape, the history per model; and the page opened in headless Chromium with its plots drawn."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from batch_ops.evals.record import RunRecord, example_run_record
from batch_ops.evals.render import html_report, markdown_report, matrix_rows, read_model_history, write_run_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _two_nights(tmp_path: Path) -> tuple[RunRecord, Path]:
    """Two runs of the fixture record: the second one with model-b better, so the trend has two points each."""
    first = example_run_record("scheduled__2026-11-30T03:00:00+00:00")
    first = first.model_copy(update={"started_at": first.started_at.replace(day=30, month=11),  # type: ignore[union-attr]
                                     "finished_at": first.finished_at.replace(day=30, month=11)})  # type: ignore[union-attr]
    write_run_report(first, tmp_path)
    second = example_run_record()
    files = write_run_report(second, tmp_path)
    return second, files.html


def test_the_html_report_is_one_self_contained_file_with_three_plots(tmp_path: Path) -> None:
    run, html_path = _two_nights(tmp_path)
    page = html_path.read_text()
    assert page.count("<svg") == 3  # trend per model, per-category bars with intervals, cost against score
    assert {m.group(1) for m in re.finditer(r"id='plot-(\w+)'", page)} == {"trend", "categories", "cost"}
    # self-contained: nothing fetched from anywhere, nothing run
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    for m in run.models:
        assert m.model in page
    assert "87.5% [69.9, 100.0]" in page  # model-a overall with its interval, as in the record
    assert "INCOMPLETE" in page and "model-c" in page


def test_markdown_json_and_openai_shape_say_the_same(tmp_path: Path) -> None:
    run, html_path = _two_nights(tmp_path)
    folder = html_path.parent
    md = (folder / "report.md").read_text()
    assert md == markdown_report(run)
    for row in matrix_rows(run):
        assert "| " + " | ".join(row) + " |" in md
    assert RunRecord.from_json((folder / "record.json").read_text()) == run
    openai = json.loads((folder / "openai_report.json").read_text())
    assert openai["result_counts"] == {"total": 36, "passed": 24, "failed": 10, "errored": 1, "unparsed": 1}
    assert {r["testing_criteria"] for r in openai["per_testing_criteria_results"]} >= {"model-a/exact", "model-c/judge"}
    assert (tmp_path / "latest.html").read_text() == html_path.read_text()


def test_history_is_kept_per_model_and_feeds_the_trend(tmp_path: Path) -> None:
    run, _ = _two_nights(tmp_path)
    history = read_model_history(tmp_path, ["model-a", "model-b", "model-c", "model-z"])
    assert sorted(history) == ["model-a", "model-b", "model-c"]  # a model never run has no history
    assert [len(v) for v in history.values()] == [2, 2, 2]
    assert [h["run_id"] for h in history["model-a"]] == ["scheduled__2026-11-30T03:00:00+00:00", run.run_id]
    # the same run written again replaces nothing: one file per model and run
    write_run_report(run, tmp_path)
    assert len(list((tmp_path / "models" / "model-a").glob("*.json"))) == 2
    page = html_report(run, history)
    assert "87.5% → 87.5%" in page  # the history table, oldest → this run


def test_without_matplotlib_the_report_keeps_its_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import batch_ops.evals.render as render

    monkeypatch.setattr(render, "_pyplot", lambda: None)
    page = render.html_report(example_run_record())
    assert "<svg" not in page and "matplotlib is not installed" in page and "model-a" in page


def screenshot(page: Path, out: Path, *, height: int = 2600) -> None:
    """Open ``page`` in headless Chromium and write a screenshot (the page fully laid out, its SVGs drawn)."""
    assert CHROMIUM is not None
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--window-size=1280,{height}", f"--screenshot={out}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_report_opens_in_headless_chromium_with_its_plots_drawn(tmp_path: Path) -> None:
    import matplotlib.image

    _, html_path = _two_nights(tmp_path)
    shot = tmp_path / "report.png"
    screenshot(html_path, shot)
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    # matplotlib's first three colours (one per model), as bars, lines and points: drawn only if the SVGs rendered
    for hex_colour in ("1f77b4", "ff7f0e", "2ca02c"):
        want = [int(hex_colour[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        close = (abs(pixels - want) < 0.06).all(axis=-1)
        assert close.sum() > 500, f"#{hex_colour}: {close.sum()} pixels"
    # the DOM Chromium built holds the three figures
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          html_path.resolve().as_uri()], capture_output=True, text=True, timeout=60, check=True).stdout
    assert dom.count("<svg") == 3 and "plot-cost" in dom
    if os.environ.get("BATCH_OPS_DOCS_SCREENSHOT"):  # regenerate the docs' picture from the demo's report
        demo = ROOT / ".demo" / "eval" / "matrix" / "latest.html"
        screenshot(demo if demo.exists() else html_path, ROOT / "docs" / "img" / "eval_matrix_report.png")


def test_cost_columns_show_the_estimate_range_beside_the_actual_and_turnaround_per_batch(tmp_path: Path) -> None:
    """Before: the record's estimate fields stayed empty and the console table showed the actual cost alone, and one
    turnaround summed the answers and judge batches."""
    from batch_ops.evals.record import Cost, TokenUsage

    run = example_run_record()
    a = run.models[0].model_copy(update={
        "cost": Cost(estimate_low=0.0012, estimate_high=0.0105, actual=0.0031),
        "judge_cost": Cost(estimate_low=0.0008, estimate_high=0.0042, actual=0.0011),
        "judge_usage": TokenUsage(requests=8, input_tokens=900, output_tokens=300),
        "turnaround_s": 95.0, "judge_turnaround_s": 40.0})
    run = run.model_copy(update={"models": [a, *run.models[1:]]})
    row = matrix_rows(run)[0]
    assert "$0.0012-$0.0105 / $0.0031" in row and "$0.0008-$0.0042 / $0.0011" in row and "95 s / 40 s" in row
    compact = matrix_rows(run, compact=True)[0]
    assert "$0.0020-$0.0147 / $0.0042" in compact and compact[-1] == "95 s / 40 s"  # answers + judge
    files = write_run_report(run, tmp_path)
    for text in (files.html.read_text(), (files.html.parent / "report.md").read_text()):
        assert "$0.0012-$0.0105" in text and "$0.0031" in text and "turnaround answers / judge" in text
    assert RunRecord.from_json((files.html.parent / "record.json").read_text()).models[0].judge_turnaround_s == 40.0

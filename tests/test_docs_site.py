"""The docs site as a reader gets it: built strictly with the Material theme, code highlighted with a copy
button, and an API reference generated from the docstrings that covers every public name of
``batch_ops``, ``batch_ops.airflow``, ``batch_ops.prefect`` and ``batch_ops.server``."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    yield out


def _public(module: str) -> list[str]:
    import importlib

    return [n for n in importlib.import_module(module).__all__ if not n.startswith("_")]


@pytest.mark.parametrize(("module", "page"), [("batch_ops", "core"), ("batch_ops.airflow", "airflow"),
                                              ("batch_ops.prefect", "prefect"), ("batch_ops.server", "server"),
                                              ("batch_ops.evals", "evals")])
def test_the_reference_documents_every_public_name(site: Path, module: str, page: str) -> None:
    text = (site / "reference" / page / "index.html").read_text()
    anchors = set(re.findall(r'id="([\w.]+)"', text))
    missing = [n for n in _public(module) if not any(a == n or a.endswith(f".{n}") for a in anchors)]
    assert not missing, f"{module}: no reference entry for {missing}"


def test_the_operator_reference_lists_its_parameters(site: Path) -> None:
    page = (site / "reference" / "airflow" / "index.html").read_text()
    start = page.index('id="batch_ops.airflow.operators.OpenAIBatchOperator"')
    end = page.index('id="batch_ops.airflow.orphans.OpenAIBatchOrphanSweepOperator"')
    section = _text_of(page[start:end])
    for parameter in ("endpoint", "input_file_id", "input_path", "requests", "storage_conn_id", "conn_id", "metadata",
                      "deferrable", "poll_interval", "timeout", "fail_on", "fail_on_request_failures",
                      "cancel_on_kill", "reattach"):
        assert re.search(rf"\b{parameter}\b", section), parameter
    assert "Parameters" in section and "templated" in section  # the Args section, rendered as a table


def _text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)))


def test_code_is_highlighted_with_a_copy_button(site: Path) -> None:
    page = (site / "howto" / "operator" / "index.html").read_text()
    assert 'class="highlight"' in page  # pymdownx.highlight
    config = (site / "assets" / "javascripts").exists() and "content.code.copy" in page
    assert config, "the Material theme's copy button is not enabled on the page"

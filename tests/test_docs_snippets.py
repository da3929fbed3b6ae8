"""Every Python block in README.md and docs/ as a reader pastes it: it parses, it names nothing it does
not import (ruff's undefined-name rule over each page's blocks in order), and the blocks marked
``<!-- snippet: runs against the local server ... -->`` run, against the local server."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batch_ops.server import serve_in_background

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNS = "<!-- snippet: runs against the local server"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line, code, meant to run) of each Python block of ``page``."""
    text = page.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, match.start()) + 2, match.group(1), before.startswith(RUNS)))
    return found


ALL = [(page, line, code) for page in PAGES for line, code, _ in blocks(page)]
RUNNABLE = [(page, line, code) for page in PAGES for line, code, runs in blocks(page) if runs]


def _id(item: tuple[Path, int, str]) -> str:
    return f"{item[0].relative_to(ROOT)}:{item[1]}"


def test_the_docs_have_python_blocks_and_some_run() -> None:
    assert len(ALL) >= 15 and len(RUNNABLE) >= 4


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_every_block_parses(item: tuple[Path, int, str]) -> None:
    page, line, code = item
    compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_no_block_uses_a_name_it_does_not_import(tmp_path: Path) -> None:
    for page in PAGES:
        found = blocks(page)
        if found:  # a page's blocks in order, as a reader pastes them one after another
            name = str(page.relative_to(ROOT)).replace("/", "__").removesuffix(".md") + ".py"
            (tmp_path / name).write_text("\n\n".join(code for _, code, _ in found))
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "--no-cache", "--isolated", "--select", "F821", "--target-version",
                           "py311", "--output-format", "concise", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"undefined names in the docs' Python blocks:\n{done.stdout}"


def _requests(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({
        "custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]},
    }) + "\n" for i in range(n)))


@pytest.mark.parametrize("item", RUNNABLE, ids=_id)
def test_blocks_meant_to_run_run(item: tuple[Path, int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """In an empty folder with a ``requests.jsonl``, ``OPENAI_BASE_URL`` on a local server; the waits'
    sleeps are cut short (a snippet polls every 60 s, as a production job would)."""
    import batch_ops.client

    page, line, code = item
    monkeypatch.chdir(tmp_path)
    _requests(tmp_path / "requests.jsonl", 4)
    real_sleep = time.sleep
    monkeypatch.setattr(batch_ops.client, "_sleep", lambda seconds: real_sleep(min(seconds, 0.05)))
    with serve_in_background() as url:
        monkeypatch.setenv("OPENAI_BASE_URL", str(url))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-dev-7f3a")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", str(url).removesuffix("/v1"))  # the SDK's variable: the host
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-local-dev-7f3a")
        scope: dict[str, Any] = {"__name__": "__docs__"}
        exec(compile(code, f"{page.name}:{line}", "exec"), scope)  # running the snippet is the point
    printed = capsys.readouterr().out
    if "print(" in code:
        assert printed.strip(), "the snippet printed nothing"
    if "client.results(" in code and "print(" in code:
        assert "doc-0" in printed and "doc-3" in printed  # every request's result, from the server

"""The ``batch-ops`` command against the local server, over real HTTP on loopback.

Two ways to run it: ``run`` starts a real process (``python -m batch_ops.cli``) and is used where
the exit code, stdout purity under ``--json`` or the entry point itself is the point; the ``cli``
fixture calls the same entry point, :func:`batch_ops.cli.main`, in-process (same argv, same
environment handling) to keep the suite fast. Both check on every call that the API key never
appears in anything the command printed, and that no traceback did.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, BatchStatus
from batch_ops.cli import main
from batch_ops.server import serve_in_background

CHAT = "/v1/chat/completions"
KEY = "sk-cli-test-0123456789abcdef"
_KEY_VARS = ("OPENAI_", "AZURE_OPENAI_")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout must be exactly one JSON object and nothing else."""
        lines = self.stdout.splitlines()
        assert len(lines) == 1, self.stdout
        return json.loads(lines[0])


def _checked(code: int, stdout: str, stderr: str) -> Run:
    assert KEY not in stdout + stderr, "the API key was printed"
    assert "Traceback" not in stderr, stderr
    return Run(code, stdout, stderr)


def run(*args: str | Path, key: str | None = KEY, env: dict[str, str] | None = None, timeout: float = 30) -> Run:
    """``batch-ops ARGS`` as a real process, with only ``key`` (if any) as credentials."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_KEY_VARS) and k != "TTY_COMPATIBLE"}
    clean.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"})
    if key is not None:
        clean["OPENAI_API_KEY"] = key
    clean.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "batch_ops.cli", *map(str, args)],
        capture_output=True, text=True, env=clean, timeout=timeout, check=False,
    )
    return _checked(proc.returncode, proc.stdout, proc.stderr)


Cli = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``batch-ops ARGS`` in-process through ``main``: same environment rules as ``run``."""

    def invoke(*args: str | Path, key: str | None = KEY, env: dict[str, str] | None = None) -> Run:
        with monkeypatch.context() as m:
            for name in list(os.environ):
                if name.startswith(_KEY_VARS) or name == "TTY_COMPATIBLE":
                    m.delenv(name)
            for name, value in {"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}.items():
                m.setenv(name, value)
            if key is not None:
                m.setenv("OPENAI_API_KEY", key)
            capsys.readouterr()
            code = main([str(a) for a in args])
            out, err = capsys.readouterr()
        return _checked(code, out, err)

    return invoke


def chat_file(path: Path, n: int, *, bad: int | None = None) -> Path:
    """``n`` chat requests q-0..q-(n-1); request ``bad`` has no messages (the server answers 400)."""
    lines = []
    for i in range(n):
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}
        if i == bad:
            del body["messages"]
        lines.append({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": body})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def submitted(cli: Cli, url: str, path: Path, *extra: str) -> dict[str, Any]:
    result = cli("submit", path, "--endpoint", CHAT, "--base-url", url, "--json", *extra)
    assert result.code == 0, result.stderr
    return result.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    """One request at a time, 0.2 s each: batches stay in progress long enough to time out or cancel."""
    with serve_in_background(request_latency=0.2, concurrency=1) as url:
        yield url


@pytest.fixture(scope="module")
def strict_url() -> Iterator[str]:
    """Requires a key, and fails the first batch created with token_limit_exceeded."""
    with serve_in_background(api_key="sk-the-right-key-42", token_limit_failures=1) as url:
        yield url


# ---------------------------------------------------------------------------------------------
# help, entry points, import rules
# ---------------------------------------------------------------------------------------------


def test_help_lists_commands_and_exit_codes_without_showing_the_key() -> None:
    result = run("--help")
    assert result.code == 0
    for command in ("submit", "status", "list", "cancel", "results", "validate", "shard", "serve"):
        assert command in result.stdout
    assert "Exit codes" in result.stdout
    assert "5    timed out waiting" in result.stdout
    # The key is in the environment: the command's help names the variable, never its value.
    sub = run("submit", "--help")
    assert sub.code == 0 and "OPENAI_API_KEY" in sub.stdout


def test_version() -> None:
    from batch_ops import __version__

    for flag in ("--version", "-V"):
        shown = run(flag)
        assert shown.code == 0 and shown.stdout.startswith(f"batch-ops {__version__} (openai-batch-ops"), shown


VERBS = ("submit", "status", "list", "orphans", "cancel", "results", "validate", "shard", "job", "serve")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_speaks_one_help_and_error_style(verb: str) -> None:
    """serve (click without typer, so it runs without the cli extra) reads like the typer verbs: click's
    usage line, capitalised sections, METAVARs without braces or type tags, click's error format."""
    shown = run(verb, "--help", key=None)
    assert shown.code == 0, shown
    usage, *rest = shown.stdout.splitlines()
    assert re.fullmatch(rf"Usage: batch-ops {verb} \[OPTIONS\]( [A-Z_]+)*", usage), usage
    assert re.search(r"^  -h, --help +Show this message and exit\.$", shown.stdout, re.M), shown.stdout
    headings = [line for line in rest if line and not line[0].isspace()]
    assert "Options:" in headings and all(h[0].isupper() and h.endswith(":") for h in headings), headings
    # typer 0.29's "{INPUT}" / "INPUT <str>" / "--max-lines <int range>", argparse's "{echo,replay}"
    assert not re.search(r"[{<][a-z ,|]+[}>]", shown.stdout), shown.stdout
    wrong = run(verb, "--no-such-flag", key=None)
    assert wrong.code == 2
    assert wrong.stderr.startswith(f"Usage: batch-ops {verb} [OPTIONS]"), wrong.stderr
    assert f"Try 'batch-ops {verb} " in wrong.stderr and "\nError: " in wrong.stderr, wrong.stderr


def test_console_script_and_serve_forwarding() -> None:
    script = Path(sys.executable).parent / "batch-ops"
    if not script.exists():
        pytest.skip("console script not installed (pip install -e . --no-deps)")
    proc = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0
    assert "--request-latency" in proc.stdout  # the server's own parser answered
    proc = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2  # usage error: BATCH_ID missing
    assert "BATCH_ID" in proc.stderr


def test_import_batch_ops_and_serve_do_not_load_typer() -> None:
    code = (
        "import sys, batch_ops, batch_ops.cli\n"
        "from batch_ops.cli import main\n"
        "assert main(['serve', '--engine', 'upstream']) == 2\n"
        "print(sorted(m for m in ('typer', 'batch_ops.cli.app') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert proc.stdout.strip() == "[]"


def test_usage_errors_exit_2(cli: Cli, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 2)
    assert cli("list", "--limit", "0").code == 2
    bad_meta = cli("submit", path, "--endpoint", CHAT, "--metadata", "novalue")
    assert bad_meta.code == 2 and "KEY=VALUE" in bad_meta.stderr
    assert cli("validate", tmp_path / "missing.jsonl").code == 2
    assert cli("results", "batch_x", "--output", tmp_path / "o.txt", "--format", "xml").code == 2
    assert cli("submit", path).code == 2  # --endpoint is required


# ---------------------------------------------------------------------------------------------
# validate, shard (offline)
# ---------------------------------------------------------------------------------------------


def test_validate_valid_file(cli: Cli, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 3)
    human = cli("validate", path, "--endpoint", CHAT, key=None)
    assert human.code == 0
    assert "valid: 3 requests" in human.stdout
    report = cli("validate", path, "--json", key=None).json()
    assert report["valid"] is True and report["lines"] == 3 and report["problems"] == []
    assert report["endpoint"] == CHAT and report["model"] == "gpt-4o-mini"


def test_validate_prints_every_problem_and_exits_1(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n")
    human = cli("validate", path, key=None)
    assert human.code == 1
    assert f"{path}:2: duplicate_custom_id:" in human.stdout
    assert f"{path}:3: invalid_json_line:" in human.stdout
    assert human.stdout.count("fix: ") == 2
    assert "2 problems in 3 lines" in human.stderr
    machine = run("validate", path, "--json", key=None)
    assert machine.code == 1
    report = machine.json()
    assert report["valid"] is False
    found = [(p["line"], p["rule"]) for p in report["problems"]]
    assert found == [(2, "duplicate_custom_id"), (3, "invalid_json_line")]
    assert all(p["fix"] and p["message"] for p in report["problems"])


def test_shard_prints_parts(cli: Cli, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "big.jsonl", 5)
    machine = cli("shard", path, "--out-dir", tmp_path / "parts", "--max-lines", "2", "--json", key=None)
    assert machine.code == 0
    parts = machine.json()["parts"]
    assert [p["lines"] for p in parts] == [2, 2, 1]
    assert [Path(p["path"]).name for p in parts] == ["big-001.jsonl", "big-002.jsonl", "big-003.jsonl"]
    assert b"".join(Path(p["path"]).read_bytes() for p in parts) == path.read_bytes()
    human = cli("shard", path, "--out-dir", tmp_path / "p2", "--max-bytes", "400", key=None)
    assert human.code == 0
    assert "big-001.jsonl  2 requests" in human.stdout and "3 part(s)" in human.stderr


def test_shard_invalid_file_exits_1_and_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    result = cli("shard", path, "--out-dir", tmp_path / "parts", key=None)
    assert result.code == 1
    assert result.stderr.startswith(f"error: {path}: 1 problem:") and "invalid_json_line" in result.stderr
    assert list((tmp_path / "parts").glob("*.jsonl")) == []


# ---------------------------------------------------------------------------------------------
# configuration and API errors
# ---------------------------------------------------------------------------------------------


def test_submit_without_key_exits_4(server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 2)
    result = run("submit", path, "--endpoint", CHAT, "--base-url", server_url, key=None)
    assert result.code == 4
    assert "\nerror: No API key" in result.stderr  # after the offline validation note
    assert "--api-key" in result.stderr and result.stdout == ""


def test_bad_base_url_exits_4(cli: Cli) -> None:
    result = cli("status", "batch_x", "--base-url", "ftp://example.com/v1", "--json")
    assert result.code == 4
    assert result.json()["error"]["exit_code"] == 4
    assert "must start with http://" in result.stderr


def test_wrong_key_exits_4(cli: Cli, strict_url: str) -> None:
    result = cli("list", "--base-url", strict_url, "--json")
    assert result.code == 4
    error = result.json()["error"]
    assert error["type"] == "AuthenticationError" and error["exit_code"] == 4


def test_unknown_batch_exits_3_with_one_line_and_never_the_flag_key(server_url: str) -> None:
    flag_key = "sk-flag-key-987654321"
    result = run("status", "batch_does_not_exist", "--base-url", server_url, "--api-key", flag_key, "--json")
    assert result.code == 3
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: HTTP 404")
    assert "batch_does_not_exist" in result.stderr
    assert flag_key not in result.stderr + result.stdout
    error = result.json()["error"]
    assert error["type"] == "NotFoundError" and error["exit_code"] == 3


def test_connection_refused_exits_3(cli: Cli) -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = cli("list", "--base-url", url, "--max-retries", "0")
    assert result.code == 3
    assert "Connection refused" in result.stderr and url in result.stderr


def test_submit_invalid_file_exits_1_and_uploads_nothing(server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 2)
    path.write_text(path.read_text().replace(CHAT, "/v1/embeddings", 1))
    with BatchClient(api_key="local", base_url=server_url) as client:
        before = len(client.files.list().data)
        result = run("submit", path, "--endpoint", CHAT, "--base-url", server_url, "--json")
        assert len(client.files.list().data) == before
    assert result.code == 1
    error = result.json()["error"]
    assert error["type"] == "InputValidationError"
    assert [(p["line"], p["rule"]) for p in error["problems"]] == [(1, "url_mismatch")]
    assert "url_mismatch" in result.stderr


# ---------------------------------------------------------------------------------------------
# submit, status, list, cancel
# ---------------------------------------------------------------------------------------------


def test_submit_wait_json(server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 12)
    result = run("submit", path, "--endpoint", CHAT, "--base-url", server_url, "--metadata", "job=cli",
                 "--metadata", "owner=a=b", "--wait", "--poll-interval", "0.05", "--json")
    assert result.code == 0, result.stderr
    batch = result.json()
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert batch["metadata"]["job"] == "cli" and batch["metadata"]["owner"] == "a=b"
    assert batch["output_file_id"]
    assert result.stderr == ""  # --json: no progress, no notes


def test_submit_without_wait_and_idempotency_key(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 2)
    args = ("--idempotency-key", "cli-test-key-1", "--output-expires-after", "7200")
    first = submitted(cli, server_url, path, *args)
    assert first["status"] in ("validating", "in_progress", "completed")
    again = submitted(cli, server_url, path, *args)
    assert again["id"] == first["id"]  # the same key gives back the first batch
    human = cli("submit", path, "--endpoint", CHAT, "--base-url", server_url)
    assert human.code == 0
    assert re.search(r"^batch +batch_", human.stdout, re.M) and "batch-ops status batch_" in human.stderr


def test_submit_wait_human_shows_progress_lines_and_summary(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 8, bad=3)
    result = cli("submit", path, "--endpoint", CHAT, "--base-url", server_url, "--wait", "--poll-interval", "0.05")
    assert result.code == 0, result.stderr
    # Not a terminal: one progress line per change, then the summary on stdout.
    assert "validated 8 requests" in result.stderr
    assert "completed 8/8 (1 failed)" in result.stderr
    assert "batch-ops results batch_" in result.stderr
    assert re.search(r"^status +completed", result.stdout, re.M)
    assert "8/8 done (7 completed, 1 failed)" in result.stdout
    assert re.search(r"^output file +file-", result.stdout, re.M)
    assert re.search(r"^error file +file-", result.stdout, re.M)


def test_submit_wait_on_a_terminal_draws_a_progress_bar(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 6)
    # rich treats stderr as a terminal when TTY_COMPATIBLE=1, as it would in a real console.
    result = cli("submit", path, "--endpoint", CHAT, "--base-url", server_url, "--wait", "--poll-interval", "0.05",
                 env={"TTY_COMPATIBLE": "1"})
    assert result.code == 0, result.stderr
    assert "6/6" in result.stderr and "━" in result.stderr  # the bar, full
    assert "\x1b[?25l" in result.stderr  # the live display hid the cursor while drawing


def test_waited_batch_that_failed_exits_1(strict_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 3)
    result = run("submit", path, "--endpoint", CHAT, "--base-url", strict_url, "--wait", "--poll-interval", "0.05",
                 key="sk-the-right-key-42")
    assert result.code == 1
    assert re.search(r"^status +failed", result.stdout, re.M)
    assert "token_limit_exceeded" in result.stderr and result.stderr.count("error: ") == 1


def test_status_json_and_human(cli: Cli, server_url: str, tmp_path: Path) -> None:
    batch = submitted(cli, server_url, chat_file(tmp_path / "in.jsonl", 4), "--wait", "--poll-interval", "0.05")
    machine = cli("status", batch["id"], "--base-url", server_url, "--json")
    assert machine.code == 0
    got = machine.json()
    assert got["id"] == batch["id"] and got["status"] == "completed"
    assert got["usage"]["total_tokens"] > 0
    human = cli("status", batch["id"], "--base-url", server_url)
    assert human.code == 0
    for text in (batch["id"], "completed", "4/4 done", batch["input_file_id"], batch["output_file_id"],
                 "tokens", "UTC"):
        assert text in human.stdout, text
    assert re.search(r"^created +20\d\d-", human.stdout, re.M)


def test_list_paginates_and_follows_the_cursor(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 1)
    with BatchClient(api_key="local", base_url=server_url) as client:
        mine = [client.submit(path, endpoint=CHAT).id for _ in range(3)]
    first = cli("list", "--limit", "2", "--base-url", server_url, "--json").json()
    assert [b["id"] for b in first["data"]] == mine[::-1][:2]  # newest first
    assert first["has_more"] is True and first["last_id"] == mine[1]
    second = cli("list", "--limit", "2", "--after", first["last_id"], "--base-url", server_url, "--json").json()
    assert second["data"][0]["id"] == mine[0]
    everything = cli("list", "--all", "--limit", "2", "--base-url", server_url, "--json").json()
    ids = [b["id"] for b in everything["data"]]
    assert ids[:3] == mine[::-1] and len(ids) == len(set(ids)) and everything["has_more"] is False
    human = cli("list", "--limit", "2", "--base-url", server_url)
    assert human.code == 0
    assert mine[2] in human.stdout and mine[1] in human.stdout and mine[0] not in human.stdout
    assert f"--after {mine[1]}" in human.stderr


def test_wait_timeout_exits_5_and_status_wait_resumes(cli: Cli, slow_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 20)
    result = run("submit", path, "--endpoint", CHAT, "--base-url", slow_url, "--wait",
                 "--poll-interval", "0.1", "--timeout", "0.5", "--json")
    assert result.code == 5
    error = result.json()["error"]
    assert error["type"] == "BatchTimeoutError"
    batch_id = error["batch"]["id"]
    assert error["batch"]["status"] in ("validating", "in_progress")
    assert f"batch-ops status {batch_id} --wait" in result.stderr
    # Still running: results are refused (1) and another short wait times out again (5).
    not_ready = cli("results", batch_id, "-o", tmp_path / "r.csv", "--base-url", slow_url)
    assert not_ready.code == 1 and "not ready" in not_ready.stderr
    assert not (tmp_path / "r.csv").exists()
    again = cli("status", batch_id, "--wait", "--poll-interval", "0.1", "--timeout", "0.3", "--base-url", slow_url)
    assert again.code == 5


def test_ctrl_c_while_waiting_exits_130_and_names_the_running_batch(tmp_path: Path) -> None:
    # A server of its own where the batch takes 20 s: it cannot end before the interrupt lands, however
    # loaded the machine (on the shared slow server it once ended first, under a full parallel run).
    with serve_in_background(request_latency=1.0, concurrency=1) as slow_url:
        _interrupt_a_wait(slow_url, tmp_path)


def _interrupt_a_wait(slow_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 20)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_KEY_VARS)}
    env.update({"OPENAI_API_KEY": KEY, "NO_COLOR": "1"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_ops.cli", "submit", str(path), "--endpoint", CHAT, "--base-url", slow_url,
         "--wait", "--poll-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # As a shell starts it: Ctrl-C delivered. A child inherits an ignored SIGINT, and some earlier
        # test in the same pytest worker leaves SIGINT ignored (the command then never saw it).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = ""
    while "Created batch batch_" not in seen:  # the batch exists: now interrupt the wait
        line = proc.stderr.readline()
        assert line, f"the command ended early: {seen}"
        seen += line
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=20)
    batch_id = re.search(r"Created batch (batch_\w+)", seen).group(1)  # type: ignore[union-attr]
    assert proc.returncode == 130
    assert f"error: interrupted; batch {batch_id} keeps running" in rest
    assert "Traceback" not in rest and stdout == ""


def test_cancel_wait(cli: Cli, slow_url: str, tmp_path: Path) -> None:
    batch = submitted(cli, slow_url, chat_file(tmp_path / "in.jsonl", 20))
    result = cli("cancel", batch["id"], "--wait", "--poll-interval", "0.05", "--timeout", "20",
                 "--base-url", slow_url, "--json")
    assert result.code == 0, result.stderr
    got = result.json()
    assert got["status"] == "cancelled" and got["cancelled_at"]
    human = cli("status", batch["id"], "--base-url", slow_url)
    assert re.search(r"^status +cancelled", human.stdout, re.M)


def test_cancel_of_a_finished_batch_exits_3(cli: Cli, server_url: str, tmp_path: Path) -> None:
    batch = submitted(cli, server_url, chat_file(tmp_path / "in.jsonl", 2), "--wait", "--poll-interval", "0.05")
    result = cli("cancel", batch["id"], "--base-url", server_url)
    assert result.code == 3  # the API refuses with 400: nothing left to cancel
    assert result.stderr.startswith("error: HTTP 400") and "completed" in result.stderr


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


def test_results_csv_rows_in_input_order(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 15, bad=4)
    batch = submitted(cli, server_url, path, "--wait", "--poll-interval", "0.05")
    out = tmp_path / "out" / "results.csv"
    result = run("results", batch["id"], "--output", out, "--base-url", server_url)
    assert result.code == 0, result.stderr
    assert "15 results: 14 ok, 1 failed" in result.stderr
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["custom_id", "ok", "status_code", "error_code", "content"]
    assert [r[0] for r in rows[1:]] == [f"q-{i}" for i in range(15)]
    for i, (_, ok, status_code, error_code, content) in enumerate(rows[1:]):
        if i == 4:
            assert (ok, status_code) == ("false", "400")
            assert error_code and "messages" in content  # the server's message names the missing field
        else:
            assert (ok, status_code, error_code, content) == ("true", "200", "", f"question {i}")
    assert list(out.parent.iterdir()) == [out]  # no temporary file left beside it


def test_results_jsonl_with_local_input_and_json_summary(cli: Cli, server_url: str, tmp_path: Path) -> None:
    path = chat_file(tmp_path / "in.jsonl", 5, bad=0)
    batch = submitted(cli, server_url, path, "--wait", "--poll-interval", "0.05")
    out = tmp_path / "results.jsonl"
    result = cli("results", batch["id"], "-o", out, "--input", path, "--base-url", server_url, "--json")
    assert result.code == 0
    summary = result.json()
    assert summary["format"] == "jsonl" and summary["output"] == str(out)
    assert (summary["total"], summary["ok"], summary["failed"], summary["missing"]) == (5, 4, 1, 0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(5)]
    assert lines[0]["response"]["status_code"] == 400
    assert lines[1]["response"]["body"]["choices"][0]["message"]["content"] == "question 1"


@pytest.mark.parametrize(
    ("endpoint", "body", "content"),
    [
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hello there"}, "hello there"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi", "dimensions": 8}, "8"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b", "c"]}, "3x16"),
    ],
)
def test_results_csv_content_per_endpoint(
    cli: Cli, server_url: str, tmp_path: Path, endpoint: str, body: dict[str, Any], content: str
) -> None:
    with BatchClient(api_key="local", base_url=server_url) as client:
        batch = client.submit([{"custom_id": "only", "body": body}], endpoint=endpoint)
        assert client.batches.wait(batch.id, poll_interval=0.05).status is BatchStatus.COMPLETED
    out = tmp_path / "r.csv"
    assert cli("results", batch.id, "-o", out, "--base-url", server_url).code == 0
    with out.open(newline="") as fh:
        assert list(csv.reader(fh))[1] == ["only", "true", "200", "", content]


def test_job_runs_many_batches_and_prints_a_summary_line(tmp_path: Path) -> None:
    src = chat_file(tmp_path / "in.jsonl", 120, bad=7)
    out = tmp_path / "out.jsonl"
    with serve_in_background(fail_requests=0.1, seed=6) as url:
        first = run("job", src, "--endpoint", CHAT, "--output", out, "--max-lines", "40", "--max-concurrent", "2",
                    "--poll-interval", "0.05", "--base-url", url, timeout=120)
        summary = json.loads(first.stdout.splitlines()[-1])
        # Run again: the job is finished, so nothing is submitted again and the summary repeats.
        again = run("job", src, "--endpoint", CHAT, "--output", out, "--max-lines", "40", "--base-url", url,
                    "--poll-interval", "0.05", timeout=120)
    assert first.code == 1  # request q-7 is invalid (the server answers 400): failed for good
    assert {k: summary[k] for k in ("total", "succeeded", "failed")} == {"total": 120, "succeeded": 119, "failed": 1}
    assert summary["batches"] >= 3 and summary["resubmitted"] > 0
    assert json.loads(again.stdout.splitlines()[-1])["batches"] == summary["batches"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(120)]
    assert lines[7]["response"]["status_code"] == 400


def test_commands_read_and_write_object_storage(cli: Cli, server_url: str, s3: Any, tmp_path: Path) -> None:
    """INPUT and --output may be s3:// URLs (moto over loopback): validate, submit, results and a job
    whose state lives on S3 — run twice, the second run resumes from S3 and submits nothing."""
    s3.put_file(str(chat_file(tmp_path / "in.jsonl", 30)), "batch-ops-test/cli/in.jsonl")
    src = "s3://batch-ops-test/cli/in.jsonl"
    assert "valid: 30 requests" in cli("validate", src).stdout
    batch = submitted(cli, server_url, src, "--wait", "--poll-interval", "0.05")  # type: ignore[arg-type]
    written = cli("results", batch["id"], "-o", "s3://batch-ops-test/cli/r.csv", "--input", src,
                  "--base-url", server_url, "--json")
    assert written.code == 0 and written.json()["output"] == "s3://batch-ops-test/cli/r.csv"
    s3.invalidate_cache()
    assert len(s3.cat("batch-ops-test/cli/r.csv").decode().splitlines()) == 31  # header + 30 rows
    args = ("job", src, "--endpoint", CHAT, "--output", "s3://batch-ops-test/cli/job/out.jsonl", "--max-lines", "10",
            "--poll-interval", "0.05", "--base-url", server_url)
    first, again = cli(*args), cli(*args)
    assert first.code == 0, first.stderr
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["succeeded"] == 30 and summary["batches"] == 3
    assert summary["state_path"] == "s3://batch-ops-test/cli/job/out.jsonl.state.json"
    assert json.loads(again.stdout.splitlines()[-1])["batches"] == 3
    missing = cli("validate", "s3://batch-ops-test/cli/absent.jsonl")
    assert missing.code == 1 and "file_not_found" in missing.stderr
    assert cli("validate", tmp_path / "absent.jsonl").code == 2

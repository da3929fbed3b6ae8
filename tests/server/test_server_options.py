"""Options, the command line, serve_in_background's handles, and what importing loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops.cli import main as cli_main
from batch_ops.server import ServerOptions, serve_in_background
from batch_ops.server.__main__ import main as server_main


def test_options_round_trip_through_the_command_line() -> None:
    options = ServerOptions(
        port=9999,
        data_dir="/tmp/somewhere",
        engine="replay",
        replay_files=("a.jsonl", "b.jsonl"),
        latency=0.5,
        http_429=0.1,
        drop=0.05,
        fail_requests=0.2,
        token_limit_failures=2,
        expire_after=30.0,
        seed=5,
        access_log=True,
        api_key="sk-secret",
    )
    argv = options.to_argv()
    assert "sk-secret" not in " ".join(argv)
    again = ServerOptions.from_argv(argv, environ=options.to_env())
    assert again == options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"http_429": 1.5}, "between 0 and 1"),
        ({"http_429": 0.6, "http_500": 0.6}, "must not exceed 1"),
        ({"engine": "upstream"}, "needs upstream_url"),
        ({"engine": "replay"}, "needs replay_files"),
        ({"concurrency": 0}, "at least 1"),
        ({"expire_after": 0}, "positive"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerOptions(**options)


def test_cli_forwards_serve(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--help"]) == 0
    assert "--fail-requests" in capsys.readouterr().out
    assert cli_main(["serve", "--engine", "upstream"]) == 2
    assert "needs upstream_url" in capsys.readouterr().err
    assert server_main(["--drop", "0.5", "--http-500", "0.6"]) == 2


def test_python_m_entry_point_refuses_bad_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batch_ops.server", "--http-429", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "not a share between 0 and 1" in done.stderr


def test_background_handles(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serve_in_background(data_dir=str(data)) as url:
        assert url.endswith("/v1") and url.startswith("http://127.0.0.1:") and url.data_dir == data
        first = url.pid
        url.restart()
        assert url.pid != first and httpx.get(url + "/batches").status_code == 200
        url.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/batches")
        url.restart()
        assert httpx.get(url + "/batches").status_code == 200
        last = url.pid
    assert data.is_dir() and (data / "state.sqlite3").exists()  # a given data dir is kept
    assert subprocess.run(["kill", "-0", str(last)], capture_output=True).returncode != 0  # stopped


def test_importing_the_core_or_the_server_package_loads_no_web_framework() -> None:
    code = (
        "import sys, batch_ops; assert 'batch_ops.server' not in sys.modules; "
        "import batch_ops.server; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')], 'web stack loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""How many batches the local server runs at once, and what that costs in open files.

Before: each running batch kept three files open (its input, its partial output and error files)
for its whole run, and nothing bounded how many ran: 500 running batches under a 1,024 file limit
failed 164 of them "inside the server" (200 under a limit of 256: 121 failed). Now at most
``--max-running`` batches run (default 64); the others wait as ``validating``, as the real API
queues them; and a running batch opens its files only for the moment it reads or writes a chunk.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from batch_ops.server.background import free_port

CHAT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@contextlib.contextmanager
def _server(data_dir: Path, *args: str, fd_limit: int | None = None) -> Iterator[str]:
    """``python -m batch_ops.server`` as a process of its own, optionally under a lower open-file limit."""
    port = free_port()

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.server", "--port", str(port), "--data-dir",
                             str(data_dir), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=limit)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz").json().get("pid") == proc.pid:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (data_dir / "server.log").read_text()
            time.sleep(0.05)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _upload(http: httpx.Client, n: int) -> str:
    lines = "".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
                                "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}}) + "\n"
                    for i in range(n))
    answer = http.post("/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"})
    answer.raise_for_status()
    return str(answer.json()["id"])


def _create(http: httpx.Client, file_id: str) -> str:
    answer = http.post("/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
    answer.raise_for_status()
    return str(answer.json()["id"])


def _all(http: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = http.get("/batches", params={"limit": 100, **({"after": after} if after else {})}).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["last_id"]


def test_two_hundred_running_batches_under_256_open_files_all_complete(tmp_path: Path) -> None:
    with _server(tmp_path, "--request-latency", "0.2", "--concurrency", "32", fd_limit=256) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        file_id = _upload(http, 1)
        ids = [_create(http, file_id) for _ in range(200)]
        deadline = time.monotonic() + 60
        while True:
            batches = _all(http)
            if all(b["status"] in TERMINAL for b in batches):
                break
            assert time.monotonic() < deadline, {b["status"] for b in batches}
            time.sleep(0.2)
    statuses = {b["id"]: b["status"] for b in batches}
    failed = [b["errors"] for b in batches if b["status"] != "completed"]
    assert sorted(statuses) == sorted(ids)
    assert not failed, f"{len(failed)} of 200 did not complete, e.g. {failed[0]}"
    assert "failed inside the server" not in (tmp_path / "server.log").read_text()


def test_batches_beyond_max_running_wait_as_validating_and_a_queued_cancel_does_not(tmp_path: Path) -> None:
    with _server(tmp_path, "--max-running", "1", "--request-latency", "0.5", "--concurrency", "1") as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        long_file, short_file = _upload(http, 4), _upload(http, 1)
        first = _create(http, long_file)  # runs ~2 s: 4 requests, one at a time
        second, third = _create(http, short_file), _create(http, short_file)
        time.sleep(0.5)
        seen = {b["id"]: b["status"] for b in _all(http)}
        assert seen == {first: "in_progress", second: "validating", third: "validating"}, seen

        # A cancel of a queued batch ends it now, not after the batch ahead of it.
        started = time.monotonic()
        assert http.post(f"/batches/{third}/cancel").json()["status"] == "cancelling"
        while http.get(f"/batches/{third}").json()["status"] != "cancelled":
            assert time.monotonic() - started < 1.5, "a queued cancel waited for a place"
            time.sleep(0.05)
        assert http.get(f"/batches/{first}").json()["status"] == "in_progress"

        deadline = time.monotonic() + 30
        while True:
            final = {b["id"]: b for b in _all(http)}
            if all(b["status"] in TERMINAL for b in final.values()):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert {k: b["status"] for k, b in final.items()} == {first: "completed", second: "completed", third: "cancelled"}
    # The second started only once the first had ended: one place, taken in creation order.
    assert final[second]["in_progress_at"] >= final[first]["completed_at"]


def test_max_running_is_an_option_of_serve() -> None:
    from batch_ops.server.options import ServerOptions

    assert ServerOptions().max_running == 64
    assert ServerOptions.from_argv(["--max-running", "3"]).max_running == 3
    assert ServerOptions(max_running=5).to_argv()[-2:] == ["--max-running", "5"]

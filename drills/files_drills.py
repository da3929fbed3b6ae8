"""Suite ``files_drills`` (issue 22, items 16-19): files and the local server under input built to hurt.

* ``cli-output`` (22.16): ``batch-ops results -o`` onto a FIFO, a link and a folder: the FIFO stays a
  FIFO and its reader gets the results, the link stays a link and its target holds them, the folder
  is refused before anything is downloaded.
* ``big-line`` (22.17): one 700 MB line without a newline through ``validate``, ``submit``,
  ``shard`` and ``job`` (each a real process, its peak RSS measured), and a 190 MB one uploaded to
  the local server: each refuses it (``line_too_large``, line 1) without holding it.
* ``server-fds`` (22.18): 500 batches created at once on a server held to 1,024 open files: all
  complete, none fails inside the server; the peak of open files is measured.
* ``chunked-upload`` (22.19): a 600 MB chunked upload without a Content-Length: refused once the
  200 MB limit is passed; how much the server read and spooled, and that nothing is left.

The sparse files (a JSON prefix, then a hole) cost no disk, and every reader still goes through
every byte of them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from drills._common import CHAT, Drill

__all__ = ["run"]

MB = 1024 * 1024
KEY = "sk-drill-files-0b5e"


def run(names: list[str], work: Path) -> list[Drill]:
    drills: dict[str, Callable[[Drill, Path], None]] = {
        "cli-output": cli_output, "big-line": big_line, "server-fds": server_fds, "chunked-upload": chunked_upload}
    titles = {"cli-output": "-o onto a FIFO, a link, a folder", "big-line": "one 700 MB line, every path",
              "server-fds": "500 batches under 1,024 open files", "chunked-upload": "600 MB chunked upload"}
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        body: Callable[[Drill], None] = functools.partial(_with_folder, drills[name], folder)
        results.append(Drill(name, titles[name]).run(body))
    return results


def _with_folder(drill: Callable[[Drill, Path], None], folder: Path, d: Drill) -> None:
    drill(d, folder)


def _requests(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
                                        "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}})
                            + "\n" for i in range(n)))
    return path


def _measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run ``argv`` under a parent of its own; its result and its peak RSS in MB."""
    code = textwrap.dedent("""
        import json, resource, subprocess, sys
        proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "peak": peak}))
    """)
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}, check=True)
    found = json.loads(done.stdout)
    return found, float(found["peak"])


# ---------------------------------------------------------------------------------------------
# 22.16 -o onto what is not a plain file
# ---------------------------------------------------------------------------------------------


def cli_output(d: Drill, work: Path) -> None:
    from batch_ops import BatchClient
    from batch_ops.server import serve_in_background

    with serve_in_background() as url, BatchClient(api_key=KEY, base_url=url) as client:
        batch = client.batches.wait(client.submit(_requests(work / "in.jsonl", 20), endpoint=CHAT).id,
                                    poll_interval=0.05, timeout=60)
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": str(url)}
        cli = [sys.executable, "-m", "batch_ops.cli", "results", batch.id, "-o"]

        fifo = work / "results.pipe"
        os.mkfifo(fifo)
        reader = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write(open(sys.argv[1], "
                                   "'rb').read())", str(fifo)], stdout=subprocess.PIPE)
        done, _ = _measured([*cli, str(fifo)], env)
        try:
            got, _ = reader.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            reader.kill()
            got = b""
        kept = stat.S_ISFIFO(os.lstat(fifo).st_mode)
        d.check(done["code"] == 0 and kept and len(got.splitlines()) == 20, "a FIFO is streamed to and stays a FIFO")
        d.figure("FIFO", f"exit {done['code']}, still a FIFO: {kept}, reader got {len(got.splitlines())}/20 lines")

        real = work / "runs" / "r1.jsonl"
        real.parent.mkdir()
        link = work / "latest.jsonl"
        link.symlink_to(real)
        done, _ = _measured([*cli, str(link)], env)
        ok = done["code"] == 0 and link.is_symlink() and len(real.read_text().splitlines()) == 20
        d.check(ok, "a link's target is written and the link kept")
        d.figure("link", f"exit {done['code']}, still a link: {link.is_symlink()}, target holds "
                 f"{len(real.read_text().splitlines()) if real.exists() else 0}/20")

        before = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
        done, _ = _measured([*cli, str(real.parent)], env)
        after = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
        downloads = after.get("GET /v1/files/{id}/content", 0) - before.get("GET /v1/files/{id}/content", 0)
        d.check(done["code"] == 1 and "is a directory" in done["stderr"] and downloads == 0,
                "a folder is refused before any download")
        d.figure("folder", f"exit {done['code']} before any download ({downloads} downloads)")
    d.note("before: the FIFO and the link were replaced by regular files, exit 0 (as root, -o /dev/null "
           "would have replaced /dev/null); the folder was refused only after the download")


# ---------------------------------------------------------------------------------------------
# 22.17 one line over the per-request limit
# ---------------------------------------------------------------------------------------------


def _one_line(path: Path, size: int) -> Path:
    with path.open("wb") as fh:
        fh.write(b'{"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", '
                 b'"messages": [{"role": "user", "content": "')
        fh.truncate(size)
    return path


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def big_line(d: Drill, work: Path) -> None:
    from batch_ops import BatchClient
    from batch_ops.server import serve_in_background

    src = _one_line(work / "big.jsonl", 700 * MB)
    before = {"validate": 46, "submit": 46, "shard": 451, "job": 1473}
    with serve_in_background() as url:
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": str(url)}
        commands = {
            "validate": ["validate", str(src)],
            "submit": ["submit", str(src), "--endpoint", CHAT],
            "shard": ["shard", str(src), "--out-dir", str(work / "parts")],
            "job": ["job", str(src), "--endpoint", CHAT, "--output", str(work / "job" / "out.jsonl")],
        }
        for name, args in commands.items():
            done, peak = _measured([sys.executable, "-m", "batch_ops.cli", *args], env)
            # validate and submit refuse the file from its size (over 200 MB); the others read it.
            text = done["stdout"] + done["stderr"]
            named = "line_too_large" in text or "file_too_large" in text
            d.check(done["code"] == 1 and named and peak < 100, f"{name} refuses the line in bounded memory")
            d.figure(f"{name} peak RSS", f"{peak:.0f} MB (before {before[name]:,})")

        with BatchClient(api_key=KEY, base_url=url) as client:
            grew_from = _vm_hwm(url.pid)
            uploaded = client.files.upload(_one_line(work / "upload.jsonl", 190 * MB))
            batch = client.batches.wait(client.batches.create(input_file_id=uploaded.id, endpoint=CHAT).id,
                                        poll_interval=0.1, timeout=120)
            grew = _vm_hwm(url.pid) - grew_from
        codes = [(e.code, e.line) for e in (batch.errors.data if batch.errors else [])]
        d.check(batch.status.value == "failed" and codes == [("line_too_large", 1)] and grew < 50,
                "the server fails the batch at line 1 in bounded memory")
        code = codes[0][0] if codes else "-"
        d.figure("server validating a 190 MB line", f"+{grew:.0f} MB RSS (before +512), {code}")
    d.note("one line reader (batch_ops.jsonl.read_lines) with the 50 MB per-request cap on every path; before "
           "(main 6bc0ab1, same drill): shard 451 MB, job 1,473 MB, the server +512 MB (invalid_json_line)")


# ---------------------------------------------------------------------------------------------
# 22.18 many running batches, few open files
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _server(data_dir: Path, *args: str, fd_limit: int) -> Iterator[tuple[str, int]]:
    from batch_ops.server.background import free_port

    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batch_ops.server", "--port", str(port), "--data-dir", str(data_dir), *args],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit)))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz").json().get("pid") == proc.pid:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _many(url: str, pid: int, n: int) -> tuple[dict[str, int], int, float]:
    """Create ``n`` batches, wait for all; their statuses, the server's peak of open files, the seconds."""
    peak = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        line = json.dumps({"custom_id": "q", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}})
        file_id = http.post("/files", files={"file": ("in.jsonl", line + "\n")}, data={"purpose": "batch"}).json()["id"]
        started = time.monotonic()
        for _ in range(n):
            http.post("/batches", json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"})
            peak = max(peak, len(os.listdir(f"/proc/{pid}/fd")))
        while True:
            peak = max(peak, len(os.listdir(f"/proc/{pid}/fd")))
            batches, after = [], None
            while True:
                page = http.get("/batches", params={"limit": 100, **({"after": after} if after else {})}).json()
                batches += page["data"]
                if not page["has_more"]:
                    break
                after = page["last_id"]
            statuses: dict[str, int] = {}
            for b in batches:
                statuses[b["status"]] = statuses.get(b["status"], 0) + 1
            if set(statuses) <= {"completed", "failed", "expired", "cancelled"} or time.monotonic() - started > 180:
                return statuses, peak, time.monotonic() - started
            time.sleep(0.2)


def server_fds(d: Drill, work: Path) -> None:
    n = 500
    runs = {"default (--max-running 64)": [], "--max-running 1000 (all at once)": ["--max-running", "1000"]}
    for label, extra in runs.items():
        folder = work / ("default" if not extra else "all")
        with _server(folder, "--request-latency", "2", "--concurrency", "500", *extra, fd_limit=1024) as (url, pid):
            statuses, peak, took = _many(url, pid, n)
        inside = (folder / "server.log").read_text().count("failed inside the server")
        d.check(statuses == {"completed": n} and inside == 0, f"{label}: all {n} complete, none fail inside")
        d.figure(label, f"{statuses.get('completed', 0)}/{n} completed, {inside} failed inside the server, "
                 f"peak {peak} open files, {took:.0f} s")
    d.note("before (main 6bc0ab1, same drill): 3 files open per running batch for its whole run and no cap: "
           "335/500 completed, 165 failed inside the server, peak 1,024 open files")


# ---------------------------------------------------------------------------------------------
# 22.19 a chunked upload far over the limit
# ---------------------------------------------------------------------------------------------


def _spooled(pid: int) -> int:
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("/") and not target.startswith(("/dev/", "/proc/")) and ".sqlite3" not in target \
                    and not target.endswith(".log"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
    return total


def chunked_upload(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    size, boundary = 600 * MB, "drill-boundary"
    with serve_in_background(data_dir=str(work / "server")) as url:
        port = int(str(url).split(":")[2].split("/")[0])
        sock = socket.create_connection(("127.0.0.1", port))
        sent, peak, done = 0, 0, threading.Event()

        def chunk(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        def send() -> None:
            nonlocal sent
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}"
                    "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n").encode()
            piece = b'{"custom_id": "x"}\n' * 3449 + b"\n" * 5
            with contextlib.suppress(OSError):
                sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: drill\r\nTransfer-Encoding: chunked\r\nContent-Type: "
                             f"multipart/form-data; boundary={boundary}\r\n\r\n".encode() + chunk(head))
                while sent < size:
                    sock.sendall(chunk(piece))
                    sent += len(piece)
                sock.sendall(chunk(f"\r\n--{boundary}--\r\n".encode()) + b"0\r\n\r\n")

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _spooled(url.pid))
                time.sleep(0.01)

        threads = [threading.Thread(target=send), threading.Thread(target=watch)]
        started = time.monotonic()
        for t in threads:
            t.start()
        answer = b""
        sock.settimeout(120)
        with contextlib.suppress(OSError):
            while b"}}" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        took = time.monotonic() - started
        done.set()
        sock.close()
        for t in threads:
            t.join(60)
        status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        files = url.data_dir / "files"
        left = sorted(p.name for p in files.iterdir()) if files.exists() else []
        spool_after = _spooled(url.pid)
    d.check("400" in status and b"file_too_large" in answer, "the upload is refused with file_too_large")
    d.check(sent < 260 * MB and peak <= 201 * MB, "refused once the 200 MB limit was passed, not at the end")
    d.check(left == [] and spool_after == 0, "nothing of it is left on disk")
    d.figure("answer", f"{status.removeprefix('HTTP/1.1 ')} after {took:.1f} s")
    d.figure("read by the server", f"{sent / MB:.0f} of 600 MB; spool peak {peak / MB:.0f} MB; left on disk "
             f"{len(left)} files, {spool_after} bytes")
    d.note("before (main 6bc0ab1, same drill): 600 of 600 MB read, spool peak 594 MB, the 400 after 0.9-3.0 s")

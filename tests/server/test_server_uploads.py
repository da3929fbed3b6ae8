"""Uploads over the server's limit are cut off while they stream, chunked or not; nothing stays on disk.

Before: a 600 MB chunked upload (no Content-Length) was spooled whole (600 MB on disk) before the
400, 3 s later. Now the body is counted as it arrives and refused once it passes the limit
(``--upload-max-bytes``, default 200 MB, OpenAI's limit for a batch input file): the same upload gets
its 400 after ~200 MB, and the spool is gone with it.

Each upload is real HTTP/1.1 over a socket: a sender thread streams the body in chunks while the
test reads the answer, as a client that sends a body it cannot size would.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from batch_ops.server import ServerURL, serve_in_background

MB = 1024 * 1024
_BOUNDARY = "batch-ops-test-boundary"


class _ChunkedUpload:
    """``POST /v1/files`` with ``Transfer-Encoding: chunked`` and a file part of ``size`` bytes
    (``path="/v1/batches"``: a JSON body of that size instead)."""

    def __init__(self, url: ServerURL, size: int, *, path: str = "/v1/files") -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.size = size
        self.sent = 0  # file bytes the server took before it stopped reading
        self.peak_spool = 0
        self._pid = url.pid
        self._path = path
        self._done = threading.Event()

    def _send(self) -> None:
        if self._path == "/v1/files":
            kind = f"multipart/form-data; boundary={_BOUNDARY}"
            head = (f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
                    f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode()
            piece = (b'{"custom_id": "x", "method": "POST"}\n' * 2000)[: 64 * 1024]
            tail = f"\r\n--{_BOUNDARY}--\r\n".encode()
        else:
            kind, head, piece, tail = "application/json", b'{"metadata": {"x": "', b"x" * 64 * 1024, b'"}}'
        try:
            self.sock.sendall(f"POST {self._path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer k\r\n"
                              f"Transfer-Encoding: chunked\r\nContent-Type: {kind}\r\n\r\n".encode() + _chunk(head))
            while self.sent < self.size:
                self.sock.sendall(_chunk(piece))
                self.sent += len(piece)
            self.sock.sendall(_chunk(tail) + b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading and closed: what the test is about

    def _watch(self) -> None:
        while not self._done.is_set():
            self.peak_spool = max(self.peak_spool, _spooled(self._pid))
            time.sleep(0.01)

    def run(self) -> tuple[int, dict[str, Any]]:
        """Send the body while reading the answer; its status and JSON body."""
        threads = [threading.Thread(target=self._send), threading.Thread(target=self._watch)]
        for t in threads:
            t.start()
        answer = b""
        try:
            self.sock.settimeout(60)
            while not _complete(answer):
                data = self.sock.recv(65536)
                if not data:
                    break
                answer += data
        finally:
            self._done.set()
            self.sock.close()
            for t in threads:
                t.join(60)
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _spooled(pid: int) -> int:
    """Bytes in the regular files the server holds open outside its database (an upload's spool)."""
    total = 0
    with_fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(with_fds):
        try:
            target = os.readlink(with_fds / fd)
            if target.startswith("/") and not target.startswith(("/dev/", "/proc/")) and ".sqlite3" not in target \
                    and not target.endswith(".log"):
                total += os.stat(with_fds / fd).st_size
        except OSError:
            continue
    return total


def _stored(url: ServerURL) -> list[str]:
    files = url.data_dir / "files"
    return sorted(p.name for p in files.iterdir()) if files.exists() else []


def test_a_chunked_upload_over_the_default_limit_is_cut_off_at_200_mb() -> None:
    with serve_in_background() as url:
        upload = _ChunkedUpload(url, 260 * MB)
        started = time.monotonic()
        status, body = upload.run()
        took = time.monotonic() - started
        assert status == 400 and body["error"]["code"] == "file_too_large", body
        assert "209,715,200 bytes (200 MB)" in body["error"]["message"]
        # Refused once 200 MB had arrived (plus what the sockets buffer), not after all 260 MB.
        assert upload.sent < 240 * MB, f"the server read {upload.sent / MB:.0f} MB of a 260 MB upload"
        assert upload.peak_spool <= 200 * MB + 128 * 1024, f"spooled {upload.peak_spool / MB:.0f} MB"
        assert _spooled(url.pid) == 0 and _stored(url) == []
        assert took < 30


def test_the_limit_is_an_option_and_holds_for_chunked_and_declared_lengths() -> None:
    with serve_in_background(upload_max_bytes=MB) as url:
        upload = _ChunkedUpload(url, 50 * MB)
        status, body = upload.run()
        assert status == 400 and body["error"]["code"] == "file_too_large", body
        assert "1,048,576 bytes (1 MB)" in body["error"]["message"]
        assert upload.sent < 20 * MB, f"the server read {upload.sent / MB:.0f} MB with a 1 MB limit"
        assert upload.peak_spool <= 2 * MB

        # A declared Content-Length over the limit: refused before a byte is read.
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer k"}) as http:
            answer = http.post("/files", files={"file": ("in.jsonl", b"x" * (2 * MB))}, data={"purpose": "batch"})
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "file_too_large"
            # The server carries on: a file within the limit is stored.
            line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": []}}) + "\n"
            ok = http.post("/files", files={"file": ("in.jsonl", line.encode())}, data={"purpose": "batch"})
            assert ok.status_code == 200, ok.text
        assert _stored(url) == [ok.json()["id"]]
        assert _spooled(url.pid) == 0


def test_a_json_body_is_cut_off_at_what_one_request_may_carry() -> None:
    # The same guard on the JSON routes (create a batch, the echo endpoints): 50 MB, the per-request
    # limit; before, a chunked body of any size was read whole into memory first.
    with serve_in_background() as url:
        before = _vm_hwm(url.pid)
        upload = _ChunkedUpload(url, 120 * MB, path="/v1/batches")
        status, body = upload.run()
        assert status == 413 and body["error"]["code"] == "request_too_large", body
        assert upload.sent < 100 * MB, f"the server read {upload.sent / MB:.0f} MB of a 120 MB JSON body"
        assert _vm_hwm(url.pid) - before < 120, "the body was held in memory"
        assert httpx.get(url.removesuffix("/v1") + "/healthz").status_code == 200


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")

"""Suite ``receiver_drills`` (issue 22, items 3 and 4): the webhook receiver under what anyone can send it.

Its ``/openai`` endpoint must be public (OpenAI has to reach it), so anyone can:

- ``receiver-body``: send an unsigned 300 MB body, with a Content-Length and chunked. The
  receiver must answer 413 while the body streams, and its peak RSS must not move (before the
  fix it read the body whole: RSS 50 -> 650 MB).
- ``receiver-slow``: hold 1,000 connections open (half of them stop in the middle of their
  headers, half trickle a body a byte at a time), and 1,100 of them under an open files limit of
  1,024, as in the issue. A genuine signed delivery must be answered within 1 s meanwhile, the
  slow ones cut after the read timeout, and RSS stay bounded (before: all 1,100 still held after
  30 s and the genuine delivery timed out).

The receiver is ``batch-ops webhooks serve`` as users run it (a subprocess), with its defaults.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from drills._common import Drill

__all__ = ["run"]

SECRET = "whsec_" + base64.b64encode(b"batch-ops-drill-receiver-secret!").decode()
BODY = 300_000_000
#: The receiver's default read timeout (batch_ops.webhooks.serve.READ_TIMEOUT).
READ_TIMEOUT = 10.0


def run(names: list[str], work: Path) -> list[Drill]:
    # This process opens the slow clients' 1,100 sockets.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bodies = {"receiver-body": ("an unsigned 300 MB body, plain and chunked", big_bodies),
              "receiver-slow": ("1,000 slow clients and a genuine delivery", slow_clients)}
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        title, body = bodies[name]
        results.append(Drill(name, title).run(body))
    return results


class Receiver:
    def __init__(self, proc: subprocess.Popen[str], port: int, line: str) -> None:
        self.proc, self.port, self.line = proc, port, line

    def status(self, field: str) -> int:
        """A VmRSS/VmHWM line of the receiver's /proc status, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field}")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@contextlib.contextmanager
def receiver(open_files: int | None = None) -> Iterator[Receiver]:
    from batch_ops.server.background import free_port

    def limit() -> None:
        if open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port)],
                            env={**os.environ, "OPENAI_WEBHOOK_SECRET": SECRET}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the receiver did not start: {line}")
        time.sleep(0.5)
        yield Receiver(proc, port, line.strip())
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answer(sock: socket.socket, timeout: float) -> bytes:
    sock.setblocking(True)
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError, BrokenPipeError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def send_body(port: int, size: int, *, chunked: bool) -> tuple[str, int, float]:
    """Send an unsigned ``size``-byte body as fast as the receiver takes it, watching for its answer:
    (status line, body bytes sent before the answer or the close, seconds)."""
    head = b"POST /openai HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % size
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        pending = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < size or pending:
                readable, writable, _ = select.select([sock], [sock], [], 10)
                if readable or not writable:
                    break
                if not pending:
                    piece = b"x" * min(1 << 20, size - sent)
                    pending = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                    sent += len(piece)
                    if chunked and sent == size:
                        pending += b"0\r\n\r\n"
                pending = pending[sock.send(pending):]
        status = _answer(sock, 10).split(b"\r\n", 1)[0].decode(errors="replace")
    return status or "(closed without an answer)", sent, time.monotonic() - started


def big_bodies(d: Drill) -> None:
    with receiver() as rx:
        before = rx.status("VmHWM")
        for label, chunked in (("Content-Length", False), ("chunked", True)):
            status, sent, took = send_body(rx.port, BODY, chunked=chunked)
            peak = rx.status("VmHWM")
            d.check(" 413 " in status + " ", f"{label}: answered 413 (got {status!r})")
            d.check(peak - before < 10_000_000, f"{label}: peak RSS grew {(peak - before) / 1e6:.1f} MB (< 10 MB)")
            d.figure(f"300 MB {label}", f"{status.partition(' ')[2]}, after {sent / 1e6:.1f} MB sent, "
                     f"{took:.2f} s; peak RSS {before / 1e6:.0f} -> {peak / 1e6:.0f} MB")
        d.check(rx.proc.poll() is None, "the receiver still runs")


async def _slow(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /openai HTTP/1.1\r\nHost: x\r\nContent-Le" if i % 2 else
                     b"POST /openai HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        conns.append((reader, writer))
    return conns


async def _trickle(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for i, (_, writer) in enumerate(conns):
            if i % 2 == 0 and not writer.is_closing():
                writer.write(b" ")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _held(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of ``conns`` the server still holds open."""
    async def open_(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(), 0.2)
        except asyncio.TimeoutError:
            return True
        except (ConnectionResetError, BrokenPipeError):
            return False
        return False
    return sum(await asyncio.gather(*(open_(r) for r, _ in conns)))


async def _deliver(port: int, event_id: str) -> tuple[int, float]:
    import httpx

    from batch_ops.webhooks.verify import sign

    body = json.dumps({"id": event_id, "object": "event", "created_at": int(time.time()), "type": "batch.completed",
                       "data": {"id": f"batch_{event_id}"}})
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(f"http://127.0.0.1:{port}/openai", content=body,
                                       headers=sign(SECRET, event_id, body))
        return answer.status_code, time.monotonic() - started
    except httpx.HTTPError:
        return 0, time.monotonic() - started


async def _under_slow_clients(d: Drill, label: str, n: int, open_files: int | None) -> None:
    with receiver(open_files) as rx:
        d.note(rx.line)
        conns = await _slow(rx.port, n)
        stop = asyncio.Event()
        trickling = asyncio.create_task(_trickle(conns, stop))
        try:
            await asyncio.sleep(1.0)
            latencies = []
            for i in range(3):
                status, took = await _deliver(rx.port, f"evt_{label}_{i}")
                d.check(status == 200, f"{label}: genuine delivery {i} answered 200 (got {status or 'no answer'})")
                latencies.append(took)
            slowest = max(latencies)
            d.check(slowest <= 1.0, f"{label}: genuine deliveries answered within 1 s (max {slowest:.2f} s)")
            rss, files = rx.status("VmRSS"), rx.open_files()
            await asyncio.sleep(READ_TIMEOUT + 2.5)
            held = await _held(conns)
            d.check(held == 0, f"{label}: every slow client cut after the read timeout ({held} of {n} still held)")
            peak = rx.status("VmHWM")
            d.check(peak < 200_000_000, f"{label}: peak RSS {peak / 1e6:.0f} MB (< 200 MB)")
            d.figure(label, f"genuine delivery max {max(latencies):.2f} s; receiver {files} open files, RSS "
                     f"{rss / 1e6:.0f} MB (peak {peak / 1e6:.0f} MB); held after {READ_TIMEOUT + 2.5:.0f} s: {held}")
        finally:
            stop.set()
            await trickling
            for _, writer in conns:
                writer.close()


def slow_clients(d: Drill) -> None:
    asyncio.run(_under_slow_clients(d, "1,000 slow clients", 1000, None))
    asyncio.run(_under_slow_clients(d, "1,100 slow clients, 1,024 open files", 1100, 1024))

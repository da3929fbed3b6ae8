"""A deliberately broken Batch API server, for tests and drills of what a client does when the wire
misbehaves: the answers a proxy, a gateway or a future API version may really send.

It speaks just enough HTTP/1.1 (one request per connection) to answer every ``/v1`` call with the
chosen misbehaviour:

========================  ======================================================================
``html``                  200 with an HTML page (a captive portal, a gateway's error page)
``truncated``             200 with JSON cut off half-way
``missing_fields``        200 with a JSON object that is not a batch (no ``id``, no ``status``)
``unknown_status``        200 with a batch whose status the client has never heard of (``queued``)
``azure``                 Azure OpenAI's documented answer: null request counts, no ``endpoint``
``redirect``              302 to the same API on another origin (which records what it received)
``redirect_same``         302 to the same path on this origin, then a normal answer
``silent``                accepts the connection, reads the request, never answers
``trickle``               200 whose body arrives one byte every ``trickle_interval`` seconds
``echo_key``              401 whose error message repeats the request's credentials
========================  ======================================================================

Examples:
    >>> with serve_hostile("unknown_status") as hostile:   # doctest: +SKIP
    ...     BatchClient(api_key="k", base_url=hostile.url).batches.retrieve("batch_1").status
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MODES", "HostileServer", "serve_hostile"]

MODES = ("html", "truncated", "missing_fields", "unknown_status", "azure", "redirect", "redirect_same", "silent",
         "trickle", "echo_key")


def _batch(batch_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-in",
            "completion_window": "24h", "status": "in_progress", "created_at": 1_700_000_000,
            "request_counts": {"total": 2, "completed": 1, "failed": 0}, **fields}


#: Azure OpenAI's documented create/retrieve answer (learn.microsoft.com, "Batch API", 2024-10-21):
#: ``request_counts`` all null while validating, no ``endpoint`` key, capitalised-looking fields kept.
AZURE_BATCH = {
    "cancelled_at": None, "cancelling_at": None, "completed_at": None, "completion_window": "24h",
    "created_at": 1_705_000_000, "error_file_id": None, "expired_at": None, "expires_at": 1_705_086_400,
    "failed_at": None, "finalizing_at": None, "id": "batch_6caaf24d-54a5-46be-b1b7-518884fcbdde",
    "in_progress_at": None, "input_file_id": "file-5e5a1df3a8d34e6e8f6f63b1a0c4f1a2", "errors": None,
    "metadata": None, "object": "batch", "output_file_id": None,
    "request_counts": {"total": None, "completed": None, "failed": None}, "status": "validating",
}


@dataclass
class HostileServer:
    """The running server: its base ``url`` (with ``/v1``) and what it saw."""

    mode: str
    trickle_interval: float = 2.0
    url: str = ""
    #: Request heads received, oldest first (method, path, lower-cased headers).
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    #: Request heads received by the redirect target (the "other origin").
    seen_elsewhere: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop, repr=False)
    _other_url: str = ""

    async def _read(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        return method, path, headers

    @staticmethod
    def _head(status: int, reason: str, headers: dict[str, str], length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _answer(self, writer: asyncio.StreamWriter, status: int, body: bytes, *,
                      content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        reason = {200: "OK", 302: "Found", 401: "Unauthorized"}.get(status, "Status")
        writer.write(self._head(status, reason, {"Content-Type": content_type, **(headers or {})}, len(body)) + body)
        await writer.drain()

    def _normal(self, path: str) -> bytes:
        if path.split("?")[0].rstrip("/").endswith("/batches"):
            return json.dumps({"object": "list", "data": [_batch("batch_1")], "first_id": "batch_1",
                               "last_id": "batch_1", "has_more": False}).encode()
        return json.dumps(_batch(path.split("?")[0].rstrip("/").rsplit("/", 1)[-1])).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers = await self._read(reader)
            self.seen.append((method, path, headers))
            mode = self.mode
            if mode == "html":
                await self._answer(writer, 200, b"<html><body><h1>Please log in to the network</h1></body></html>",
                                   content_type="text/html")
            elif mode == "truncated":
                await self._answer(writer, 200, self._normal(path)[:40])
            elif mode == "missing_fields":
                await self._answer(writer, 200, b'{"object": "batch", "note": "not much of a batch"}')
            elif mode == "unknown_status":
                await self._answer(writer, 200, json.dumps(_batch("batch_1", status="queued")).encode())
            elif mode == "azure":
                await self._answer(writer, 200, json.dumps(AZURE_BATCH).encode())
            elif mode == "redirect":
                await self._answer(writer, 302, b"", headers={"Location": self._other_url + path.split("/v1", 1)[-1]})
            elif mode == "redirect_same":
                if "redirected=1" in path:
                    await self._answer(writer, 200, self._normal(path))
                else:
                    sep = "&" if "?" in path else "?"
                    await self._answer(writer, 302, b"", headers={"Location": f"{path}{sep}redirected=1"})
            elif mode == "silent":
                await reader.read()  # until the client gives up and closes
            elif mode == "trickle":
                body = self._normal(path)
                writer.write(self._head(200, "OK", {"Content-Type": "application/json"}, len(body)))
                for byte in body:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(self.trickle_interval)
            elif mode == "echo_key":
                said = headers.get("authorization") or headers.get("api-key") or ""
                error = {"error": {"message": f"Incorrect API key provided: {said}", "type": "invalid_request_error",
                                   "param": None, "code": "invalid_api_key"}}
                await self._answer(writer, 401, json.dumps(error).encode())
            else:
                await self._answer(writer, 200, self._normal(path))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # The server is stopping: end quietly (asyncio's stream callback would report a
            # cancelled handler as an error).
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _elsewhere(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, headers = await self._read(reader)
            self.seen_elsewhere.append((method, path, headers))
            await self._answer(writer, 200, self._normal(path))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[HostileServer]:
        thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        thread.start()

        async def start() -> tuple[asyncio.Server, asyncio.Server]:
            main = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            # 127.0.0.2 is loopback too, but another origin: a redirect there must not carry the key.
            other = await asyncio.start_server(self._elsewhere, "127.0.0.2", 0)
            return main, other

        main, other = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{main.sockets[0].getsockname()[1]}/v1"
        self._other_url = f"http://127.0.0.2:{other.sockets[0].getsockname()[1]}/v1"
        try:
            yield self
        finally:
            async def stop() -> None:
                for server in (main, other):
                    server.close()
                for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                    task.cancel()

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(5)


@contextlib.contextmanager
def serve_hostile(mode: str, *, trickle_interval: float = 2.0) -> Iterator[HostileServer]:
    """Run a :class:`HostileServer` in a thread of its own; yields it (``.url`` is the base URL)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    with HostileServer(mode, trickle_interval=trickle_interval).running() as server:
        yield server

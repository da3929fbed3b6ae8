"""Serving the receiver on the open internet: uvicorn, with the connection limits uvicorn lacks.

The receiver's endpoint is public (OpenAI must reach it), so anyone can open connections to it.
uvicorn bounds idle keep-alive connections but not a request that never finishes arriving: a
client that sends half its headers, or trickles its body a byte a second, holds a connection
(and a file descriptor) for as long as it likes, and a thousand of them exhaust the process's
descriptors so that OpenAI's next delivery cannot connect. :func:`run_receiver` runs uvicorn
with a :class:`ConnectionGuard` on every connection:

- **read timeout**: a request must arrive in full (headers and body) within ``read_timeout``
  seconds of its first byte (of the connection, for the first request); a slower one is cut. A
  request that has arrived is the app's (a long-poll on ``/events`` may last a minute).
- **connection cap**: at most ``max_connections`` at once; at the cap, a new connection cuts the
  oldest one still sending its request (the likeliest to be an attacker's, and the one a genuine
  sender would have finished long ago), so a genuine delivery still gets in. When every
  connection holds a request that has fully arrived, the new one is refused.
- **descriptors**: the soft ``RLIMIT_NOFILE`` is raised to the hard one at start, and the cap is
  kept below it with room for the process's own files and for what asyncio accepts in one go
  (the listen backlog, at most 128) before the guard sees it.

Examples:
    >>> connection_cap(1000, open_files=1024)
    704
    >>> connection_cap(1000, open_files=65536)
    1000
    >>> connection_cap(1000, open_files=None)
    1000
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "ConnectionGuard", "accept_backlog", "connection_cap",
           "guarded_protocol", "raise_open_files_limit", "run_receiver"]

log = logging.getLogger(__name__)

#: Seconds a request may take to arrive in full. OpenAI's deliveries are a few hundred bytes.
READ_TIMEOUT = 10.0
#: Connections at once: OpenAI's deliveries plus one long-poll per triggerer or worker process.
MAX_CONNECTIONS = 1000
#: Seconds between two looks for connections past their read timeout.
_SWEEP_EVERY = 0.5
#: Seconds between two log lines about cut connections.
_REPORT_EVERY = 60.0
#: The largest listen backlog (nginx's default is 511; the queue is drained at every wake-up).
_MAX_BACKLOG = 128


def raise_open_files_limit() -> int | None:
    """Raise the soft limit of open files to the hard one; the soft limit now (None: unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a container may forbid it: keep the soft limit
            log.info("could not raise the open files limit from %d to %d: %s", soft, hard, exc)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def accept_backlog(open_files: int | None) -> int:
    """The listen backlog: how many connections the kernel queues, and asyncio accepts in one go.

    Examples:
        >>> accept_backlog(1024), accept_backlog(256), accept_backlog(None)
        (128, 32, 128)
    """
    return _MAX_BACKLOG if open_files is None else max(16, min(_MAX_BACKLOG, open_files // 8))


def connection_cap(max_connections: int, *, open_files: int | None) -> int:
    """``max_connections``, lowered to fit under the open files limit.

    Room is left for the process's own files (the listening socket, logs, the Prefect client's
    connections: a quarter of the limit, at most 64) and for two backlogs: asyncio accepts up to a
    backlog of connections in one go before the guard sees any of them, and it may do so twice
    before the first are admitted (or the oldest cut).
    """
    if open_files is None:
        return max_connections
    room = open_files - min(64, open_files // 4) - 2 * accept_backlog(open_files)
    return max(1, min(max_connections, room))


class ConnectionGuard:
    """The connections of one server: which are still sending a request, and since when.

    Args:
        read_timeout: seconds a request may take to arrive in full.
        max_connections: connections at once (see the module for what happens at the cap).
    """

    def __init__(self, *, read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._clock = clock
        self._open: set[_GuardedProtocol] = set()
        # Those still sending a request -> when it started, oldest first.
        self._reading: OrderedDict[_GuardedProtocol, float] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        #: What the guard did: connections cut for being slow, cut at the cap, refused at the cap.
        self.counts = {"slow": 0, "evicted": 0, "refused": 0}
        self._reported = dict(self.counts)
        self._reported_at = clock()

    def admit(self, conn: _GuardedProtocol) -> bool:
        """Take a new connection (it starts reading); False when it must be refused."""
        if len(self._open) >= self.max_connections:
            if not self._reading:
                self.counts["refused"] += 1
                return False
            oldest = next(iter(self._reading))
            self.counts["evicted"] += 1
            self._cut(oldest)
        self._open.add(conn)
        self.start_reading(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._sweep)
        return True

    def start_reading(self, conn: _GuardedProtocol) -> None:
        """A request starts arriving on ``conn`` (kept from the first byte if already reading)."""
        if conn in self._open and conn not in self._reading:
            self._reading[conn] = self._clock()

    def done_reading(self, conn: _GuardedProtocol) -> None:
        """The request on ``conn`` has arrived in full: it is the app's now."""
        self._reading.pop(conn, None)

    def release(self, conn: _GuardedProtocol) -> None:
        self._open.discard(conn)
        self._reading.pop(conn, None)

    def _cut(self, conn: _GuardedProtocol) -> None:
        self.release(conn)
        conn.transport.abort()  # now, with anything unsent: a slow client gets no more of our time

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self._clock() - self.read_timeout
        while self._reading:
            conn, since = next(iter(self._reading.items()))
            if since > deadline:
                break
            self.counts["slow"] += 1
            self._cut(conn)
        self._report()
        if self._open:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._sweep)

    def _report(self) -> None:
        # Once a minute at most, so that an attack is visible in the log without flooding it.
        if self.counts == self._reported or self._clock() - self._reported_at < _REPORT_EVERY:
            return
        new = {k: v - self._reported[k] for k, v in self.counts.items()}
        log.warning("receiver connections cut: %d slow (a request not in within %g s), %d at the cap of %d; "
                    "%d refused (every connection busy)", new["slow"], self.read_timeout, new["evicted"],
                    self.max_connections, new["refused"])
        self._reported, self._reported_at = dict(self.counts), self._clock()


class _GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol, reporting to a guard when a request starts and ends arriving.

    Only ``cycle`` (with ``more_body`` and ``response_complete``) is read from uvicorn's
    protocol: a request is arriving from its first byte until its body is complete.
    """

    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # the first bytes of a next request
            self.guard.start_reading(self)
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            self.guard.done_reading(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        super().connection_lost(exc)


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for connections under ``guard``."""
    return type("GuardedH11Protocol", (_GuardedProtocol,), {"guard": guard})


def run_receiver(
    app: Any,
    *,
    host: str,
    port: int,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    on_listening: Callable[[int, ConnectionGuard], None] | None = None,
) -> None:
    """Serve ``app`` (the receiver) with uvicorn under a :class:`ConnectionGuard` until stopped.

    Args:
        host, port: where to listen (port 0: a free one).
        read_timeout: seconds a request may take to arrive in full.
        max_connections: connections at once (lowered to fit under the open files limit).
        on_listening: called with the bound port and the guard once the socket listens.
    """
    import uvicorn

    open_files = raise_open_files_limit()
    cap = connection_cap(max_connections, open_files=open_files)
    guard = ConnectionGuard(read_timeout=read_timeout, max_connections=cap)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.servers and on_listening is not None:
                on_listening(self.servers[0].sockets[0].getsockname()[1], guard)

    # Long-polls hold requests open for up to 25 s; on SIGTERM they are cut after 2 s (subscribers
    # reconnect), so a restart or a rolling deploy is quick.
    _Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                           timeout_graceful_shutdown=2, loop="asyncio", http=guarded_protocol(guard),
                           backlog=accept_backlog(open_files))).run()

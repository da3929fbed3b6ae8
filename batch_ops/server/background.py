"""``serve_in_background()``: the local server in a subprocess, for tests, demos and benchmarks.

A subprocess rather than a thread: tests can ``kill -9`` it mid-batch and start it again on the
same data dir, and a benchmark's client does not share the server's GIL.

Examples:
    >>> with serve_in_background(seed=1) as url:  # doctest: +SKIP
    ...     url, url.pid, url.data_dir
    ...     url.kill(); url.restart()          # crash and recover on the same port and data
    ('http://127.0.0.1:54321/v1', 4242, PosixPath('/tmp/batch_ops_server_x1y2'))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from batch_ops.server.options import ServerOptions

__all__ = ["ServerURL", "free_port", "serve_in_background"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _ServerProcess:
    """Starts, kills and stops one server process; only ever signals its own child."""

    def __init__(self, options: ServerOptions, *, startup_timeout: float) -> None:
        self.options = options
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = options.data_path / "server.log"
        self._log: IO[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}/healthz"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the server (pid {self.process.pid}) is still running; stop or kill it first")
        env = dict(os.environ)
        env.update(self.options.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        # The child must import this very batch_ops, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.options.data_path.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batch_ops.server", *self.options.to_argv()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with status {self.process.returncode} while starting:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    answer = http.get(self.health_url)
                    # The pid check makes sure a previous server on this port is not the one answering.
                    if answer.status_code == 200 and answer.json().get("pid") == self.process.pid:
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the server did not answer {self.health_url} within {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed, nothing is shut down."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._close_log()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if the server does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ServerURL(str):
    """The base URL (ending in ``/v1``) of a background server, with handles to control it.

    Attributes:
        pid: the current server process id (changes after ``restart()``).
        data_dir: the server's data directory.
        options: the options it runs with.

    Examples:
        >>> with serve_in_background() as url:  # doctest: +SKIP
        ...     openai.OpenAI(base_url=url, api_key="any").batches.list()
    """

    _server: _ServerProcess

    def __new__(cls, value: str, server: _ServerProcess) -> ServerURL:
        self = super().__new__(cls, value)
        self._server = server
        return self

    @property
    def pid(self) -> int:
        assert self._server.process is not None
        return self._server.process.pid

    @property
    def data_dir(self) -> Path:
        return self._server.options.data_path

    @property
    def options(self) -> ServerOptions:
        return self._server.options

    @property
    def log_path(self) -> Path:
        return self._server.log_path

    def kill(self) -> None:
        """SIGKILL the server (a crash: ``kill -9``)."""
        self._server.kill()

    def restart(self) -> None:
        """Start the server again on the same port and data dir (stopping it first if it runs)."""
        self._server.stop()
        self._server.start()

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL after 10 s)."""
        self._server.stop()


@contextlib.contextmanager
def serve_in_background(*, startup_timeout: float = 30.0, **options: Any) -> Iterator[ServerURL]:
    """Run the local server in a subprocess; yield its base URL (a ``ServerURL``, ending in ``/v1``).

    Takes the ``ServerOptions`` fields as keywords (``engine``, ``http_429``, ``seed``, ...). Without
    ``port`` it picks a free one; without ``data_dir`` it uses a temporary directory, removed on
    exit. On exit the server gets SIGTERM, then SIGKILL if it lingers.

    Examples:
        >>> with serve_in_background(fail_requests=0.1, seed=3) as url:  # doctest: +SKIP
        ...     ...
    """
    temp_dir = None
    if options.get("data_dir") is None:
        temp_dir = tempfile.mkdtemp(prefix="batch_ops_server_")
        options["data_dir"] = temp_dir
    if not options.get("port"):
        options["port"] = free_port(options.get("host", "127.0.0.1"))
    opts = ServerOptions(**options)
    server = _ServerProcess(opts, startup_timeout=startup_timeout)
    try:
        server.start()
        yield ServerURL(f"http://{opts.host}:{opts.port}/v1", server)
    finally:
        server.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

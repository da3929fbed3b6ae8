"""The cluster drill's backing services, each a process of ours on a free loopback port:
PostgreSQL 15 (a private cluster in the drill's temp dir), Redis, moto's S3 server and the local
Batch API server. Every one is a :class:`~drills._common.Proc` (a session of its own, stopped by its
process group) and is stopped by the ``ExitStack`` that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drills._common import CANARY, PYTHON, DrillFailed, Proc, wait_for

__all__ = ["BatchServer", "Moto", "Postgres", "Redis", "ensure_redis", "free_port"]

PG_BIN = Path("/usr/local/bin")


def free_port() -> int:
    from batch_ops.server.background import free_port as _free

    return _free()


def _stop_with(proc: Proc, sig: int, grace: float) -> None:
    """``sig`` to the group first (PostgreSQL: SIGINT is its fast shutdown), then ``Proc.stop``."""
    if proc.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(grace)
    proc.stop(grace=5)


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL cluster: ``initdb`` as the ``postgres`` user into ``<base>/pg``, the
    server on 127.0.0.1:<port> with its unix socket in ``<base>/pg-socket``, trust authentication
    (loopback only), durability off (a throwaway database)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "pg" / "data"
        self.socket_dir = base / "pg" / "socket"
        self.port = free_port()
        self.proc: Proc | None = None

    def url(self, db: str = "airflow", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{db}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Postgres]:
        for tool in ("initdb", "postgres"):
            if not (PG_BIN / tool).exists() and not shutil.which(tool):
                raise DrillFailed(f"PostgreSQL's {tool} is missing (apt-get install -y postgresql-15)")
        # The postgres user must reach its directories through our (root-only) temp dir.
        os.chmod(self.base, 0o711)
        (self.base / "pg").mkdir()
        self.socket_dir.mkdir()
        shutil.chown(self.base / "pg", "postgres", "postgres")
        shutil.chown(self.socket_dir, "postgres", "postgres")
        init = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
             "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, start_new_session=True)
        if init.returncode != 0:
            raise DrillFailed(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        # setpriv execs postgres itself (no parent left behind), so our pid is the postmaster's.
        argv = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
                str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "shared_buffers=128MB"]
        self.proc = Proc("postgres", argv, env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"},
                         log=self.base / "postgres.log")
        try:
            wait_for("PostgreSQL to accept connections", self._ready, timeout=60,
                     alive=lambda: None if self.proc and self.proc.alive() else f"postgres exited:\n{self.tail()}")
            self.execute("postgres", "create database airflow")
            yield self
        finally:
            _stop_with(self.proc, signal.SIGINT, 15)

    def tail(self) -> str:
        return self.proc.tail() if self.proc else ""

    def _ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def execute(self, db: str, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db, connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def query(self, sql: str, *args: Any, db: str = "airflow") -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------


def ensure_redis() -> str:
    """The path of ``redis-server``; installed with apt-get when it is missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise DrillFailed("redis-server is missing: install it (Debian/Ubuntu: apt-get install -y redis-server)")
    print("   redis-server is missing: apt-get install -y redis-server", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "install", "-y", "-q", "redis-server"],
                 ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        if argv[1] == "install" and done.returncode == 0:
            break
    found = shutil.which("redis-server")
    if not found:
        raise DrillFailed(f"apt-get install -y redis-server did not give a redis-server: {done.stderr[-1000:]}")
    return found


class Redis:
    """redis-server on 127.0.0.1:<port>, nothing saved to disk: the Celery broker."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    @contextlib.contextmanager
    def running(self) -> Iterator[Redis]:
        binary = ensure_redis()
        workdir = self.base / "redis"
        workdir.mkdir()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "no", "--protected-mode", "yes"]
        proc = Proc("redis", argv, env=dict(os.environ), log=self.base / "redis.log")
        try:
            import redis

            def ping() -> bool:
                try:
                    return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2).ping())
                except redis.exceptions.ConnectionError:
                    return False

            wait_for("Redis to answer PING", ping, timeout=30,
                     alive=lambda: None if proc.alive() else f"redis-server exited:\n{proc.tail()}")
            yield self
        finally:
            proc.stop(grace=10)


# ---------------------------------------------------------------------------------------------
# S3 (moto)
# ---------------------------------------------------------------------------------------------


class Moto:
    """moto in server mode as S3, with one bucket; ``env`` is what a client needs to reach it."""

    def __init__(self, base: Path, bucket: str = "batch-ops-cluster") -> None:
        self.base = base
        self.port = free_port()
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    @contextlib.contextmanager
    def running(self) -> Iterator[Moto]:
        proc = Proc("moto", [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    env=dict(os.environ), log=self.base / "moto.log")
        try:
            import httpx

            def up() -> bool:
                try:
                    return httpx.get(f"{self.endpoint}/", timeout=2).status_code < 500
                except httpx.HTTPError:
                    return False

            wait_for("moto's S3 server", up, timeout=60,
                     alive=lambda: None if proc.alive() else f"moto exited:\n{proc.tail()}")
            self.client().create_bucket(Bucket=self.bucket)
            yield self
        finally:
            proc.stop(grace=10)

    def keys(self, prefix: str) -> list[str]:
        s3 = self.client()
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)


# ---------------------------------------------------------------------------------------------
# the local Batch API server
# ---------------------------------------------------------------------------------------------


class BatchServer:
    """``python -m batch_ops.server`` on a free port with its own data dir and the drill's key."""

    def __init__(self, base: Path, name: str, *, request_latency: float = 0.0, concurrency: int = 16,
                 extra: list[str] | None = None) -> None:
        self.base = base
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.argv = [PYTHON, "-m", "batch_ops.server", "--host", "127.0.0.1", "--port", str(self.port),
                     "--data-dir", str(base / f"server-{name}"), "--request-latency", str(request_latency),
                     "--concurrency", str(concurrency), "--access-log", "--log-level", "info", *(extra or [])]
        self.log = base / f"server-{name}.log"

    @contextlib.contextmanager
    def running(self) -> Iterator[BatchServer]:
        env = {**os.environ, "BATCH_OPS_SERVER_API_KEY": CANARY}
        proc = Proc(f"server-{self.name}", self.argv, env=env, log=self.log)
        try:
            import httpx

            def up() -> bool:
                try:
                    answer = httpx.get(f"{self.url}/batches", headers={"Authorization": f"Bearer {CANARY}"},
                                       timeout=2)
                except httpx.HTTPError:
                    return False
                return answer.status_code == 200

            wait_for(f"the batch server {self.name}", up, timeout=60,
                     alive=lambda: None if proc.alive() else f"server {self.name} exited:\n{proc.tail()}")
            yield self
        finally:
            proc.stop(grace=10)

    def creates(self) -> int:
        """``POST /v1/batches`` answered 200 (from the access log)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if '"POST /v1/batches HTTP' in line and '" 200' in line)

"""An Airflow deployment with the CeleryExecutor, as a cluster would run it, on one machine.

* metadata DB and Celery result backend: the drill's PostgreSQL; broker: its Redis;
* one API server (the workers' Execution API), one scheduler, one DAG processor;
* two triggerers (each with its own pid file; logs not served, they are read from disk);
* two Celery workers that share no disk: each runs in a mount and UTS namespace of its own
  (``unshare --mount --uts``) with a private tmpfs mounted over the work dir (its cwd, TMPDIR and
  the eval's local folder) and a hostname of its own, so a file one writes under the work dir is
  invisible to the other, and ``task_instance.hostname`` tells which worker ran a try.
  The DAG folder and AIRFLOW_HOME (logs) stay shared, as a DAG bundle and remote logging would.

Heartbeats are short so a dead component is noticed in seconds: a triggerer is presumed dead 8 s
after its last heartbeat, a task instance 10 s after its last one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from drills._common import AIRFLOW, ROOT, DrillFailed, Proc, descendants, shielded, stop_all, wait_for
from drills.cluster.services import Postgres, free_port

__all__ = ["CeleryStack"]

WORKER_CONCURRENCY = 4


class CeleryStack:
    def __init__(self, base: Path, pg: Postgres, broker: str, *, dags: Path, work: Path,
                 extra_env: Mapping[str, str]) -> None:
        import httpx

        self.base = base
        self.pg = pg
        self.home = base / "airflow"
        self.home.mkdir()
        self.logs = self.home / "logs"
        self.work = work  # mounted privately (tmpfs) in each worker
        self.work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.api = f"http://127.0.0.1:{port}"
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI", "PREFECT"))}
        self.env: dict[str, str] = {
            **keep,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "32",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            # No DNS lookups (a worker's hostname is its UTS namespace's name, not in /etc/hosts).
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url(),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CELERY__BROKER_URL": broker,
            # The driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed here.
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url(driver="postgresql+psycopg2"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            # Runs come from the drill only: no cron run of nightly_eval when it is unpaused.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
            **extra_env,
        }
        self.procs: dict[str, Proc] = {}
        self.down: set[str] = set()
        #: triggerer name -> its job id in the ``job`` table
        self.triggerer_jobs: dict[str, int] = {}
        self.http = httpx.Client(base_url=self.api, timeout=30)

    # -- processes ---------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 300) -> Any:
        import subprocess

        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)

    def migrate(self) -> None:
        done = self.cli("db", "migrate")
        if done.returncode != 0:
            raise DrillFailed(f"airflow db migrate failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env=env or self.env, log=self.home / f"{name}.log")
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self._start("api-server", [AIRFLOW, "api-server"])
        self._start("scheduler", [AIRFLOW, "scheduler"])
        self._start("dag-processor", [AIRFLOW, "dag-processor"])
        for n in (1, 2):
            self.start_worker(n)
        # One at a time, so each triggerer's job id is known (the job table holds no pid).
        for n in (1, 2):
            self.start_triggerer(n)

    def start_triggerer(self, n: int) -> None:
        name = f"triggerer-{n}"
        known = {job for job, in self.pg.query("select id from job where job_type = 'TriggererJob'")}
        self._start(name, [AIRFLOW, "triggerer", "--skip-serve-logs", "--pid", str(self.home / f"{name}.pid")])
        found = self.wait(f"{name}'s job row", lambda: [
            job for job, in self.pg.query(
                "select id from job where job_type = 'TriggererJob' and state = 'running' and end_date is null")
            if job not in known], timeout=180)
        self.triggerer_jobs[name] = int(found[0])

    def start_worker(self, n: int) -> None:
        name = f"worker-{n}"
        host = f"cluster-worker-{n}"
        env = {**self.env, "TMPDIR": str(self.work / "tmp")}
        script = ('set -e; mount -t tmpfs -o size=1g,mode=0755 tmpfs "$1"; mkdir -p "$1/tmp"; hostname "$2"; '
                  'cd "$1"; exec "$3" celery worker --celery-hostname "$2@%h" --concurrency "$4" '
                  '--skip-serve-logs --pid "$1/worker.pid" --without-gossip --without-mingle')
        argv = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "sh",
                str(self.work), host, AIRFLOW, str(WORKER_CONCURRENCY)]
        self._start(name, argv, env=env)

    def kill(self, name: str) -> list[int]:
        """``kill -9`` of a component's process group and of every process under it (task processes
        run in process groups of their own): the machine it ran on is gone. Returns the pids killed."""
        proc = self.procs[name]
        tree = sorted(descendants(proc.pid))
        self.down.add(name)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        return [proc.pid, *tree]

    def dead(self) -> str | None:
        for name, proc in self.procs.items():
            if not proc.alive() and name not in self.down:
                return f"airflow {name} exited ({proc.popen.returncode}):\n{proc.tail()}"
        return None

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 180.0, interval: float = 0.25) -> Any:
        return wait_for(what, check, timeout=timeout, alive=self.dead, interval=interval)

    def wait_ready(self, dag_ids: Iterable[str], timeout: float = 300.0) -> None:
        import httpx

        wanted = set(dag_ids)

        def ready() -> bool:
            try:
                answer = self.http.get("/api/v2/dags", params={"limit": 100})
            except httpx.HTTPError:
                return False
            return answer.status_code == 200 and wanted <= {d["dag_id"] for d in answer.json()["dags"]}

        self.wait(f"the API server and the DAGs {sorted(wanted)}", ready, timeout=timeout, interval=1.0)
        self.wait("two Celery workers", lambda: len(self.celery_workers()) >= 2, timeout=timeout, interval=1.0)

    def disk_isolation(self) -> list[str]:
        """Problems with the workers' private disks (none: each sees only its own files there).

        Each worker writes a file under the work dir as seen in its own mount namespace
        (``/proc/<pid>/root``); neither the other worker nor the drill may see it."""
        problems = []
        views = {n: Path(f"/proc/{self.procs[n].pid}/root") / str(self.work).lstrip("/")
                 for n in ("worker-1", "worker-2")}
        for name, view in views.items():
            (view / f"probe-{name}").write_text(name)
        for name, view in views.items():
            other = next(n for n in views if n != name)
            if (view / f"probe-{other}").exists():
                problems.append(f"{name} sees the file {other} wrote under {self.work}")
            if not (view / f"probe-{name}").exists():
                problems.append(f"{name} does not see its own file")
        if any(self.work.glob("probe-*")):
            problems.append(f"the workers' files show on the host's {self.work}")
        return problems

    def celery_workers(self) -> list[str]:
        """The workers whose log says Celery is ready (consuming from the broker)."""
        found = []
        for name in ("worker-1", "worker-2"):
            log = self.home / f"{name}.log"
            if log.exists() and " ready." in log.read_text(errors="replace"):
                found.append(name)
        return found

    def stop(self) -> None:
        """SIGTERM every component at once, give them 20 s together, then SIGKILL what is left
        (and every process that ran under them)."""
        with shielded():
            self.http.close()
            stop_all(list(self.procs.values()))

    # -- the REST API and the metadata DB -------------------------------------------------------
    def trigger_dag(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        answer = self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if answer.status_code != 200:
            raise DrillFailed(f"unpausing {dag_id}: {answer.status_code} {answer.text[:300]}")
        answer = self.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})})
        if answer.status_code not in (200, 201):
            raise DrillFailed(f"triggering {dag_id}: {answer.status_code} {answer.text[:300]}")
        return str(answer.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.pg.query("select state from dag_run where dag_id = %s and run_id = %s", dag_id, run_id)
        return rows[0][0] if rows else None

    def tis(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        rows = self.pg.query(
            "select task_id, map_index, state, try_number, pid, hostname, id, trigger_id from task_instance "
            "where dag_id = %s and run_id = %s order by task_id, map_index", dag_id, run_id)
        keys = ("task_id", "map_index", "state", "try_number", "pid", "hostname", "id", "trigger_id")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def ti(self, dag_id: str, run_id: str, task_id: str = "batch", map_index: int = -1) -> dict[str, Any] | None:
        for ti in self.tis(dag_id, run_id):
            if ti["task_id"] == task_id and ti["map_index"] == map_index:
                return ti
        return None

    def tries(self, dag_id: str, run_id: str, task_id: str = "batch") -> list[dict[str, Any]]:
        """Every try of a task (``task_instance_history`` holds the finished earlier ones)."""
        rows = self.pg.query(
            "select try_number, state, hostname from task_instance_history where dag_id = %s and run_id = %s "
            "and task_id = %s order by try_number", dag_id, run_id, task_id)
        return [{"try_number": t, "state": s, "hostname": h} for t, s, h in rows]

    def xcom(self, dag_id: str, run_id: str, key: str = "return_value", task_id: str = "batch",
             map_index: int = -1) -> Any:
        rows = self.pg.query("select value from xcom where dag_id = %s and run_id = %s and task_id = %s and key = %s "
                             "and map_index = %s", dag_id, run_id, task_id, key, map_index)
        if not rows:
            return None
        value = rows[0][0]
        return json.loads(value) if isinstance(value, (str, bytes)) else value

    def task_logs(self, dag_id: str, run_id: str, task_id: str | None = None) -> str:
        base = self.logs / f"dag_id={dag_id}" / f"run_id={run_id}"
        if task_id is not None:
            base = base / f"task_id={task_id}"
        if not base.exists():
            return ""
        return "\n".join(p.read_text(errors="replace") for p in sorted(base.rglob("*")) if p.is_file())

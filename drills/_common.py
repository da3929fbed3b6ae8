"""What every drill shares: the canary key, results, our own processes, Airflow homes and stacks,
and the audit that proves every batch and every request is accounted for.

Nothing here mocks anything: servers are real processes, HTTP goes over loopback, Airflow and
Prefect run as they would in production (only with short intervals). Every process a drill
starts is started in a session of its own and stopped in a ``finally`` by its own pid (or the
process group it leads); nothing else is ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
DRILLS = Path(__file__).resolve().parent
DAGS = DRILLS / "dags"
PYTHON = sys.executable
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
BATCH_OPS = str(Path(sys.executable).with_name("batch-ops"))
CHAT = "/v1/chat/completions"
#: The API key of every drill: distinctive, so a scan for it cannot match anything else.
CANARY = "sk-drill-CANARY-5e7a1c93d0b4"

__all__ = [
    "AIRFLOW",
    "BATCH_OPS",
    "CANARY",
    "CHAT",
    "DAGS",
    "ROOT",
    "AirflowHome",
    "AirflowStack",
    "Audit",
    "Drill",
    "DrillFailed",
    "Proc",
    "access_counts",
    "audit_server",
    "chat_lines",
    "descendant_of",
    "scan_tree",
    "sqlite_scan",
    "wait_for",
    "write_jsonl",
]


class DrillFailed(AssertionError):
    """Raised by ``Drill.require`` when a drill cannot go on without the condition."""


@dataclass
class Drill:
    """What one drill found: checks that held or failed, and figures for the table.

    A drill records every check (``check``) rather than stopping at the first failure, so one
    run shows everything that is wrong; ``require`` stops it when going on makes no sense.
    """

    name: str
    title: str
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  [{self.name}] FAILED: {what}", flush=True)
        return ok

    def require(self, ok: bool, what: str) -> None:
        if not self.check(ok, what):
            raise DrillFailed(what)

    def figure(self, key: str, value: Any) -> None:
        self.figures[key] = value

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  [{self.name}] {text}", flush=True)

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None and self.passed > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "ok": self.ok, "passed": self.passed,
            "failures": self.failures, "figures": self.figures, "notes": self.notes,
            "seconds": round(self.seconds, 1), "error": self.error,
        }

    def run(self, body: Callable[[Drill], None]) -> Drill:
        """Run ``body(self)``; an exception becomes the drill's error (the drill then fails)."""
        started = time.monotonic()
        try:
            body(self)
        except DrillFailed:
            pass  # already recorded as a failure
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            tb = traceback.format_exc()
            print(tb, flush=True)
            self.notes.append(tb.strip().splitlines()[-1])
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            self.seconds = time.monotonic() - started
        return self


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


class Proc:
    """One process we started, in a session of its own, logging to a file.

    ``kill()`` is ``kill -9`` of the process group this process leads (a crash takes its
    children with it); ``stop()`` is SIGTERM, then SIGKILL after ``grace`` seconds. Both only
    ever signal the group of a process this object started.
    """

    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], log: Path,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self.popen = subprocess.Popen(
            argv, env=dict(env), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        self._close()

    def terminate(self) -> None:
        """SIGTERM to the group, without waiting (``stop`` waits and cleans up)."""
        if self.alive():
            self._signal_group(signal.SIGTERM)

    def stop(self, grace: float = 20.0) -> None:
        with shielded():
            if self.alive():
                self._signal_group(signal.SIGTERM)
                try:
                    self.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # Whatever is left of the group (the leader may be gone, a child not): kill it.
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
            self._close()

    def _close(self) -> None:
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends (main thread only).

    The runner stops a suite that overran its budget with SIGTERM, which the suite turns into
    KeyboardInterrupt so every ``finally`` runs. A stop already under way must not be cut short
    by it, or an Airflow component in a session of its own would outlive the drill.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: the fields follow the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (read from /proc), whatever session it moved to."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _ppid(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def descendant_of(pid: int, ancestor: int) -> bool:
    """True when ``pid`` is ``ancestor`` or one of its descendants (read from /proc)."""
    seen = 0
    current: int | None = pid
    while current and current > 1 and seen < 64:
        if current == ancestor:
            return True
        current = _ppid(current)
        seen += 1
    return False


def wait_for(what: str, check: Callable[[], Any], *, timeout: float, interval: float = 0.25,
             alive: Callable[[], str | None] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; raise ``DrillFailed`` at the timeout.

    ``alive()`` returns a reason to give up early (a component died), or None.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None and (dead := alive()):
            raise DrillFailed(f"{what}: {dead}")
        try:
            value = check()
        except (sqlite3.Error, OSError, ValueError, KeyError) as exc:  # a table or file not there yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    extra = f" (last error: {last_error})" if last_error else ""
    raise DrillFailed(f"timed out after {timeout:.0f} s waiting for {what}{extra}")


# ---------------------------------------------------------------------------------------------
# request files
# ---------------------------------------------------------------------------------------------


def chat_lines(tag: str, n: int, *, model: str = "gpt-4o-mini") -> list[dict[str, Any]]:
    """``n`` chat requests whose custom_ids and contents name the batch they belong to."""
    return [
        {"custom_id": f"{tag}-{i}", "method": "POST", "url": CHAT,
         "body": {"model": model, "messages": [{"role": "user", "content": f"{tag} question {i}"}]}}
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# the audit: every batch and every request accounted for
# ---------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What the server holds, read through the official ``openai`` SDK (our independent oracle)."""

    batches: list[Any]
    files: int
    requests: int = 0
    completed: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    #: custom_ids per batch id, from the input file the server holds.
    inputs: dict[str, set[str]] = field(default_factory=dict)

    @property
    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.batches:
            out[b.status] = out.get(b.status, 0) + 1
        return out


def access_counts(log: Path) -> dict[str, int]:
    """HTTP statuses of the /v1 calls in a server's access log (``access_log=True``)."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.search(r'"[A-Z]+ /v1/\S* HTTP/[\d.]+" (\d{3})', line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def oracle(url: str, key: str = CANARY) -> Any:
    """The official SDK, with enough retries to read through the injected faults."""
    import openai

    return openai.OpenAI(base_url=str(url), api_key=key, max_retries=20, timeout=30)


def _lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


def audit_server(url: str, *, key: str = CANARY, answers: bool = True) -> Audit:
    """Check every batch on the server: each request of its input appears exactly once in the
    output or the error file, the counts agree with the files, and (``answers``) each echo
    answer is the answer to its own request (no result was attached to the wrong line)."""
    client = oracle(url, key)
    try:
        batches = list(client.batches.list(limit=100))
        files = list(client.files.list())
        audit = Audit(batches=batches, files=len(files))
        for b in batches:
            inp = _lines(client, b.input_file_id)
            ids = [x["custom_id"] for x in inp]
            audit.inputs[b.id] = set(ids)
            audit.requests += len(ids)
            if b.status not in ("completed", "cancelled", "expired"):
                continue  # failed or still running: no results to account for (checked by the drill)
            out, err = _lines(client, b.output_file_id), _lines(client, b.error_file_id)
            seen = [x["custom_id"] for x in out] + [x["custom_id"] for x in err]
            dupes = len(seen) - len(set(seen))
            if dupes:
                audit.problems.append(f"{b.id}: {dupes} custom_ids answered more than once")
            if set(seen) != set(ids):
                missing, extra = set(ids) - set(seen), set(seen) - set(ids)
                audit.problems.append(f"{b.id}: {len(missing)} requests unanswered, {len(extra)} unknown answers")
            counts = b.request_counts
            if counts is None or counts.total != len(ids):
                audit.problems.append(f"{b.id}: request_counts.total {counts and counts.total} != {len(ids)} lines")
            elif b.status == "completed" and (counts.completed != len(out) or counts.failed != len(err)):
                audit.problems.append(
                    f"{b.id}: counts {counts.completed}+{counts.failed} != files {len(out)}+{len(err)}")
            audit.completed += len(out)
            audit.failed += len(err)
            if answers:
                question = {x["custom_id"]: x["body"]["messages"][-1]["content"] for x in inp
                            if "messages" in x.get("body", {})}
                for line in out:
                    body = (line.get("response") or {}).get("body") or {}
                    text = ((body.get("choices") or [{}])[0].get("message") or {}).get("content")
                    want = question.get(line["custom_id"])
                    # The echo engine answers with the question itself: any other text means a
                    # result was joined to the wrong request.
                    if want is not None and text != want:
                        audit.problems.append(f"{b.id}: {line['custom_id']} got the answer {str(text)[:40]!r}")
                        break
        return audit
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# secret scans
# ---------------------------------------------------------------------------------------------


def scan_tree(root: Path, needle: str) -> tuple[int, list[str]]:
    """(files scanned, files containing ``needle``) under ``root``; binary files included."""
    hits: list[str] = []
    count = 0
    raw = needle.encode()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        count += 1
        try:
            if raw in path.read_bytes():
                hits.append(str(path.relative_to(root)))
        except OSError:
            continue
    return count, hits


def sqlite_scan(db: Path, needle: str, *, skip: Iterable[tuple[str, str]] = ()) -> tuple[int, list[str]]:
    """(cells scanned, ``table.column`` holding ``needle``) over every table of a SQLite file.

    ``skip`` names ``(table, column)`` pairs that may legitimately hold it (e.g. Airflow's
    ``connection.password``). Text and blob cells are both searched (blobs as UTF-8 with errors
    replaced, which finds a plain-text key inside pickled or JSON bytes).
    """
    skipped = set(skip)
    hits: list[str] = []
    cells = 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            cols = [r[1] for r in conn.execute(f'pragma table_info("{table}")')]
            for row in conn.execute(f'select * from "{table}"'):
                for col, value in zip(cols, row, strict=False):
                    if value is None:
                        continue
                    cells += 1
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    if needle in text and (table, col) not in skipped:
                        hits.append(f"{table}.{col}")
    finally:
        conn.close()
    return cells, sorted(set(hits))


# ---------------------------------------------------------------------------------------------
# Airflow: a throwaway home, and a real deployment on it
# ---------------------------------------------------------------------------------------------


class AirflowHome:
    """A throwaway AIRFLOW_HOME on SQLite whose DAG folder is ``drills/dags``."""

    def __init__(self, base: Path, name: str = "airflow") -> None:
        self.path = base / name
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = self.path / "airflow.db"
        self.logs = self.path / "logs"
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI", "PREFECT"))}
        self.env: dict[str, str] = {
            **keep,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "AIRFLOW_HOME": str(self.path),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs),
        }

    def connection(self, conn_id: str, url: str, *, key: str | None = CANARY) -> None:
        """An ``openaibatch`` connection from the environment of every process started later."""
        conn: dict[str, Any] = {"conn_type": "openaibatch", "host": str(url)}
        if key is not None:
            conn["password"] = key
        self.env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)

    def cli(self, *args: str, timeout: float = 300, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIRFLOW, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)

    def migrate(self) -> None:
        proc = self.cli("db", "migrate")
        if proc.returncode != 0:
            raise DrillFailed(f"airflow db migrate failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


def stop_all(procs: list[Proc], grace: float = 20.0) -> None:
    """SIGTERM every process at once, give them ``grace`` seconds together, then SIGKILL what is left
    and every process that ran under them.

    Task processes (LocalExecutor, Celery) run in sessions of their own: they are noted first, so
    none outlives a parent that had to be killed.
    """
    tree = {pid for proc in procs if proc.alive() for pid in descendants(proc.pid)}
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.stop(grace=max(deadline - time.monotonic(), 0.1))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class AirflowStack:
    """A real deployment on an :class:`AirflowHome`: API server (the task runner's Execution
    API), scheduler with LocalExecutor, DAG processor and triggerer, each its own process.

    Intervals are short so drills run in seconds: the triggerer heartbeats every second and is
    presumed dead 8 s after its last heartbeat, so a new one takes its triggers over quickly.
    """

    STARTUP_TIMEOUT = 240.0

    def __init__(self, home: AirflowHome, port: int) -> None:
        import httpx

        self.home = home
        self.api = f"http://127.0.0.1:{port}"
        home.env.update({
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
        })
        self.procs: dict[str, Proc] = {}
        #: Components a drill took down on purpose (not a reason to give up).
        self.down: set[str] = set()
        self.http = httpx.Client(base_url=self.api, timeout=30)
        self.triggerers = 0

    def _start(self, name: str, *args: str) -> Proc:
        log = self.home.path / f"{name}-{self.triggerers}.log" if name == "triggerer" else \
            self.home.path / f"{name}.log"
        proc = Proc(name, [AIRFLOW, *args], env=self.home.env, log=log)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self._start("api-server", "api-server")
        self._start("dag-processor", "dag-processor")
        self._start("scheduler", "scheduler")
        self.start_triggerer()

    def start_triggerer(self) -> Proc:
        self.triggerers += 1
        self.down.discard("triggerer")
        return self._start("triggerer", "triggerer")

    def kill_triggerer(self) -> Proc:
        """``kill -9`` the triggerer and its trigger-runner child (its process group)."""
        proc = self.procs["triggerer"]
        self.down.add("triggerer")
        proc.kill()
        return proc

    def dead(self) -> str | None:
        for name, proc in self.procs.items():
            if not proc.alive() and name not in self.down:
                return f"airflow {name} exited ({proc.popen.returncode}):\n{proc.tail()}"
        return None

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 180.0) -> Any:
        return wait_for(what, check, timeout=timeout, alive=self.dead)

    def wait_ready(self, dag_ids: Iterable[str]) -> None:
        wanted = set(dag_ids)

        def ready() -> bool:
            answer = self.http.get("/api/v2/dags", params={"limit": 100})
            if answer.status_code != 200:
                return False
            return wanted <= {d["dag_id"] for d in answer.json()["dags"]}

        import httpx

        wait_for("the API server and the drill DAGs", lambda: _quiet(ready, httpx.HTTPError),
                 timeout=self.STARTUP_TIMEOUT, alive=self.dead, interval=1.0)
        # The triggerer must be up too before a drill relies on it.
        wait_for("a triggerer heartbeat", self.live_triggerer, timeout=self.STARTUP_TIMEOUT, alive=self.dead)

    def live_triggerer(self) -> int | None:
        rows = self.home.query(
            "select id from job where job_type = 'TriggererJob' and state = 'running' and end_date is null "
            "order by id desc limit 1")
        return int(rows[0][0]) if rows else None

    def trigger_dag(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        answer = self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        if answer.status_code != 200:
            raise DrillFailed(f"unpausing {dag_id}: {answer.status_code} {answer.text[:300]}")
        answer = self.http.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})})
        if answer.status_code not in (200, 201):
            raise DrillFailed(f"triggering {dag_id}: {answer.status_code} {answer.text[:300]}")
        return str(answer.json()["dag_run_id"])

    def ti(self, dag_id: str, run_id: str, task_id: str = "batch") -> dict[str, Any] | None:
        rows = self.home.query(
            "select state, try_number, pid, id from task_instance where dag_id = ? and run_id = ? and task_id = ?",
            dag_id, run_id, task_id)
        if not rows:
            return None
        state, tries, pid, ti_id = rows[0]
        return {"state": state, "try_number": tries, "pid": pid, "id": ti_id}

    def ti_state(self, dag_id: str, run_id: str, task_id: str = "batch") -> str | None:
        ti = self.ti(dag_id, run_id, task_id)
        return None if ti is None else ti["state"]

    def xcom(self, dag_id: str, run_id: str, key: str = "return_value", task_id: str = "batch") -> Any:
        rows = self.home.query("select value from xcom where dag_id = ? and run_id = ? and task_id = ? and key = ?",
                               dag_id, run_id, task_id, key)
        return json.loads(rows[0][0]) if rows else None

    def task_logs(self, dag_id: str, run_id: str, task_id: str = "batch") -> str:
        base = self.home.logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "\n".join(p.read_text(errors="replace") for p in sorted(base.rglob("*")) if p.is_file())

    def stop(self) -> None:
        """SIGTERM every component at once, give them 20 s together, then SIGKILL what is left."""
        with shielded():
            self.http.close()
            stop_all(list(self.procs.values()))


def _quiet(fn: Callable[[], Any], *errors: type[BaseException]) -> Any:
    try:
        return fn()
    except errors:
        return None


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


class HoldProxy:
    """A TCP proxy that forwards every call, but holds back the answer to the first
    ``POST /v1/batches``: the batch is created on the server, the caller never hears.
    With ``forward=False`` the held create never reaches the server at all (a process killed
    after its upload, before its create landed). ``hold_after=N`` lets the first N creates
    through and holds the next one (a job's create in the middle of its run).

    One request per connection (``Connection: close`` upstream), so the proxy needs to parse
    nothing beyond the request head. It runs its own event loop in a thread.
    """

    def __init__(self, upstream: str, *, hold_creates: int = 1, forward: bool = True, hold_after: int = 0) -> None:
        hostport = upstream.split("://", 1)[1].split("/", 1)[0]
        self._host, port = hostport.rsplit(":", 1)
        self._port = int(port)
        self.holds_left = hold_creates
        self.hold_after = hold_after
        self.forward = forward
        self.creates = 0
        self.held = threading.Event()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [h for h in lines[1:] if h and not h.lower().startswith(("connection:", "keep-alive:"))]
            length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
            body = await reader.readexactly(length) if length else b""
            is_create = method == "POST" and path.split("?")[0].rstrip("/").endswith("/batches")
            if is_create and self.holds_left > 0 and not self.forward:
                self.holds_left -= 1
                self.held.set()
                await reader.read()  # swallowed: the create never reaches the server
                return
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            up_writer.write("\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1") + body)
            await up_writer.drain()
            response = await up_reader.read()
            up_writer.close()
            if is_create:
                self.creates += 1
                if self.holds_left > 0 and self.creates > self.hold_after:
                    self.holds_left -= 1
                    self.held.set()
                    await reader.read()  # hold the answer until the caller goes away
                    return
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[HoldProxy]:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0),
                                                  self._loop).result(10)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            yield self
        finally:
            server.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

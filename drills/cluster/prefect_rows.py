"""The cluster drill's Prefect rows: ``run(env, workdir) -> list[dict]`` (called by ``run.py``), or on
its own: ``python -m drills.cluster.prefect_rows`` (starts its own moto and prints the rows).

Prefect as a cluster runs it, on one machine: ``prefect server start`` (its database on the drill's
PostgreSQL when ``env`` names one in BATCH_OPS_CLUSTER_PG_URL, else SQLite), a ``process`` work pool,
two ``prefect worker start`` processes (``--limit 1`` each: two runs land on two workers), and
``flows/nightly_eval.py`` deployed from source with its files on S3 (moto). Two local Batch API
servers of its own, one per row, so that each row counts only its own batches.

1. ``prefect nightly eval, 2 process workers, S3 storage``: two runs of the deployment at once; both
   COMPLETED, one batch each, none left running, the reports and the history in S3.
2. ``prefect worker + flow run killed mid-run, then retried``: a run against a slow batch server;
   once its batch is in progress, ``kill -9`` of the process group of the worker running it (the
   flow-run process is in that group: a lost pod). Nobody tells Prefect, so the deployment runs
   Prefect's own zombie detection, as docs/deploy.md advises: flow runs send heartbeats
   (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30``) and an automation marks a run Crashed when they stop
   (``Crash zombie flow runs``, 60 s). Then the operator's ``prefect flow-run retry``: the other
   worker runs it again, and the retry must re-attach to the batch: COMPLETED, one batch created,
   none left running; ``batch-ops orphans --prefect --json`` is run at the end.

Every process started here leads a session of its own and is stopped by its process group in a
``finally`` (the children of ``prefect server start``, which leave its group, by their pids).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `drills` and `batch_ops` importable
    sys.path.insert(0, str(ROOT))

from drills._common import CANARY, PYTHON, DrillFailed, Proc, descendant_of, descendants, wait_for  # noqa: E402
from drills.cluster.services import BatchServer, Moto, free_port  # noqa: E402

__all__ = ["run"]

PREFECT = str(Path(PYTHON).with_name("prefect"))
POOL = "batch-ops-cluster"
ENTRYPOINT = "flows/nightly_eval.py:nightly_eval"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
BATCH_TERMINAL = {"completed", "failed", "expired", "cancelled"}
ROW1 = "prefect nightly eval, 2 process workers, S3 storage"
ROW2 = "prefect worker + flow run killed mid-run, then retried"
#: Seconds each request of row 2's batch takes, one request at a time: the eval set's 210 requests
#: keep the batch running ~50 s, long enough for the kill, the retry and the re-attach to land in it.
SLOW_LATENCY = float(os.environ.get("BATCH_OPS_CLUSTER_PREFECT_LATENCY", "0.25"))
#: Flow-run heartbeats (Prefect's minimum is 30 s) and the silence after which the automation marks a
#: run Crashed: a lost run is Crashed 60-90 s after its last heartbeat.
HEARTBEAT_SECONDS = 30
ZOMBIE_AFTER_SECONDS = 60

#: Prefect's zombie detection (docs: "How to detect and respond to zombie flows"): an automation that
#: marks a flow run Crashed when its heartbeats stop before it ends.
ZOMBIE_AUTOMATION = """
import sys
from datetime import timedelta
from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

print(Automation(
    name="Crash zombie flow runs",
    trigger=EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=int(sys.argv[1])),
    ),
    actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                message="Flow run marked as crashed due to missing heartbeats.")],
).create().id)
"""

#: Deploys the flow from source, once per (name, job env) given as JSON; writes the deployment ids.
DEPLOY = """
import json, sys
from prefect import flow

root, pool, specs, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
ids = {}
for name, env in specs.items():
    ids[name] = str(flow.from_source(source=root, entrypoint=ENTRYPOINT).deploy(
        name=name, work_pool_name=pool, job_variables={"env": env}, build=False, push=False,
        print_next_steps=False, ignore_warnings=True))
with open(out, "w") as fh:
    json.dump(ids, fh)
""".replace("ENTRYPOINT", repr(ENTRYPOINT))


def _row(scenario: str) -> dict[str, Any]:
    return {"scenario": scenario, "runs_succeeded": "", "batches_created": None, "batches_needed": None,
            "orphans": None, "adoption_s": None, "ok": False, "notes": [], "error": None, "checks": [],
            "seconds": 0.0}


def _check(row: dict[str, Any], ok: bool, what: str) -> bool:
    row["checks"].append((bool(ok), what))
    if not ok:
        print(f"  [{row['scenario']}] FAILED: {what}", flush=True)
    return ok


def _note(row: dict[str, Any], text: str) -> None:
    row["notes"].append(text)
    print(f"  [{row['scenario']}] {text}", flush=True)


def _finish(row: dict[str, Any], started: float) -> dict[str, Any]:
    row["seconds"] = round(time.monotonic() - started, 1)
    failed = [what for ok, what in row.pop("checks") if not ok]
    row["ok"] = not failed and not row["error"] and row["runs_succeeded"] != ""
    if failed:  # what run.py shows as the row's failure
        row["error"] = "; ".join(([row["error"]] if row["error"] else []) + failed)
    row["seconds_to_adoption"] = row["adoption_s"]  # the name run.py reads
    row["notes"].append(f"{row['seconds']:.0f} s")
    return row


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= limit else '...' + text[-limit:]}"


# ---------------------------------------------------------------------------------------------
# the Prefect deployment: server, work pool, two workers
# ---------------------------------------------------------------------------------------------


def _stop_tree(proc: Proc, grace: float = 10.0) -> None:
    """Stop ``proc``'s group, then any descendant that left it (``prefect server start`` starts its
    uvicorn in a session of its own): every one of them is a process this drill started."""
    strays = descendants(proc.pid) if proc.alive() else set()
    proc.stop(grace=grace)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _prefect_database(env: dict[str, str], work: Path) -> tuple[str, str]:
    """(SQLAlchemy URL, what it is): a database of its own on the drill's PostgreSQL, else SQLite."""
    pg = env.get("BATCH_OPS_CLUSTER_PG_URL")
    if pg:
        try:
            import psycopg2

            parts = urlsplit(pg)
            conn = psycopg2.connect(host=parts.hostname, port=parts.port, user=parts.username or "postgres",
                                    password=parts.password, dbname=parts.path.lstrip("/") or "postgres",
                                    connect_timeout=10)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute("drop database if exists prefect_drill")
                    cur.execute("create database prefect_drill")
            finally:
                conn.close()
            url = urlunsplit(("postgresql+asyncpg", parts.netloc, "/prefect_drill", "", ""))
            return url, f"PostgreSQL (:{parts.port}/prefect_drill)"
        except Exception as exc:  # the rows still run, on SQLite
            print(f"   prefect: PostgreSQL unusable ({_short(exc, 200)}): SQLite instead", flush=True)
    return f"sqlite+aiosqlite:///{work / 'prefect-home' / 'prefect.db'}", "SQLite"


class PrefectCluster:
    """``prefect server start``, a process work pool, two workers, and a REST client for the API."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        import httpx

        self.work = work
        home = work / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.db_url, self.db = _prefect_database(env, work)
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("PREFECT", "AIRFLOW", "OPENAI", "BATCH_OPS", "AWS_"))}
        self.env = {
            **keep,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": self.db_url,
            "PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml"),
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        }
        self.api = httpx.Client(base_url=self.api_url, timeout=30)
        self.procs: list[Proc] = []
        self.server: Proc | None = None
        self.workers: list[Proc] = []

    # -- processes -------------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env={**self.env, **(env or {})}, log=self.work / f"{name}.log", cwd=self.work)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop_tree(proc)
        self.api.close()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PREFECT, *args], env=self.env, cwd=self.work, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)

    def up(self, worker_env: dict[str, str]) -> None:
        import httpx

        self.server = self.start("prefect-server", [PREFECT, "server", "start", "--host", "127.0.0.1",
                                                    "--port", str(self.port), "--no-ui"])

        def healthy() -> bool:
            try:
                return self.api.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("prefect server start to answer /health", healthy, timeout=150, interval=0.5,
                 alive=lambda: None if self.server and self.server.alive() else f"exited:\n{self.server.tail()}")
        made = self.cli("work-pool", "create", POOL, "--type", "process")
        if made.returncode != 0:
            raise DrillFailed(f"prefect work-pool create failed: {made.stdout[-800:]} {made.stderr[-800:]}")
        for i in (1, 2):
            self.workers.append(self.start(f"prefect-worker-{i}", [
                PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", f"worker-{i}",
                "--limit", "1"], env=worker_env))

    def detect_zombies(self) -> str:
        """Install the zombie-detection automation; returns its id."""
        done = subprocess.run([PYTHON, "-c", ZOMBIE_AUTOMATION, str(ZOMBIE_AFTER_SECONDS)], env=self.env,
                              cwd=self.work, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        if done.returncode != 0:
            raise DrillFailed(f"creating the zombie-detection automation failed: {done.stderr[-1500:]}")
        return done.stdout.strip().splitlines()[-1]

    def wait_workers(self) -> None:
        def online() -> bool:
            for w in self.workers:
                if not w.alive():
                    raise DrillFailed(f"{w.name} exited:\n{w.tail()}")
            found = self.call("POST", f"/work_pools/{POOL}/workers/filter", json={})
            return found.status_code == 200 and sum(1 for w in found.json() if w.get("status") == "ONLINE") >= 2

        wait_for("both workers ONLINE in the work pool", online, timeout=120, interval=0.5)

    def deploy(self, specs: dict[str, dict[str, str]]) -> dict[str, str]:
        out = self.work / "deployments.json"
        done = subprocess.run([PYTHON, "-c", DEPLOY, str(ROOT), POOL, json.dumps(specs), str(out)], env=self.env,
                              cwd=self.work, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        if done.returncode != 0:
            raise DrillFailed(f"deploying {ENTRYPOINT} from source failed: {done.stderr[-1500:]}")
        ids: dict[str, str] = json.loads(out.read_text())
        return ids

    # -- the API ---------------------------------------------------------------------------------

    def call(self, method: str, url: str, **kwargs: Any) -> Any:
        """One API call, again while the server is busy (503: its SQLite database is locked)."""
        import httpx

        for attempt in range(20):
            try:
                answer = self.api.request(method, url, **kwargs)
            except httpx.TransportError:
                if method != "GET" or attempt == 19:
                    raise
            else:
                if answer.status_code not in (429, 502, 503) or attempt == 19:
                    return answer
            time.sleep(min(0.1 * 2 ** attempt, 2.0))
        raise AssertionError("unreachable")

    def create_run(self, deployment_id: str) -> str:
        made = self.call("POST", f"/deployments/{deployment_id}/create_flow_run", json={})
        made.raise_for_status()
        return str(made.json()["id"])

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        found = self.call("GET", f"/flow_runs/{flow_run_id}")
        found.raise_for_status()
        return dict(found.json())

    def state(self, flow_run_id: str) -> tuple[str, str]:
        s = self.flow_run(flow_run_id).get("state") or {}
        return str(s.get("type")), str(s.get("name"))

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, tuple[str, str]]:
        def final() -> dict[str, tuple[str, str]] | None:
            states = {i: self.state(i) for i in ids}
            return states if all(t in FINAL for t, _ in states.values()) else None

        try:
            return wait_for(f"flow runs {ids} to end", final, timeout=timeout, interval=1.0)  # type: ignore[no-any-return]
        except DrillFailed:
            return {i: self.state(i) for i in ids}

    def subflow_states(self, flow_run_id: str) -> list[str]:
        found = self.call("POST", "/flow_runs/filter",
                          json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        found.raise_for_status()
        return [f"{r['name']}: {r['state']['name']}" for r in found.json()]

    def worker_of(self, pid: int) -> Proc | None:
        return next((w for w in self.workers if descendant_of(pid, w.pid)), None)

    def worker_log_naming(self, flow_run_id: str) -> str | None:
        """The worker whose log names the flow run (it submitted it)."""
        for w in self.workers:
            with contextlib.suppress(OSError):
                if flow_run_id in w.log_path.read_text(errors="replace"):
                    return w.name
        return None


# ---------------------------------------------------------------------------------------------
# batches, S3, orphans
# ---------------------------------------------------------------------------------------------


def _batches(url: str) -> list[Any]:
    from batch_ops import BatchClient

    with BatchClient(api_key=CANARY, base_url=url) as client:
        return list(client.batches.iter_all())


def _status(batch: Any) -> str:
    return str(getattr(batch.status, "value", batch.status))


def _s3(env: dict[str, str]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key=env.get("AWS_ACCESS_KEY_ID"), secret=env.get("AWS_SECRET_ACCESS_KEY"),
                             client_kwargs={"endpoint_url": env.get("AWS_ENDPOINT_URL"),
                                            "region_name": env.get("AWS_DEFAULT_REGION", "us-east-1")})


def _orphans_cli(cluster: PrefectCluster, base_url: str) -> str:
    """``python -m batch_ops.cli orphans --prefect --json`` against one batch server: its counts."""
    env = {**cluster.env, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": CANARY}
    done = subprocess.run([PYTHON, "-m", "batch_ops.cli", "orphans", "--prefect", "--json"], env=env,
                          cwd=cluster.work, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        counts = json.loads(done.stdout)["counts"]
    except (ValueError, KeyError, TypeError):
        return f"exit {done.returncode}: {(done.stdout + done.stderr)[-300:]}"
    return ", ".join(f"{k} {v}" for k, v in counts.items()) + ("" if done.returncode == 0 else
                                                               f" (exit {done.returncode})")


# ---------------------------------------------------------------------------------------------
# row 1: two runs at once, storage on S3
# ---------------------------------------------------------------------------------------------


def nightly_row(cluster: PrefectCluster, deployment_id: str, server: BatchServer, s3: Any, storage: str,
                runs: int = 2) -> dict[str, Any]:
    row = _row(ROW1)
    started = time.monotonic()
    try:
        ids = [cluster.create_run(deployment_id) for _ in range(runs)]
        states = cluster.wait_final(ids, timeout=200)
        ok = sum(1 for t, _ in states.values() if t == "COMPLETED")
        row["runs_succeeded"] = f"{ok}/{runs}"
        _check(row, ok == runs, f"{ok}/{runs} runs COMPLETED ({sorted(n for _, n in states.values())})")
        for i, (t, _) in states.items():
            if t != "COMPLETED":
                _note(row, f"run {i}: {cluster.flow_run(i).get('state', {}).get('message')}")
        placed = {i: cluster.worker_log_naming(i) for i in ids}
        _note(row, "runs by worker: " + ", ".join(f"{i[:8]} on {w}" for i, w in placed.items()))
        _check(row, len(set(placed.values()) - {None}) == 2, "the two runs ran on the two workers")

        batches = _batches(server.url)
        row["batches_created"], row["batches_needed"] = len(batches), runs
        row["orphans"] = sum(1 for b in batches if _status(b) not in BATCH_TERMINAL)
        _check(row, len(batches) == runs, f"one batch per run: {len(batches)} created for {runs} runs")
        _check(row, server.creates() == runs, f"{server.creates()} creates answered by the server for {runs} runs")
        _check(row, row["orphans"] == 0, f"no batch left running ({sorted(_status(b) for b in batches)})")
        owners = {(b.metadata or {}).get("prefect_flow_run_id") for b in batches}
        _check(row, None not in owners and len(owners) == runs, f"each batch names its run_batch flow run {owners}")

        root = storage.removeprefix("s3://").rstrip("/")
        keys = sorted(k.removeprefix(root + "/") for k in s3.find(root))
        _note(row, f"{storage}: {len(keys)} objects")
        _check(row, "reports/latest.md" in keys, f"{storage}/reports/latest.md exists")
        reports = [k for k in keys if k.startswith("reports/runs/") and k.endswith("report.md")]
        _check(row, len(reports) == runs, f"one report per run in S3 ({len(reports)})")
        requests = [k for k in keys if k.endswith("requests.jsonl")]
        outputs = [k for k in keys if k.endswith("output.jsonl")]
        _check(row, len(requests) == runs and len(outputs) == runs,
               f"each run's requests.jsonl and output.jsonl in S3 ({len(requests)}, {len(outputs)})")
        # One history object per run (reports/history/*.json): runs scoring at once must keep both records.
        history = [json.loads(s3.cat_file(f"{root}/{k}")) for k in keys if k.startswith("reports/history/")]
        missing = [i[:8] for i in ids if not any(str(h.get("run_id", "")).endswith(i[:8]) for h in history)]
        _check(row, not missing, f"the history records every run: {runs - len(missing)}/{runs} "
                                 f"({len(history)} records{'; lost: ' + ', '.join(missing) if missing else ''})")
    except Exception as exc:
        row["error"] = _short(exc)
        print(f"  [{row['scenario']}] ERROR {row['error']}", flush=True)
        print(traceback.format_exc(), flush=True)
    return _finish(row, started)


# ---------------------------------------------------------------------------------------------
# row 2: kill -9 of the worker running a flow run, then the operator's retry
# ---------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_row(cluster: PrefectCluster, deployment_id: str, server: BatchServer) -> dict[str, Any]:
    row = _row(ROW2)
    started = time.monotonic()
    try:
        run_id = cluster.create_run(deployment_id)

        def mid_run() -> tuple[dict[str, Any], list[Any]] | None:
            run = cluster.flow_run(run_id)
            if (run.get("state") or {}).get("type") in FINAL:
                raise DrillFailed(f"the run ended before the kill: {run['state']}")
            running = [b for b in _batches(server.url) if _status(b) in ("in_progress", "finalizing")]
            return (run, running) if run.get("infrastructure_pid") and running else None

        run, running = wait_for("the flow run mid-wait (its batch in progress)", mid_run, timeout=150, interval=0.5)
        pid = int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1])
        victim = cluster.worker_of(pid)
        if victim is None:
            raise DrillFailed(f"flow-run process {pid} is under neither worker")
        survivor = next(w for w in cluster.workers if w is not victim)
        counts = running[0].request_counts
        _note(row, f"kill -9 of {victim.name}'s process group (worker {victim.pid}, flow-run process {pid}) "
                   f"with batch {running[0].id} {_status(running[0])} "
                   f"({counts.completed if counts else '?'}/{counts.total if counts else '?'} requests done)")
        killed_at = time.monotonic()
        victim.kill()
        if not wait_for_gone(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)  # a child of our worker that left its group
            _note(row, f"flow-run process {pid} outlived its worker's group: killed its own group too")
        # Nobody reports a lost process worker's run: Prefect's zombie detection must mark it Crashed.
        limit = HEARTBEAT_SECONDS + ZOMBIE_AFTER_SECONDS + 60
        try:
            wait_for("the zombie automation to mark the run Crashed", lambda: cluster.state(run_id)[0] == "CRASHED",
                     timeout=limit, interval=1.0)
        except DrillFailed:
            pass
        kind, name = cluster.state(run_id)
        crashed_after = time.monotonic() - killed_at
        _check(row, kind == "CRASHED", f"Prefect's zombie detection marked the run Crashed within {limit} s of "
                                       f"the kill (it shows {name} after {crashed_after:.0f} s)")
        _note(row, f"Prefect marked the run {name} {crashed_after:.0f} s after the kill (heartbeat every "
                   f"{HEARTBEAT_SECONDS} s, automation after {ZOMBIE_AFTER_SECONDS} s of silence); subflows: "
                   f"{cluster.subflow_states(run_id)}")
        if kind not in FINAL:  # so that the rest of the row still runs: the operator marks it
            cluster.call("POST", f"/flow_runs/{run_id}/set_state", json={
                "state": {"type": "CRASHED", "name": "Crashed", "message": "marked Crashed by the drill"},
                "force": True})
        retry_at = time.monotonic()
        retried = cluster.cli("flow-run", "retry", run_id)
        _check(row, retried.returncode == 0, f"prefect flow-run retry: exit {retried.returncode} "
                                             f"{(retried.stdout + retried.stderr).strip()[-300:]}")

        def adopted() -> int | None:
            run = cluster.flow_run(run_id)
            if (run.get("state") or {}).get("type") in ("RUNNING", *FINAL) and run.get("infrastructure_pid"):
                new_pid = int(str(run["infrastructure_pid"]).rsplit(":", 1)[-1])
                if new_pid != pid:
                    return new_pid
            return None

        new_pid = wait_for("the retry to run again", adopted, timeout=120, interval=0.5)
        # Adoption: from the operator's retry until the other worker runs the flow run again.
        row["adoption_s"] = round(time.monotonic() - retry_at, 1)
        under = cluster.worker_of(new_pid) if _alive(new_pid) else None
        on_survivor = under is survivor or (under is None and run_id in survivor.log_path.read_text(errors="replace"))
        _note(row, f"the retry runs as process {new_pid} under {under.name if under else '?'}, "
                   f"{row['adoption_s']} s after the retry, {time.monotonic() - killed_at:.1f} s after the kill")
        _check(row, on_survivor, f"the retry ran on the surviving worker {survivor.name}")

        states = cluster.wait_final([run_id], timeout=180)
        kind, name = states[run_id]
        row["runs_succeeded"] = f"{1 if kind == 'COMPLETED' else 0}/1"
        _check(row, kind == "COMPLETED",
               f"the retried run ended {name}: {(cluster.flow_run(run_id).get('state') or {}).get('message')}")
        _note(row, f"run count {cluster.flow_run(run_id).get('run_count')}; subflows: "
                   f"{cluster.subflow_states(run_id)}")

        batches = _batches(server.url)
        row["batches_created"], row["batches_needed"] = len(batches), 1
        row["orphans"] = sum(1 for b in batches if _status(b) not in BATCH_TERMINAL)
        keys = {(b.metadata or {}).get("batch_ops_idempotency_key") for b in batches}
        owners = {(b.metadata or {}).get("prefect_flow_run_id") for b in batches}
        _note(row, f"batches: {[(b.id, _status(b)) for b in batches]}; keys {keys}; flow runs {owners}")
        _check(row, len(batches) == 1, f"the retry re-attached: {len(batches)} batches for 1 run")
        _check(row, server.creates() == 1, f"{server.creates()} creates answered by the server")
        _check(row, row["orphans"] == 0, "no batch left running")
        _check(row, all(_status(b) == "completed" for b in batches), "the batch completed")
    except Exception as exc:
        row["error"] = _short(exc)
        print(f"  [{row['scenario']}] ERROR {row['error']}", flush=True)
        print(traceback.format_exc(), flush=True)
    return _finish(row, started)


def wait_for_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def run(env: dict[str, str], workdir: Path) -> list[dict[str, Any]]:
    """Both Prefect rows (see the module doc). ``env``: the S3 settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) and BATCH_OPS_EVAL_STORAGE; optional BATCH_OPS_CLUSTER_PG_URL.
    Without S3 settings, a moto of its own. The Batch API servers are always its own (one per row)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        cluster: PrefectCluster | None = None
        try:
            env = dict(env)
            if not env.get("AWS_ENDPOINT_URL"):
                moto = stack.enter_context(Moto(workdir).running())
                env.update(moto.env)
                env.setdefault("BATCH_OPS_EVAL_STORAGE", f"s3://{moto.bucket}/prefect-eval")
            storage = env.get("BATCH_OPS_EVAL_STORAGE") or "s3://batch-ops-cluster/prefect-eval"
            retry_storage = storage.rstrip("/") + "-retry"
            fast = stack.enter_context(BatchServer(workdir, "prefect-eval", request_latency=0.0).running())
            slow = stack.enter_context(BatchServer(workdir, "prefect-slow", request_latency=SLOW_LATENCY,
                                                   concurrency=1).running())
            s3 = _s3(env)
            aws = {k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                       "AWS_DEFAULT_REGION") if k in env}
            cluster = PrefectCluster(workdir, env)
            stack.callback(cluster.stop)
            # The key lives with the workers (their flow-run processes inherit it), not in the deployment.
            cluster.up({"OPENAI_API_KEY": env.get("OPENAI_API_KEY") or CANARY})
            job = {**aws, "BATCH_OPS_EVAL_POLL_INTERVAL": "1"}
            ids = cluster.deploy({
                "nightly-eval-s3": {**job, "BATCH_OPS_EVAL_STORAGE": storage, "OPENAI_BASE_URL": fast.url},
                "nightly-eval-kill": {**job, "BATCH_OPS_EVAL_STORAGE": retry_storage, "OPENAI_BASE_URL": slow.url},
            })
            cluster.wait_workers()
            cluster.detect_zombies()
            setup = time.monotonic() - started
            print(f"   prefect: server ({cluster.db}), pool {POOL}, 2 workers, 2 deployments up in {setup:.0f} s",
                  flush=True)
        except Exception as exc:
            print(traceback.format_exc(), flush=True)
            for scenario in (ROW1, ROW2):
                row = _row(scenario)
                row["error"] = f"setup failed: {_short(exc)}"
                if cluster is not None and cluster.server is not None:
                    row["notes"].append(f"server log: {cluster.server.tail(5)[-400:]}")
                rows.append(_finish(row, started))
            return rows

        first = nightly_row(cluster, ids["nightly-eval-s3"], fast, s3, storage)
        first["notes"].insert(0, f"Prefect server on {cluster.db}; setup {setup:.0f} s")
        rows.append(first)
        second = kill_row(cluster, ids["nightly-eval-kill"], slow)
        rows.append(second)
        for row, server in ((first, fast), (second, slow)):
            with contextlib.suppress(Exception):
                _note(row, f"batch-ops orphans --prefect --json: {_orphans_cli(cluster, server.url)}")
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("scenario", "runs succeeded", "batches created / needed", "orphans", "adoption s", "ok", "notes")
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        notes = "; ".join(([f"FAILED: {r['error']}"] if r.get("error") else []) + list(r["notes"]))
        cells = (r["scenario"], r["runs_succeeded"] or "-", f"{r['batches_created']} / {r['batches_needed']}",
                 r["orphans"], r["adoption_s"] if r["adoption_s"] is not None else "-",
                 "PASS" if r["ok"] else "FAIL", notes)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    keep = "--keep" in sys.argv
    base = Path(tempfile.mkdtemp(prefix="batch_ops_prefect_rows_"))
    started = time.monotonic()
    try:
        rows = run({"OPENAI_API_KEY": CANARY}, base)
    finally:
        if keep:
            print(f"work directory kept: {base}")
        else:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    print()
    print(_table(rows))
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} rows passed in {time.monotonic() - started:.0f} s")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

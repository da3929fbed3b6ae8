"""Suite ``airflow_stack``: drills against a real Airflow deployment (API server, scheduler with
LocalExecutor, DAG processor, triggerer; SQLite), in a throwaway AIRFLOW_HOME.

* ``triggerer-restart`` (3): two deferred tasks, one with a 10-minute timeout whose batch takes
  a minute, one with a 60 s timeout whose batch takes far longer. The triggerer is killed with
  ``kill -9`` while both wait and a new one is started. The first task completes; the second
  times out at the deadline it was given before the crash, not at a fresh one; the serialized
  trigger kwargs (``trigger`` table) hold the same absolute deadline before and after.
* ``worker-kill`` (4): a proxy in front of the server lets the task's create reach the server
  and holds back the answer; the task process is killed with ``kill -9`` while it waits for it.
  Airflow retries the task (try 2, same dag/task/run/map index): it re-attaches to the batch the
  first try created, sends no second create, and the server holds one batch.
* ``security-airflow`` (7a): a deferred batch through a connection stored in the metadata DB; the
  key is searched for in every task, trigger and component log and every cell of the metadata
  DB (XCom, trigger kwargs while deferred, rendered fields, ...) except ``connection.password``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills._common import (
    CANARY,
    AirflowHome,
    AirflowStack,
    Drill,
    DrillFailed,
    HoldProxy,
    audit_server,
    descendant_of,
    oracle,
    scan_tree,
    sqlite_scan,
    wait_for,
)

__all__ = ["run"]

DEADLINE_TIMEOUT = 60.0
DAG_IDS = {
    "triggerer-restart": ["drill_triggerer_wait", "drill_triggerer_deadline"],
    "worker-kill": ["drill_worker_kill"],
    "security-airflow": ["drill_security"],
}


def run(names: list[str], work: Path) -> list[Drill]:
    from batch_ops.server import serve_in_background
    from batch_ops.server.background import free_port

    home = AirflowHome(work)
    os.environ.update({k: v for k, v in home.env.items() if k.startswith("AIRFLOW")})
    titles = {"triggerer-restart": "triggerer killed and restarted", "worker-kill": "worker killed mid-create",
              "security-airflow": "Airflow security"}
    results: list[Drill] = []
    with contextlib.ExitStack() as stack_:
        # One server per drill, so one drill's batches never slow down or muddle another's audit.
        slow = stack_.enter_context(serve_in_background(api_key=CANARY, request_latency=1.0, concurrency=1))
        stuck = stack_.enter_context(serve_in_background(api_key=CANARY, request_latency=2.0, concurrency=1))
        plain = stack_.enter_context(serve_in_background(api_key=CANARY, request_latency=0.05, concurrency=2))
        secure = stack_.enter_context(serve_in_background(api_key=CANARY, request_latency=0.2, concurrency=2,
                                                          fail_requests=0.2, seed=2))
        proxy = stack_.enter_context(HoldProxy(str(plain)).running())
        home.connection("drill_slow", slow)
        home.connection("drill_stuck", stuck)
        home.connection("drill_hold", proxy.url)
        home.env["BATCH_OPS_DRILL_DEADLINE_TIMEOUT"] = str(DEADLINE_TIMEOUT)
        home.migrate()
        # The security drill's connection lives in the metadata DB, as a user would add it.
        added = home.cli("connections", "add", "drill_security", "--conn-json",
                         json.dumps({"conn_type": "openaibatch", "host": str(secure), "password": CANARY}))
        if added.returncode != 0:
            raise DrillFailed(f"airflow connections add failed: {added.stderr[-1000:]}")

        stack = AirflowStack(home, free_port())
        started = time.monotonic()
        try:
            stack.start()
            stack.wait_ready([dag for name in names for dag in DAG_IDS[name]])
            print(f"   Airflow deployment up in {time.monotonic() - started:.0f} s", flush=True)
            bodies: dict[str, Callable[[Drill], None]] = {
                "triggerer-restart": lambda d: triggerer_restart(d, stack, slow=str(slow), stuck=str(stuck)),
                "worker-kill": lambda d: worker_kill(d, stack, proxy=proxy, server=str(plain)),
                "security-airflow": lambda d: security_airflow(d, stack, server=str(secure)),
            }
            for name in names:
                print(f"-- {name}", flush=True)
                results.append(Drill(name, titles[name]).run(bodies[name]))
        finally:
            stack.stop()
    return results


def _trigger_rows(stack: AirflowStack, ti_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The trigger rows of these task instances: id, triggerer job id and decoded kwargs."""
    rows = {}
    for ti_id in ti_ids:
        found = stack.home.query(
            "select t.id, t.triggerer_id, t.kwargs from trigger t join task_instance ti on ti.trigger_id = t.id "
            "where ti.id = ?", ti_id)
        if found:
            tid, triggerer, kwargs = found[0]
            rows[ti_id] = {"id": tid, "triggerer_id": triggerer, "raw": kwargs, "kwargs": _decode_kwargs(kwargs)}
    return rows


def _decode_kwargs(raw: Any) -> dict[str, Any]:
    """Trigger kwargs as stored: Airflow's serialized (and Fernet-encrypted when a key is set) dict."""
    from airflow.models.trigger import Trigger

    value = Trigger._decrypt_kwargs(raw) if hasattr(Trigger, "_decrypt_kwargs") else json.loads(raw)
    return dict(value)


# ---------------------------------------------------------------------------------------------
# 3. triggerer killed and restarted
# ---------------------------------------------------------------------------------------------


def triggerer_restart(d: Drill, stack: AirflowStack, *, slow: str, stuck: str) -> None:
    """kill -9 the triggerer while two tasks are deferred; a new triggerer finishes the wait and
    keeps the original deadline."""
    wait_run = stack.trigger_dag("drill_triggerer_wait")
    dead_run = stack.trigger_dag("drill_triggerer_deadline")
    def deferred(dag_id: str, run_id: str) -> dict[str, Any] | None:
        ti = stack.ti(dag_id, run_id)
        return ti if ti is not None and ti["state"] == "deferred" else None

    tis = {dag_id: stack.wait(f"{dag_id} deferred", functools.partial(deferred, dag_id, run_id), timeout=180)
           for dag_id, run_id in (("drill_triggerer_wait", wait_run), ("drill_triggerer_deadline", dead_run))}
    ti_ids = [tis["drill_triggerer_wait"]["id"], tis["drill_triggerer_deadline"]["id"]]
    first = stack.live_triggerer()
    before = stack.wait("both triggers running in the triggerer", lambda: (
        (rows := _trigger_rows(stack, ti_ids)) and len(rows) == 2
        and all(r["triggerer_id"] == first for r in rows.values()) and rows), timeout=60)
    # Let the triggers poll for a while, so the kill lands in the middle of a real wait and a
    # deadline restarted at the adoption would fall clearly later than the original one.
    time.sleep(12.0)
    sdk = oracle(slow)
    (slow_batch,) = list(sdk.batches.list())
    progress_at_kill = sdk.batches.retrieve(slow_batch.id).request_counts
    old = stack.kill_triggerer()
    killed_at = time.time()
    d.check(not old.alive(), f"the triggerer (pid {old.pid}) is gone after kill -9")
    d.check(bool(wait_for("the triggerer's process group to be gone", lambda: not _group_alive(old.pid), timeout=10)),
            "its trigger-runner child went with it")
    states = [stack.ti_state("drill_triggerer_wait", wait_run), stack.ti_state("drill_triggerer_deadline", dead_run)]
    d.check(states == ["deferred", "deferred"], f"both tasks stay deferred while no triggerer runs ({states})")
    time.sleep(2.0)
    stack.start_triggerer()
    # A new triggerer adopts the triggers once the old one has missed its heartbeats.
    after = stack.wait("the triggers adopted by the new triggerer", lambda: (
        (rows := _trigger_rows(stack, ti_ids)) and len(rows) == 2
        and all(r["triggerer_id"] not in (None, first) for r in rows.values()) and rows), timeout=120)
    adopted_at = time.time()
    second = next(iter(after.values()))["triggerer_id"]
    d.check(second != first, f"a different triggerer job runs them now (job {first} -> {second})")
    for ti_id, label in zip(ti_ids, ("wait", "deadline"), strict=True):
        b, a = before[ti_id], after[ti_id]
        d.check(a["id"] == b["id"], f"{label}: the same trigger row, not a re-deferral")
        d.check(a["kwargs"].get("deadline") == b["kwargs"].get("deadline") and b["kwargs"].get("deadline"),
                f"{label}: the serialized deadline is unchanged ({b['kwargs'].get('deadline')} -> "
                f"{a['kwargs'].get('deadline')})")
        d.check(a["kwargs"].get("timeout") is None, f"{label}: no relative timeout that a new process could restart")
    deadline = float(before[ti_ids[1]]["kwargs"]["deadline"])
    d.check(adopted_at < deadline - 5, f"the new triggerer took over {deadline - adopted_at:.0f} s before the "
                                       "short wait's deadline (so the deadline test means something)")

    # The short wait must end at its original deadline, not DEADLINE_TIMEOUT after the adoption.
    fired = stack.wait("the short wait's trigger to fire", lambda: (
        stack.ti_state("drill_triggerer_deadline", dead_run) not in ("deferred", None) and time.time()),
        timeout=deadline - time.time() + 60)
    fresh = adopted_at + DEADLINE_TIMEOUT
    d.check(abs(fired - deadline) < 8, f"the short wait ended {fired - deadline:+.1f} s from its original deadline")
    d.check(fresh - deadline > 10 and fired - deadline < (fresh - deadline) / 2,
            f"...not at a fresh one, which would have been {fresh - deadline:.0f} s later")
    final = stack.wait("the short-timeout task to fail", lambda: (
        (s := stack.ti_state("drill_triggerer_deadline", dead_run)) in ("failed", "success") and s), timeout=120)
    logs = stack.task_logs("drill_triggerer_deadline", dead_run)
    d.check(final == "failed" and "Timed out waiting for batch" in logs,
            f"the short-timeout task failed with BatchTimeoutError ({final})")

    final = stack.wait("the long wait's task to finish", lambda: (
        (s := stack.ti_state("drill_triggerer_wait", wait_run)) in ("failed", "success") and s), timeout=180)
    d.check(final == "success", f"the long wait's task succeeded after the restart ({final})")
    result = stack.xcom("drill_triggerer_wait", wait_run)
    audit = audit_server(slow)
    d.check(len(audit.batches) == 1 and audit.statuses == {"completed": 1}, f"one batch, completed ({audit.statuses})")
    d.check(result is not None and result["batch_id"] == slow_batch.id and result["status"] == "completed",
            f"the task's XCom result is that batch, completed ({result and result.get('status')})")
    d.check(audit.requests == 45 and audit.completed == 45 and not audit.problems,
            f"45/45 requests answered exactly once ({audit.requests} requests, {audit.problems})")
    trigger_logs = [p.name for p in (stack.home.logs / "dag_id=drill_triggerer_wait").rglob("*trigger*")]
    d.check(any(str(second) in name for name in trigger_logs),
            f"the new triggerer (job {second}) wrote the trigger's log ({trigger_logs})")

    # Accounting for the batch the short wait gave up on: it kept running; cancel and check it.
    stuck_sdk = oracle(stuck)
    (stuck_batch,) = list(stuck_sdk.batches.list())
    running = stuck_sdk.batches.retrieve(stuck_batch.id).status
    d.check(running == "in_progress", f"the timed-out task's batch keeps running on the server ({running})")
    stuck_sdk.batches.cancel(stuck_batch.id)
    wait_for("the stuck batch cancelled", lambda: stuck_sdk.batches.retrieve(stuck_batch.id).status == "cancelled",
             timeout=60)
    audit = audit_server(stuck)
    d.check(len(audit.batches) == 1 and not audit.problems and audit.completed + audit.failed == 200,
            f"the short wait's batch: cancelled, all 200 requests accounted for ({audit.problems})")
    stuck_sdk.close()
    sdk.close()
    d.figure("kill", f"kill -9 at {progress_at_kill.completed}/45 done; new triggerer adopted after "
                     f"{adopted_at - killed_at:.0f} s")
    d.figure("deadline", f"same in trigger kwargs before/after; fired {fired - deadline:+.1f} s from it "
                         f"(a fresh one: +{fresh - deadline:.0f} s)")
    d.figure("long wait", "success, 45/45 answered once")


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in the process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":  # fields after the name: state, ppid, pgrp
            return True
    return False


# ---------------------------------------------------------------------------------------------
# 4. worker killed mid-create
# ---------------------------------------------------------------------------------------------


def worker_kill(d: Drill, stack: AirflowStack, *, proxy: HoldProxy, server: str) -> None:
    """The task process dies between "the create reached the server" and "the task heard back";
    Airflow's retry re-attaches instead of creating a second batch."""
    from batch_ops.airflow.operators import idempotency_key

    run_id = stack.trigger_dag("drill_worker_kill")
    wait_for("the create to reach the server (its answer held back)", proxy.held.is_set, timeout=180,
             alive=stack.dead)
    sdk = oracle(server)
    (created,) = wait_for("the batch on the server", lambda: list(sdk.batches.list()), timeout=30)
    # The key names the task instance in this deployment (the identity its owner record names).
    deployment = json.loads((created.metadata or {}).get("airflow_task_instance") or "{}").get("deployment")
    key = idempotency_key(dag_id="drill_worker_kill", task_id="batch", run_id=run_id, map_index=-1,
                          deployment=deployment)
    d.check(((created.metadata or {}).get("batch_ops_idempotency_key") or "").split("@")[0] == key,
            "the server holds the batch, tagged with the task instance's idempotency key (<key>@<requests>)")
    ti = stack.wait("the task instance's pid", lambda: (t := stack.ti("drill_worker_kill", run_id)) and t["pid"] and t,
                    timeout=30)
    pid = int(ti["pid"])
    scheduler = stack.procs["scheduler"].pid
    d.require(descendant_of(pid, scheduler), f"pid {pid} is a task process of our scheduler ({scheduler})")
    d.check(stack.xcom("drill_worker_kill", run_id, key="batch_id") is None,
            "the first try recorded nothing (no batch_id in XCom) when it was killed")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    final = stack.wait("the retried task to finish", lambda: (
        (t := stack.ti("drill_worker_kill", run_id)) and t["state"] in ("success", "failed") and t), timeout=180)
    d.check(final["state"] == "success" and final["try_number"] == 2,
            f"Airflow retried the task and try 2 succeeded ({final['state']}, try {final['try_number']})")
    logs = stack.task_logs("drill_worker_kill", run_id)
    d.check(f"Re-attaching to batch {created.id}" in logs, "try 2 re-attached to the batch of try 1 (task log)")
    result = stack.xcom("drill_worker_kill", run_id)
    d.check(result is not None and result["batch_id"] == created.id and result["status"] == "completed",
            "the task's result is that batch, completed")
    d.check(proxy.creates == 1, f"no second create was sent ({proxy.creates} POST /v1/batches through the proxy)")
    audit = audit_server(server)
    d.check(len(audit.batches) == 1 and audit.statuses == {"completed": 1},
            f"the server holds one batch, not two ({audit.statuses})")
    d.check(audit.requests == 20 and audit.completed == 20 and not audit.problems,
            f"20/20 requests answered exactly once ({audit.problems})")
    d.check(audit.files == 2, f"one input and one output file: no second upload ({audit.files} files)")
    sdk.close()
    d.figure("kill", f"kill -9 of task pid {pid} with the create answered but unheard")
    d.figure("retry", f"try 2 re-attached, success {time.monotonic() - killed_at:.0f} s after the kill")
    d.figure("server", "1 batch, 1 create, 20/20 answered")


# ---------------------------------------------------------------------------------------------
# 7a. security
# ---------------------------------------------------------------------------------------------


def security_airflow(d: Drill, stack: AirflowStack, *, server: str) -> None:
    """The key is nowhere in Airflow's logs or metadata DB, the connection's password aside."""
    home = stack.home
    run_id = stack.trigger_dag("drill_security")
    ti = stack.wait("drill_security deferred", lambda: (t := stack.ti("drill_security", run_id))
                    and t["state"] == "deferred" and t, timeout=180)
    rows = stack.wait("its trigger row", lambda: _trigger_rows(stack, [ti["id"]]), timeout=60)
    row = rows[ti["id"]]
    d.check(CANARY not in str(row["raw"]) and CANARY not in json.dumps(row["kwargs"], default=str),
            f"the trigger's serialized kwargs hold no key ({sorted(row['kwargs'])})")
    d.check(row["kwargs"].get("conn_id") == "drill_security", "the trigger carries the connection id instead")
    cells_deferred, hits_deferred = sqlite_scan(home.db, CANARY, skip=[("connection", "password")])
    final = stack.wait("drill_security to finish", lambda: (
        (s := stack.ti_state("drill_security", run_id)) in ("success", "failed") and s), timeout=120)
    d.check(final == "success", f"the security DAG's task succeeded ({final})")

    stored = home.query("select password from connection where conn_id = 'drill_security'")
    d.check(bool(stored) and stored[0][0] is not None, "the connection (with its key) is in the metadata DB")
    cells, hits = sqlite_scan(home.db, CANARY, skip=[("connection", "password")])
    d.check(not hits_deferred and not hits,
            f"no cell of the metadata DB outside connection.password holds the key (while deferred: "
            f"{hits_deferred}, after: {hits})")
    tables = {t: home.query(f'select count(*) from "{t}"')[0][0]
              for t in ("xcom", "rendered_task_instance_fields", "task_instance", "log")}
    d.check(tables["xcom"] > 0 and tables["rendered_task_instance_fields"] > 0,
            f"XCom and rendered fields were there to search ({tables})")
    rendered = home.query("select rendered_fields from rendered_task_instance_fields where dag_id = 'drill_security'")
    d.check(bool(rendered) and "security drill" in str(rendered[0][0]),
            "the rendered fields searched include the task's metadata")
    logs_files, log_hits = scan_tree(home.logs, CANARY)
    text = stack.task_logs("drill_security", run_id)
    d.check("Created batch" in text and any("trigger" in p.name for p in home.logs.rglob("*")),
            "task and trigger logs were written (and searched)")
    component_hits = [p.name for p in home.path.glob("*.log") if CANARY.encode() in p.read_bytes()]
    d.check(not log_hits, f"no task or trigger log holds the key ({logs_files} files; found in {log_hits})")
    d.check(not component_hits, f"no component log (scheduler, triggerer, API server, DAG processor) holds it "
                                f"({component_hits})")
    audit = audit_server(server)
    d.check(len(audit.batches) == 1 and audit.statuses == {"completed": 1} and not audit.problems,
            f"the batch completed, every request accounted for ({audit.statuses})")
    d.figure("metadata DB", f"{cells} cells ({cells_deferred} while deferred), 0 hits outside connection.password")
    d.figure("logs", f"{logs_files} task/trigger logs + {len(list(home.path.glob('*.log')))} component logs, 0 hits")

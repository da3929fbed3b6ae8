"""Suite ``money_drills`` (drill 8): the requests paid for against the requests needed, on every
path by which a retry, a race or a crash could pay twice.

"Paid" is what the server billed: the successful requests of every batch it holds (read with the
official ``openai`` SDK). "Needed" is the number of requests of the work. Every row must show
paid == needed, except concurrent tries, where the extra must equal what the duplicates finished
before they cancelled themselves (that figure is printed).

* ``money-core`` (8a): two and four processes submit one key at the same moment.
* ``money-airflow`` (8b): a real deployment (scheduler with LocalExecutor, triggerer); the scheduler
  retries each task in a new process after the outcome that calls for it: a ``failed`` batch
  (``token_limit_exceeded``), one that ``expired`` with part of its work done, one that completed
  with failed requests under ``fail_on_request_failures=True``; and a task process killed with
  ``kill -9`` after its upload, its create never delivered.
* ``money-prefect`` (8c): ``prefect server start``; a ``run_batch`` flow run retried after an
  expired batch; and a parent flow deployed to a process work pool, fanning out ten ``run_batch``
  subflows, whose worker and flow-run process are killed with ``kill -9`` once five of the batches
  exist, then retried with ``prefect flow-run retry`` and picked up by a new worker.

The table of rows is written to ``drills/results/money.md`` by the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from drills._common import (
    CANARY,
    ROOT,
    AirflowHome,
    AirflowStack,
    Drill,
    HoldProxy,
    Proc,
    chat_lines,
    descendant_of,
    descendants,
    oracle,
    wait_for,
    write_jsonl,
)
from drills._racers import race

__all__ = ["paid_for", "run"]

FLOWS = Path(__file__).resolve().parent / "flows"


def run(names: list[str], work: Path) -> list[Drill]:
    titles = {"money-core": "paid vs needed: concurrent tries", "money-airflow": "paid vs needed: Airflow retries",
              "money-prefect": "paid vs needed: Prefect retries"}
    bodies: dict[str, Callable[[Drill], None]] = {
        "money-core": lambda d: money_core(d, work / "core"),
        "money-airflow": lambda d: money_airflow(d, work / "airflow"),
        "money-prefect": lambda d: money_prefect(d, work / "prefect"),
    }
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, titles[name]).run(bodies[name]))
    return results


# ---------------------------------------------------------------------------------------------
# what the server billed
# ---------------------------------------------------------------------------------------------


def _all_ended(url: str) -> list[Any]:
    sdk = oracle(url)
    try:
        batches = list(sdk.batches.list(limit=100))
        if any(b.status not in ("completed", "failed", "expired", "cancelled") for b in batches):
            return []
        return sorted(batches, key=lambda b: (b.created_at, b.id))
    finally:
        sdk.close()


def paid_for(url: str, *, timeout: float = 120.0) -> tuple[int, list[Any], int]:
    """(successful requests over every batch, the batches oldest first, input files uploaded),
    once every batch on the server has ended."""
    batches = wait_for("every batch on the server to end", lambda: _all_ended(url), timeout=timeout, interval=0.3)
    sdk = oracle(url)
    try:
        uploads = sum(1 for f in sdk.files.list() if f.purpose == "batch")
    finally:
        sdk.close()
    return sum(b.request_counts.completed for b in batches if b.request_counts), batches, uploads


def _row(d: Drill, scenario: str, *, paid: int, needed: int, detail: str, extra_allowed: int = 0) -> None:
    ok = paid == needed + extra_allowed
    d.check(ok, f"{scenario}: paid for {paid} requests, needed {needed}"
            + (f" (+{extra_allowed} finished by duplicates before their cancel)" if extra_allowed else ""))
    d.figure(scenario, f"paid {paid} / needed {needed}" + (f" (+{extra_allowed} dup)" if extra_allowed else "")
             + f"; {detail}")


# ---------------------------------------------------------------------------------------------
# 8a. concurrent tries of one key
# ---------------------------------------------------------------------------------------------

def money_core(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    needed = 60
    path = write_jsonl(work / "race.jsonl", chat_lines("race", needed))
    for n in (2, 4):
        # One request at a time, 20 ms each: a duplicate gets some work done before it cancels itself.
        with serve_in_background(api_key=CANARY, concurrency=1, request_latency=0.02) as url:
            said = race(d, n, settings={"api_key": CANARY, "base_url": str(url)}, source=path,
                        spec={"endpoint": "/v1/chat/completions", "idempotency_key": f"race-{n}"})
            ids = {s["batch"] for s in said}
            d.check(len(ids) == 1, f"{n} tries agree on one batch ({len(ids)} distinct answers)")
            paid, batches, _uploads = paid_for(url)
            kept = [b for b in batches if b.status != "cancelled"]
            d.check(len(kept) == 1 and kept[0].id in ids, f"{n} tries: one batch kept, the others cancelled "
                    f"({[(b.id[-6:], b.status) for b in batches]})")
            dup = sum(b.request_counts.completed for b in batches if b.status == "cancelled" and b.request_counts)
            _row(d, f"{n} concurrent tries of one key", paid=paid, needed=needed, extra_allowed=dup,
                 detail=f"{len(batches)} created, {len(batches) - 1} cancelled themselves")


# ---------------------------------------------------------------------------------------------
# 8b. Airflow retries, each try a new process
# ---------------------------------------------------------------------------------------------

MONEY_DAGS = ("drill_money_failed", "drill_money_expired", "drill_money_failures", "drill_money_kill")


def money_airflow(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background
    from batch_ops.server.background import free_port

    home = AirflowHome(work)
    with contextlib.ExitStack() as stack_:
        servers = {
            "drill_money_failed": stack_.enter_context(serve_in_background(
                api_key=CANARY, token_limit_failures=1, request_latency=0.01)),
            # One request at a time, 0.1 s each, a 1.5 s window: each attempt answers about 15 of 40.
            "drill_money_expired": stack_.enter_context(serve_in_background(
                api_key=CANARY, concurrency=1, request_latency=0.1, expire_after=1.5)),
            "drill_money_failures": stack_.enter_context(serve_in_background(
                api_key=CANARY, fail_requests=0.25, seed=8, request_latency=0.01)),
            "drill_money_kill": stack_.enter_context(serve_in_background(api_key=CANARY, request_latency=0.01)),
        }
        proxy = stack_.enter_context(HoldProxy(str(servers["drill_money_kill"]), forward=False).running())
        for dag_id, url in servers.items():
            home.connection(dag_id, proxy.url if dag_id == "drill_money_kill" else str(url))
        home.migrate()
        stack = AirflowStack(home, free_port())
        try:
            stack.start()
            stack.wait_ready(MONEY_DAGS)
            runs = {dag_id: stack.trigger_dag(dag_id) for dag_id in MONEY_DAGS}

            # The kill: once the first try's create is held (its upload done), kill -9 the task process.
            wait_for("the first try's create to be held", proxy.held.is_set, timeout=180, alive=stack.dead)
            ti = stack.wait("the task's pid", lambda: (t := stack.ti("drill_money_kill", runs["drill_money_kill"]))
                            and t["pid"] and t, timeout=30)
            pid = int(ti["pid"])
            d.require(descendant_of(pid, stack.procs["scheduler"].pid), f"pid {pid} is a task process of ours")
            os.kill(pid, signal.SIGKILL)

            for dag_id in MONEY_DAGS:
                final = stack.wait(f"{dag_id} to finish", lambda dag_id=dag_id: (
                    (t := stack.ti(dag_id, runs[dag_id])) and t["state"] in ("success", "failed") and t), timeout=300)
                d.check(final["state"] == "success", f"{dag_id}: the task ends in success ({final['state']})")
                paid, batches, uploads = paid_for(str(servers[dag_id]))
                result = stack.xcom(dag_id, runs[dag_id]) or {}
                d.check(result.get("batch_ids") == [b.id for b in batches],
                        f"{dag_id}: the result lists the chain's batches")
                tries = final["try_number"]
                detail = f"{tries} tries (new processes), {len(batches)} batches, {uploads} upload(s)"
                if dag_id == "drill_money_failed":
                    d.check(uploads == 1 and len(batches) == 2, "after `failed` the retry sent the same input file")
                    _row(d, "Airflow retry after failed (token_limit_exceeded)", paid=paid, needed=40, detail=detail)
                elif dag_id == "drill_money_expired":
                    d.check(len(batches) >= 2 and batches[0].status == "expired", "the first batch expired part-done")
                    _row(d, "Airflow retry after expired with partial output", paid=paid, needed=40, detail=detail)
                elif dag_id == "drill_money_failures":
                    d.check(len(batches) >= 2, "request failures called for a retry")
                    _row(d, "Airflow retry after request failures (fail_on_request_failures)", paid=paid,
                         needed=40, detail=detail)
                else:
                    d.check(tries == 2 and len(batches) == 1 and uploads == 1,
                            f"the retry created one batch from the killed try's upload ({detail})")
                    _row(d, "Airflow worker killed mid-create (kill -9), retried", paid=paid, needed=40,
                         detail=detail)
        finally:
            stack.stop()


# ---------------------------------------------------------------------------------------------
# 8c. Prefect: a flow-run retry, and a parent retried after its worker died
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def prefect_server(work: Path) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free port with a throwaway home; yields the client environment."""
    from batch_ops.server.background import free_port

    home = work / "prefect_home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "OPENAI", "AIRFLOW"))}
    env = {
        **keep,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        # SQLite's busy timeout: a write waits this long for the lock (Prefect's 10 s default fails a
        # flow run with "database is locked" when the machine is busy with other work).
        "PREFECT_API_DATABASE_TIMEOUT": "60",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml"),
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }
    # This suite process talks to the server too (reading flow-run states): same settings, before
    # Prefect is first imported here.
    os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT")})
    server = Proc("prefect-server", [str(Path(sys.executable).with_name("prefect")), "server", "start",
                                     "--host", "127.0.0.1", "--port", str(port)], env=env, log=work / "server.log")
    try:
        import httpx

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
            return False

        wait_for("prefect server start", healthy, timeout=120, interval=0.5,
                 alive=lambda: None if server.alive() else f"prefect server exited:\n{server.tail()}")
        yield env
    finally:
        server.stop()


def _prefect(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("prefect")), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)


_DEPLOY = textwrap.dedent("""
    import sys
    from prefect import flow
    deployment_id = flow.from_source(source=sys.argv[1], entrypoint="money_fanout.py:money_fanout").deploy(
        name="money", work_pool_name=sys.argv[2], print_next_steps=False)
    print(deployment_id)
""")

_RETRY_FLOW = textwrap.dedent("""
    import asyncio, json, sys
    from batch_ops.prefect import run_batch
    async def main():
        retrying = run_batch.with_options(retries=8, retry_delay_seconds=0)
        result = await retrying(input_path=sys.argv[1], endpoint="/v1/chat/completions", poll_interval=0.2)
        print(json.dumps(result.model_dump(mode="json")))
    asyncio.run(main())
""")


def money_prefect(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    work.mkdir(parents=True, exist_ok=True)
    with prefect_server(work) as env:
        # -- a run_batch flow run retried after an expired batch ----------------------------------
        with serve_in_background(api_key=CANARY, concurrency=1, request_latency=0.1, expire_after=1.5) as url:
            path = write_jsonl(work / "retry.jsonl", chat_lines("pr", 40))
            run_env = {**env, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": str(url)}
            proc = subprocess.run([sys.executable, "-c", _RETRY_FLOW, str(path)], env=run_env, capture_output=True,
                                  text=True, timeout=240, stdin=subprocess.DEVNULL)
            d.check(proc.returncode == 0, f"the retried run_batch flow run succeeds: {proc.stderr[-300:]}")
            lines = proc.stdout.strip().splitlines()
            result = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"status": "failed"}
            paid, batches, uploads = paid_for(str(url))
            d.check(result["batch_ids"] == [b.id for b in batches] and len(batches) >= 2,
                    "the flow run was retried and made one attempt per try")
            _row(d, "Prefect flow-run retry after expired", paid=paid, needed=40,
                 detail=f"{len(batches)} batches, {uploads} uploads, result status {result['status']}")

        # -- a parent deployment retried: after its worker died, and after its subflows gave up ----
        pool = "drill-money-pool"
        made = _prefect(env, "work-pool", "create", pool, "--type", "process")
        d.require(made.returncode == 0, f"work pool: {made.stdout[-500:]}{made.stderr[-500:]}")
        deployed = subprocess.run([sys.executable, "-c", _DEPLOY, str(FLOWS), pool], env=env, capture_output=True,
                                  text=True, timeout=120, stdin=subprocess.DEVNULL)
        d.require(deployed.returncode == 0, f"deploy: {deployed.stderr[-1500:]}")
        parent_retry_after_kill(d, work, env, pool)
        parent_retry_after_give_up(d, work, env, pool)


def _worker(work: Path, env: dict[str, str], pool: str, name: str, url: str) -> Proc:
    worker_env = {**env, "OPENAI_API_KEY": CANARY, "OPENAI_BASE_URL": url}
    return Proc(name, [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", pool,
                       "--type", "process"], env=worker_env, log=work / f"{name}.log")


def _run_deployment(d: Drill, env: dict[str, str], paths: list[str], **params: Any) -> str:
    argv = ["deployment", "run", "drill-money-fanout/money", "--param", f"paths={json.dumps(paths)}"]
    for name, value in params.items():
        argv += ["--param", f"{name}={json.dumps(value)}"]
    run = _prefect(env, *argv)
    d.require(run.returncode == 0, f"deployment run: {run.stdout[-800:]}{run.stderr[-800:]}")
    return _flow_run_id(run.stdout)


def _retry_and_finish(d: Drill, work: Path, env: dict[str, str], pool: str, url: str, flow_run_id: str,
                      name: str) -> str | None:
    retried = _prefect(env, "flow-run", "retry", flow_run_id)
    d.require(retried.returncode == 0, f"flow-run retry: {retried.stdout[-800:]}{retried.stderr[-800:]}")
    worker = _worker(work, env, pool, name, url)
    try:
        return wait_for("the retried parent to finish", lambda: asyncio.run(_final_state(env, flow_run_id)),
                        timeout=300, interval=1.0,
                        alive=lambda: None if worker.alive() else f"worker exited:\n{worker.tail()}")
    finally:
        worker.stop()


def parent_retry_after_kill(d: Drill, work: Path, env: dict[str, str], pool: str) -> None:
    """Ten subflows started a second apart; worker and flow-run process killed once five batches exist."""
    from batch_ops.server import serve_in_background

    with serve_in_background(api_key=CANARY, concurrency=8, request_latency=0.5) as url:
        paths = [str(write_jsonl(work / f"kill{i}.jsonl", chat_lines(f"kill{i}", 20))) for i in range(10)]
        worker = _worker(work, env, pool, "worker-1", str(url))
        sdk = oracle(str(url))
        try:
            flow_run_id = _run_deployment(d, env, paths, stagger=1.0)
            wait_for("five of the ten batches to exist", lambda: len(list(sdk.batches.list(limit=100))) >= 5,
                     timeout=180, interval=0.1,
                     alive=lambda: None if worker.alive() else f"worker exited:\n{worker.tail()}")
            # A lost pod: the worker and every process under it (the flow run) die at once.
            tree = descendants(worker.pid)
            worker.kill()
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            created_before = len(list(sdk.batches.list(limit=100)))
        finally:
            worker.stop()
            sdk.close()
        # Nothing marks a killed run for us here (Prefect needs heartbeats and an automation for
        # that): mark it crashed, as that automation would, then retry it from the CLI.
        asyncio.run(_mark_crashed(env, flow_run_id))
        state = _retry_and_finish(d, work, env, pool, str(url), flow_run_id, "worker-2")
        d.check(state == "COMPLETED", f"the parent retried after the kill completed ({state})")
        paid, batches, uploads = paid_for(str(url))
        d.check(len(batches) == 10, f"ten batches for ten subflows ({len(batches)}; {created_before} at the kill)")
        _row(d, f"Prefect parent retried after kill -9 with {created_before} of 10 batches created",
             paid=paid, needed=200, detail=f"{len(batches)} batches, {uploads} uploads")


def parent_retry_after_give_up(d: Drill, work: Path, env: dict[str, str], pool: str) -> None:
    """The first run's ten subflows stop waiting after 1 s and fail the parent; retried, Prefect makes
    ten *new* subflow runs (their old ones ended), which must attach to the ten running batches."""
    from batch_ops.server import serve_in_background

    # 200 requests, 8 at a time, 1 s each: no batch can end within the first run's 1 s of waiting.
    with serve_in_background(api_key=CANARY, concurrency=8, request_latency=1.0) as url:
        paths = [str(write_jsonl(work / f"gu{i}.jsonl", chat_lines(f"gu{i}", 20))) for i in range(10)]
        worker = _worker(work, env, pool, "worker-3", str(url))
        try:
            flow_run_id = _run_deployment(d, env, paths, stagger=0.2, give_up_after=1.0)
            first = wait_for("the first run to fail", lambda: asyncio.run(_final_state(env, flow_run_id)),
                             timeout=180, interval=0.5,
                             alive=lambda: None if worker.alive() else f"worker exited:\n{worker.tail()}")
        finally:
            worker.stop()
        d.check(first == "FAILED", f"the first run failed when its subflows gave up ({first})")
        state = _retry_and_finish(d, work, env, pool, str(url), flow_run_id, "worker-4")
        d.check(state == "COMPLETED", f"the retried parent completed ({state})")
        subflows = asyncio.run(_subflow_runs(env, flow_run_id))
        d.check(subflows > 10, f"the retry ran new subflow runs ({subflows} in all, 10 of the first run)")
        paid, batches, uploads = paid_for(str(url))
        d.check(len(batches) == 10, f"ten batches for ten subflows ({len(batches)})")
        _row(d, "Prefect parent retried after its 10 subflows gave up (new subflow runs)", paid=paid, needed=200,
             detail=f"{len(batches)} batches, {uploads} uploads, {subflows} subflow runs")


async def _subflow_runs(env: dict[str, str], flow_run_id: str) -> int:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def count(client: Any) -> int:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        return len(runs)

    return int(await _with_client(env, count))


def _flow_run_id(output: str) -> str:
    import re

    m = re.search(r"UUID:\s*([0-9a-f-]{36})", output) or re.search(r"([0-9a-f]{8}-[0-9a-f-]{27})", output)
    if not m:
        raise AssertionError(f"no flow run id in: {output[-500:]}")
    return m.group(1)


async def _with_client(env: dict[str, str], fn: Callable[[Any], Any]) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await fn(client)


async def _mark_crashed(env: dict[str, str], flow_run_id: str) -> None:
    from prefect.states import Crashed

    await _with_client(env, lambda c: c.set_flow_run_state(flow_run_id, Crashed(
        message="worker and flow-run process killed with kill -9 (money drill)"), force=True))


async def _final_state(env: dict[str, str], flow_run_id: str) -> str | None:
    async def read(client: Any) -> str | None:
        run = await client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_final():
            return None
        return str(run.state.type.value)

    return await _with_client(env, read)

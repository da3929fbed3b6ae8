"""The cluster drill: ``python -m drills.cluster`` (or ``make drill-cluster``).

batch_ops as a cluster runs it, on one machine: Airflow with the CeleryExecutor (metadata DB and
result backend on PostgreSQL 15, broker Redis), one scheduler, one API server, one DAG processor,
two triggerers and two Celery workers that share no disk (a private tmpfs each), S3 served by moto,
and the local Batch API server. Then it breaks things:

1. the nightly eval DAG, three runs, storage on S3 (``BATCH_OPS_EVAL_STORAGE=s3://…``);
2. forty deferred tasks and ``kill -9`` of one triggerer: the other must adopt the triggers;
3. ``kill -9`` of the Celery worker whose task is mid-create: the retry on the other worker must
   re-attach (one create, one batch);
4. Prefect rows, from ``drills/cluster/prefect_rows.py`` when it exists;
5. a job over many batches (``OpenAIBatchJobOperator``) whose input an upstream task wrote and whose
   state lives on S3; ``kill -9`` of the worker whose step is mid-create: the retry, on a worker with
   an empty disk, resumes the job from S3 and re-attaches (one create per part).

The table goes to stdout and ``drills/results/cluster.md``; the exit status is 1 when a row failed.
Every process it starts runs in a session of its own and is stopped by its process group in a
``finally`` (also on Ctrl-C, SIGTERM, or when the 14-minute budget runs out).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `drills` and `batch_ops` importable
    sys.path.insert(0, str(ROOT))

from drills._common import CANARY, HoldProxy  # noqa: E402
from drills.cluster.scenarios import Row, job_on_s3, nightly_eval, triggerer_kill, worker_kill  # noqa: E402
from drills.cluster.services import BatchServer, Moto, Postgres, Redis  # noqa: E402
from drills.cluster.stack import CeleryStack  # noqa: E402

RESULTS = ROOT / "drills" / "results" / "cluster.md"
CLUSTER_DAGS = Path(__file__).resolve().parent / "dags"
#: Stop everything after this many seconds (the target is < 15 minutes, stop included).
BUDGET = 14 * 60
MAPPED = int(os.environ.get("BATCH_OPS_CLUSTER_MAPPED", "40"))
#: Seconds each request of row 2 takes on the server: every batch must still run when the last of
#: the forty tasks defers, the kill lands and the survivor adopts the triggers.
MAPPED_LATENCY = float(os.environ.get("BATCH_OPS_CLUSTER_LATENCY", "90"))
#: Requests of row 5's job (50 per batch).
JOB_REQUESTS = int(os.environ.get("BATCH_OPS_CLUSTER_JOB_REQUESTS", "400"))
SCENARIOS = {
    "1": "nightly-eval-s3: dags/nightly_eval.py x3, storage on S3, 2 disk-less workers",
    "2": f"triggerer-kill: {MAPPED} deferred mapped tasks, kill -9 of 1 of 2 triggerers",
    "3": "worker-kill: kill -9 of the Celery worker mid-create, retry on the other worker",
    "5": f"job-s3: OpenAIBatchJobOperator, {JOB_REQUESTS} requests written by an upstream task, state on S3, "
         "kill -9 of the worker mid-create, retry on a worker with an empty disk",
}
COLUMNS = ("scenario", "runs succeeded", "batches created / needed", "orphans", "seconds to adoption", "result",
           "notes")


class BudgetSpent(KeyboardInterrupt):
    """Raised (from SIGALRM) when the drill's time budget is spent: unwinds every ``finally``."""


def _alarm(signum: int, frame: Any) -> None:
    raise BudgetSpent(f"the drill's budget of {BUDGET} s is spent")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _short(exc: BaseException, limit: int = 400) -> str:
    """An exception in one line for the table: its type and the last lines of its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= limit else '...' + text[-limit:]}"


def _play(row: Row, body: Callable[[Row], None]) -> Row:
    print(f"-- {row.scenario}", flush=True)
    started = time.monotonic()
    try:
        body(row)
    except KeyboardInterrupt as exc:
        row.error = f"interrupted: {exc}"
        raise
    except BaseException as exc:
        row.error = _short(exc)
        print(traceback.format_exc(), flush=True)
    finally:
        row.seconds = time.monotonic() - started
    return row


# ---------------------------------------------------------------------------------------------
# Prefect rows (another module, when it exists)
# ---------------------------------------------------------------------------------------------


def prefect_rows(env: dict[str, str], work: Path) -> list[Row]:
    """Rows from ``drills.cluster.prefect_rows.run(env, workdir)`` (a list of dicts), if that exists.

    Keys read from each dict: ``scenario``, ``runs`` / ``runs_succeeded``, ``batches`` (or
    ``batches_created`` and ``batches_needed``), ``orphans``, ``adoption`` / ``seconds_to_adoption``,
    ``ok`` / ``passed`` (bool), ``notes`` (str or list).
    """
    if importlib.util.find_spec("drills.cluster.prefect_rows") is None:
        row = Row("prefect", skipped=True)
        row.note("skipped: drills/cluster/prefect_rows.py does not exist (yet)")
        return [row]
    from drills.cluster import prefect_rows as module

    found: list[dict[str, Any]] = module.run(env, work)
    rows = []
    for item in found:
        row = Row(str(item.get("scenario", "prefect")))
        row.runs = str(item.get("runs", item.get("runs_succeeded", "")))
        if "batches" in item:
            row.batches = str(item["batches"])
        elif "batches_created" in item:
            row.batches = f"{item['batches_created']} / {item.get('batches_needed', '?')}"
        row.orphans = str(item.get("orphans", ""))
        adoption = item.get("adoption", item.get("seconds_to_adoption"))
        row.adoption = "" if adoption is None else str(adoption)
        notes = item.get("notes") or []
        row.notes = [notes] if isinstance(notes, str) else [str(n) for n in notes]
        ok = item.get("ok", item.get("passed"))
        row.check(bool(ok), str(item.get("error") or "the Prefect row failed"))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---:|---:|---|---|"]
    for r in rows:
        notes = list(r.notes)
        if r.error:
            notes.insert(0, f"**{r.error}**")
        notes = [f"**FAILED: {f}**" for f in r.failures] + notes
        lines.append("| " + " | ".join(_cell(x) for x in (
            r.scenario, r.runs or "-", r.batches or "-", r.orphans or "-", r.adoption or "-", r.verdict,
            "; ".join(notes))) + " |")
    return "\n".join(lines)


def machine() -> str:
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    return f"{os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def write_results(rows: list[Row], total: float, note: str | None, only: set[str]) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    passed = sum(1 for r in rows if r.ok)
    counted = sum(1 for r in rows if not r.skipped)
    scope = "all rows" if only >= {"1", "2", "3", "4", "5"} else "only rows " + ", ".join(sorted(only))
    text = (f"# Cluster drill\n\n`make drill-cluster` (`python -m drills.cluster`, {scope}), {stamp}, {machine()}; "
            f"total {total:.0f} s ({total / 60:.1f} min).\n\n"
            "Airflow 3 with the CeleryExecutor (PostgreSQL 15 metadata DB and result backend, Redis broker), "
            "1 scheduler, 1 API server, 1 DAG processor, 2 triggerers, 2 Celery workers in mount+UTS namespaces "
            "of their own (private tmpfs work dir, no shared disk but the DAG folder and logs), S3 on moto, "
            "the local Batch API server.\n\n"
            f"{table(rows)}\n\n{passed}/{counted} rows passed.\n")
    if note:
        text += f"\n{note}\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="N", help="run only these rows (1, 2, 3, 4, 5; repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument("--eval-storage", choices=("s3", "local"), default="s3",
                        help="row 1's BATCH_OPS_EVAL_STORAGE: S3 (default), or unset, so that the DAG keeps its "
                             "files on each worker's private disk (a negative control: row 1 must fail)")
    args = parser.parse_args(argv)
    only = {x for a in (args.only or []) for x in a.split(",") if x} or {"1", "2", "3", "4", "5"}

    # The SDK oracle logs every request at INFO once Airflow configured logging: noise.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)
    signal.signal(signal.SIGTERM, _terminate)
    # Explicitly: a shell that starts us in the background makes us inherit SIGINT ignored.
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BUDGET)
    base = Path(tempfile.mkdtemp(prefix="batch_ops_cluster_"))
    started = time.monotonic()
    rows: list[Row] = []
    note = None
    code = 1
    try:
        _run(base, only, rows, eval_storage=args.eval_storage)
    except KeyboardInterrupt as exc:
        note = f"Stopped early: {exc}."
        print(note, flush=True)
    finally:
        signal.alarm(0)
        if args.keep:
            print(f"work directory kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        total = time.monotonic() - started
        if rows or note:
            text = write_results(rows, total, note, only)
            print()
            print(text)
        code = 0 if rows and note is None and all(r.ok or r.skipped for r in rows) else 1
    return code


def _run(base: Path, only: set[str], rows: list[Row], *, eval_storage: str = "s3") -> None:
    """Start everything, play the rows (appended to ``rows`` as they end), stop everything."""
    planned = [Row(SCENARIOS[n]) for n in ("1", "2", "3", "5") if n in only]
    if eval_storage != "s3" and "1" in only:
        planned[0].note("negative control: BATCH_OPS_EVAL_STORAGE unset, files on each worker's private disk")
    with contextlib.ExitStack() as stack_:
        setup_started = time.monotonic()
        try:
            pg = stack_.enter_context(Postgres(base).running())
            redis = stack_.enter_context(Redis(base).running())
            moto = stack_.enter_context(Moto(base).running())
            eval_server = stack_.enter_context(BatchServer(base, "eval", request_latency=0.0).running())
            mapped_server = stack_.enter_context(
                BatchServer(base, "mapped", request_latency=MAPPED_LATENCY, concurrency=4 * MAPPED).running())
            hold_server = stack_.enter_context(BatchServer(base, "hold", request_latency=0.05).running())
            job_server = stack_.enter_context(BatchServer(base, "job", request_latency=0.01, extra=[
                "--fail-requests", "0.05", "--seed", "5"]).running())
            # Row 5: the first wave of 4 creates goes through; the 5th is held (its worker is killed).
            job_proxy = stack_.enter_context(HoldProxy(job_server.url, hold_after=4).running())
            proxy = stack_.enter_context(HoldProxy(hold_server.url).running())
            print(f"   services up in {time.monotonic() - setup_started:.0f} s: PostgreSQL :{pg.port}, "
                  f"Redis :{redis.port}, moto :{moto.port}", flush=True)

            dags = base / "dags"
            dags.mkdir()
            shutil.copy(ROOT / "dags" / "nightly_eval.py", dags / "nightly_eval.py")
            shutil.copy(CLUSTER_DAGS / "cluster_dags.py", dags / "cluster_dags.py")
            work = base / "worker-disk"  # a private tmpfs in each worker
            prefix = "eval"

            def conn(url: str) -> str:
                import json

                return json.dumps({"conn_type": "openaibatch", "host": url, "password": CANARY})

            env = {
                **moto.env,
                **({"BATCH_OPS_EVAL_STORAGE": f"s3://{moto.bucket}/{prefix}"} if eval_storage == "s3" else {}),
                "BATCH_OPS_EVAL_DIR": str(work / "eval_runs"),
                "BATCH_OPS_EVAL_POLL_INTERVAL": "1",
                "BATCH_OPS_CLUSTER_MAPPED": str(MAPPED),
                "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "2",
                "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": conn(eval_server.url),
                "AIRFLOW_CONN_CLUSTER_MAPPED": conn(mapped_server.url),
                "AIRFLOW_CONN_CLUSTER_HOLD": conn(proxy.url),
                "AIRFLOW_CONN_CLUSTER_JOB": conn(job_proxy.url),
                "BATCH_OPS_CLUSTER_BUCKET": moto.bucket,
                "BATCH_OPS_CLUSTER_JOB_REQUESTS": str(JOB_REQUESTS),
            }
            stack = CeleryStack(base, pg, redis.url, dags=dags, work=work, extra_env=env)
            stack_.callback(stack.stop)
            stack.migrate()
            print(f"   airflow db migrate done at {time.monotonic() - setup_started:.0f} s", flush=True)
            stack.start()
            stack.wait_ready(["nightly_eval", "cluster_mapped", "cluster_worker_kill", "cluster_job"])
            isolation = stack.disk_isolation()
            for row in planned:
                row.check(not isolation, f"the workers share no disk under the work dir ({'; '.join(isolation)})")
            print(f"   Airflow (CeleryExecutor, 2 workers, 2 triggerers) up at "
                  f"{time.monotonic() - setup_started:.0f} s; triggerer jobs {stack.triggerer_jobs}", flush=True)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            print(traceback.format_exc(), flush=True)
            for row in planned:
                row.error = f"setup failed: {_short(exc)}"
            rows.extend(planned)
            return

        bodies: dict[str, Callable[[Row], None]] = {
            SCENARIOS["1"]: lambda r: nightly_eval(r, stack, server=eval_server, moto=moto, prefix=prefix),
            SCENARIOS["2"]: lambda r: triggerer_kill(r, stack, server=mapped_server, mapped=MAPPED),
            SCENARIOS["3"]: lambda r: worker_kill(r, stack, proxy=proxy, server=hold_server),
            SCENARIOS["5"]: lambda r: job_on_s3(r, stack, server=job_server, proxy=job_proxy, moto=moto,
                                                requests=JOB_REQUESTS),
        }
        played: list[Row] = []
        try:
            for row in planned:
                played.append(row)
                rows.append(_play(row, bodies[row.scenario]))
        finally:
            for r in planned:
                if r not in played:
                    r.error = "not run (stopped before it)"
                if r not in rows:
                    rows.append(r)
        stack.stop()

        if "4" in only:
            prefect_env = {**moto.env, "BATCH_OPS_EVAL_STORAGE": f"s3://{moto.bucket}/prefect-eval",
                           "BATCH_OPS_CLUSTER_PG_URL": pg.url(db="postgres", driver="postgresql"),
                           "BATCH_OPS_CLUSTER_REDIS_URL": redis.url, "OPENAI_API_KEY": CANARY}
            (base / "prefect").mkdir()
            holder = Row("prefect")
            try:
                print("-- prefect rows", flush=True)
                rows.extend(prefect_rows(prefect_env, base / "prefect"))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                print(traceback.format_exc(), flush=True)
                holder.error = f"drills/cluster/prefect_rows.py: {_short(exc)}"
                rows.append(holder)


if __name__ == "__main__":
    sys.exit(main())

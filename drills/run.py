"""Run the reliability drills and print what they found: ``python drills/run.py [--only NAME]``.

Each drill breaks something on purpose (faults on the wire, a killed triggerer, worker or
server, bad input, a canary key looked for everywhere) and checks that batch_ops comes through
with every batch accounted for. Drills that need the same environment (a migrated Airflow home,
a running Airflow deployment, a Prefect server) form a *suite*; each suite runs in a child
process of its own, so one suite's configuration (AIRFLOW_HOME, PREFECT_HOME) and crashes cannot
touch another's. The table goes to stdout and to ``drills/results/latest.md``; the exit status is
1 when any drill failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `drills` and `batch_ops` importable
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "drills" / "results" / "latest.md"
MONEY = ROOT / "drills" / "results" / "money.md"


@dataclass(frozen=True)
class Spec:
    """One drill: its name, its number in issue 8, the suite it runs in, and what it proves."""

    name: str
    number: str
    title: str
    suite: str


#: In the order of the table. Suites run in SUITES order; drills of a suite in this order.
DRILLS: tuple[Spec, ...] = (
    Spec("airflow-faults", "1", "Faults during an Airflow DAG run (10 batches, dags test)", "airflow_dags"),
    Spec("prefect-faults", "2", "Faults during a Prefect flow (10 concurrent run_batch)", "prefect_drills"),
    Spec("triggerer-restart", "3", "Triggerer killed -9 and restarted mid-wait", "airflow_stack"),
    Spec("worker-kill", "4", "Task process killed mid-create, task retried", "airflow_stack"),
    Spec("server-kill", "5", "Local server killed -9 mid-batch and restarted", "core_drills"),
    Spec("bad-input", "6", "Bad-input matrix: core client and Airflow operator", "airflow_dags"),
    Spec("bad-input-prefect", "6b", "Bad-input matrix: Prefect tasks and run_batch", "prefect_drills"),
    Spec("security-airflow", "7a", "Canary key absent: Airflow logs and metadata DB", "airflow_stack"),
    Spec("security-prefect", "7b", "Canary key absent: Prefect results, artifacts, events, logs", "prefect_drills"),
    Spec("security-cli-server", "7c", "Canary key absent from CLI; server binds loopback, 401s", "core_drills"),
    Spec("money-core", "8a", "Paid vs needed: 2 and 4 concurrent tries of one key", "money_drills"),
    Spec("money-airflow", "8b", "Paid vs needed: Airflow retries after failed/expired/request failures, kill -9",
         "money_drills"),
    Spec("money-prefect", "8c", "Paid vs needed: Prefect flow-run retry, parent retried after kill -9",
         "money_drills"),
    Spec("money-jobs", "8d", "Paid vs needed: 2 and 4 workers resuming one job at once, local disk and S3",
         "job_drills"),
    Spec("money-gemini", "24g", "Paid vs needed on Gemini: 2 and 4 concurrent tries, retries after failed/expired/"
         "request failures, a lost create", "gemini_drills"),
    Spec("money-anthropic", "24a", "Paid vs needed on Anthropic (no metadata: the key ledger): retries after "
         "expired/failed, 4 racing tries, 5 kills between create and record; the lost-create window",
         "anthropic_drills"),
    Spec("money-lease", "24l", "Paid vs needed: 4 racing tries of one key on OpenAI, Gemini and Together, without "
         "and with the key ledger's lease", "lease_drills"),
    Spec("hostile-wire", "9", "Waits against a hostile server: HTML, cut JSON, unknown status, redirect, "
         "silence, trickle, echoed key", "hostile_drills"),
    Spec("receiver-body", "22.3", "Webhook receiver: unsigned 300 MB body, plain and chunked", "receiver_drills"),
    Spec("receiver-slow", "22.4", "Webhook receiver: 1,000 slow clients (and 1,100 under 1,024 files), genuine "
         "delivery", "receiver_drills"),
    Spec("two-deployments", "22.6", "Two deployments sweeping one project: 0 foreign cancels", "owner_drills"),
    Spec("cli-output", "22.16", "-o onto a FIFO, a link, a folder: streamed, followed, refused", "files_drills"),
    Spec("big-line", "22.17", "One 700 MB line through validate, submit, shard, job; 190 MB in the server",
         "files_drills"),
    Spec("server-fds", "22.18", "500 batches on a server held to 1,024 open files", "files_drills"),
    Spec("chunked-upload", "22.19", "A 600 MB chunked upload to the local server", "files_drills"),
    Spec("scenarios", "S", "The test suite's long scenarios (pytest -m scenario), left out of make test",
         "scenario_tests"),
)
#: Cheap suites first, so a broken basic fails fast; the Airflow deployment last.
SUITES: tuple[str, ...] = ("core_drills", "hostile_drills", "receiver_drills", "files_drills", "airflow_dags",
                           "prefect_drills", "airflow_stack", "money_drills", "job_drills", "owner_drills",
                           "gemini_drills", "anthropic_drills", "lease_drills", "scenario_tests")
#: Seconds a suite may take before it is stopped (its drills then fail); a full run takes ~4 min.
BUDGET: dict[str, float] = {"core_drills": 180, "airflow_dags": 240, "prefect_drills": 240, "airflow_stack": 420,
                            "money_drills": 480, "hostile_drills": 120, "receiver_drills": 150, "files_drills": 150,
                            "owner_drills": 300, "job_drills": 180, "gemini_drills": 180, "anthropic_drills": 240,
                            "lease_drills": 180, "scenario_tests": 600}
#: The whole run stops within this (issue 8 asked for 15 minutes; issue 22 added seven heavy rows, the long test
#: scenarios ~4 min more), leaving a minute to stop what is running.
TOTAL_BUDGET = 30 * 60.0


def select(only: list[str] | None) -> list[Spec]:
    if not only:
        return list(DRILLS)
    wanted = [w for arg in only for w in arg.split(",") if w]
    chosen = [s for s in DRILLS if any(s.name == w or s.name.startswith(w) or s.number.startswith(w)
                                       for w in wanted)]
    if not chosen:
        names = ", ".join(s.name for s in DRILLS)
        raise SystemExit(f"no drill matches {', '.join(wanted)}; drills: {names}")
    return chosen


# ---------------------------------------------------------------------------------------------
# the child: one suite
# ---------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_suite(suite: str, names: list[str], work: Path, out: Path) -> int:
    """In the child process: run the suite's drills, write their results as JSON."""
    # A SIGTERM from the runner (budget spent) unwinds every `finally`, which stops our processes.
    signal.signal(signal.SIGTERM, _interrupt)
    module = importlib.import_module(f"drills.{suite}")
    # The SDK oracle logs every request at INFO once Airflow or Prefect configured logging: noise.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.WARNING)
    results = module.run(names, work)
    out.write_text(json.dumps([r.to_json() for r in results], indent=1))
    return 0


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------


def _spawn(suite: str, names: list[str], work: Path, budget: float) -> list[dict[str, Any]]:
    out = work / f"{suite}.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--suite", suite, "--drills", ",".join(names),
            "--work", str(work / suite), "--out", str(out)]
    (work / suite).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    reason = None
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        reason = f"suite {suite} exceeded its budget of {budget:.0f} s and was stopped"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        raise
    # Anything of the suite's own process group still running (a server whose stop was cut short): gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    found: list[dict[str, Any]] = json.loads(out.read_text()) if out.exists() else []
    done = {r["name"] for r in found}
    if reason is None and proc.returncode != 0:
        reason = f"suite {suite} exited with status {proc.returncode}"
    for name in names:
        if name not in done:
            found.append({"name": name, "ok": False, "passed": 0, "failures": [], "figures": {}, "notes": [],
                          "seconds": round(time.monotonic() - started, 1),
                          "error": reason or "no result (the suite stopped before this drill)"})
    return found


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(specs: list[Spec], results: dict[str, dict[str, Any]], total: float) -> str:
    lines = ["| # | drill | result | key figures | seconds |", "|---|---|---|---|---:|"]
    for spec in specs:
        r = results[spec.name]
        figures = "; ".join(f"{k}: {v}" for k, v in r["figures"].items())
        if not r["ok"]:
            why = r.get("error") or "; ".join(r["failures"][:3])
            figures = f"**{why}**" + (f"; {figures}" if figures else "")
        verdict = "PASS" if r["ok"] else "FAIL"
        lines.append(f"| {spec.number} | {spec.name}: {spec.title} | {verdict} | {_cell(figures)} | "
                     f"{r['seconds']:.0f} |")
    passed = sum(1 for s in specs if results[s.name]["ok"])
    lines.append("")
    lines.append(f"{passed}/{len(specs)} drills passed in {total:.0f} s ({total / 60:.1f} min).")
    return "\n".join(lines)


def money_table(specs: list[Spec], results: dict[str, dict[str, Any]]) -> str:
    """Drill 8's rows: each scenario with the requests paid for against those needed."""
    lines = ["| scenario | paid / needed | what happened | drill |", "|---|---|---|---|"]
    for spec in specs:
        if not spec.name.startswith("money-"):
            continue
        r = results[spec.name]
        for scenario, value in r["figures"].items():
            money, _, detail = str(value).partition("; ")
            money = money.removeprefix("paid ").replace("needed ", "")
            lines.append(f"| {_cell(scenario)} | {_cell(money)} | {_cell(detail)} | "
                         f"{spec.number} {'PASS' if r['ok'] else 'FAIL'} |")
        if not r["ok"] and (r.get("error") or r["failures"]):
            lines.append(f"| {spec.name} | | **{_cell(r.get('error') or '; '.join(r['failures'][:3]))}** | "
                         f"{spec.number} FAIL |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only drills whose name or number starts with NAME (repeatable, comma-separated)")
    parser.add_argument("--list", action="store_true", help="list the drills and exit")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, Airflow homes)")
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    parser.add_argument("--drills", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.suite:
        return run_suite(args.suite, args.drills.split(","), Path(args.work), Path(args.out))
    if args.list:
        for s in DRILLS:
            print(f"{s.number:>3}  {s.name:<20} {s.title}")
        return 0

    specs = select(args.only)
    work = Path(tempfile.mkdtemp(prefix="batch_ops_drills_"))
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    try:
        for suite in SUITES:
            names = [s.name for s in specs if s.suite == suite]
            if not names:
                continue
            print(f"== suite {suite}: {', '.join(names)}", flush=True)
            budget = min(BUDGET[suite], max(TOTAL_BUDGET - (time.monotonic() - started), 1.0))
            for r in _spawn(suite, names, work, budget):
                results[r["name"]] = r
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    text = table(specs, results, total)
    print()
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    scope = "all drills" if len(specs) == len(DRILLS) else "only " + ", ".join(s.name for s in specs)
    RESULTS.write_text(f"# Drill results\n\n`make drill` ({scope}), {stamp}, {os.cpu_count()} cores.\n\n{text}\n")
    money = money_table(specs, results)
    if money:
        print()
        print(money)
        MONEY.write_text(f"# Money drill: requests paid for against requests needed\n\n`make drill` ({scope}), "
                         f"{stamp}, {os.cpu_count()} cores.\n\n{money}\n")
    for spec in specs:
        r = results[spec.name]
        if not r["ok"]:
            print(f"\n{spec.name} failed:")
            for line in ([r["error"]] if r.get("error") else []) + r["failures"]:
                print(f"  - {line}")
    return 0 if all(results[s.name]["ok"] for s in specs) else 1


if __name__ == "__main__":
    sys.exit(main())

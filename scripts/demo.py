"""`make demo`: the nightly eval pipeline, in Airflow and in Prefect, against the local server.

1. Starts the local Batch API server (``replay`` engine answering from a recorded sample run of
   the shipped eval set, with 3% injected request failures) on a free loopback port.
2. Runs ``dags/nightly_eval.py`` with ``airflow dags test`` in a throwaway AIRFLOW_HOME under
   ``.demo/`` (the batch task defers; its trigger runs inline).
3. Runs ``flows/nightly_eval.py`` once with Prefect (a temporary local Prefect server).
4. Prints a one-screen summary and where the reports are; stops the server.

No API key, no network. Reports accumulate in ``.demo/eval/reports``: run it twice to see the
trend (``trend.png``). ``make demo-clean`` forgets the history.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from batch_ops.evals import SAMPLE_RUN, read_history
from batch_ops.server import serve_in_background

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
EVAL_DIR = DEMO / "eval"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PREFECT", "OPENAI"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "BATCH_OPS_EVAL_DIR": str(EVAL_DIR),
        "BATCH_OPS_EVAL_POLL_INTERVAL": "1",
        "PYTHONWARNINGS": "ignore",
    })
    env.update(extra)
    return env


def _run(console: Console, title: str, cmd: list[str], env: dict[str, str], log: Path) -> tuple[bool, float]:
    console.print(f"[bold]{title}[/]  [dim]{' '.join(cmd[-3:])} (log: {log.relative_to(ROOT)})[/]")
    started = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    seconds = time.monotonic() - started
    ok = proc.returncode == 0
    console.print(f"  {'[green]ok[/]' if ok else '[red]FAILED[/]'} in {seconds:.0f} s")
    if not ok:
        console.print(log.read_text()[-3000:], markup=False)
    return ok, seconds


def airflow_pipeline(console: Console, base_url: str) -> bool:
    home = DEMO / "airflow_home"
    home.mkdir(parents=True, exist_ok=True)
    conn = {"conn_type": "openaibatch", "host": base_url, "password": "local-demo-key"}
    env = _env(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW_CONN_OPENAI_BATCH_DEFAULT=json.dumps(conn),
    )
    airflow = str(BIN / "airflow")
    if not (home / "airflow.db").exists():
        ok, _ = _run(console, "Airflow: create the metadata database", [airflow, "db", "migrate"], env,
                     DEMO / "airflow_migrate.log")
        if not ok:
            return False
    ok, _ = _run(console, "Airflow: run the nightly_eval DAG", [airflow, "dags", "test", "nightly_eval"], env,
                 DEMO / "airflow_dag.log")
    return ok


def prefect_pipeline(console: Console, base_url: str) -> bool:
    env = _env(
        PREFECT_HOME=str(DEMO / "prefect_home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="local-demo-key",
    )
    cmd = [sys.executable, str(ROOT / "flows" / "nightly_eval.py"), "--once"]
    ok, _ = _run(console, "Prefect: run the nightly-eval flow", cmd, env, DEMO / "prefect_flow.log")
    return ok


def summary(console: Console) -> None:
    history = read_history(EVAL_DIR / "reports")
    table = Table(title="nightly eval: the last runs of each pipeline")
    for column in ("pipeline", "finished (UTC)", "score", "failed requests", "vs previous run", "batch"):
        table.add_column(column, no_wrap=True)
    for pipeline in ("airflow", "prefect"):
        runs = [h for h in history if h.get("pipeline") == pipeline]
        for i, run in enumerate(runs[-3:], start=max(len(runs) - 3, 0)):
            prev = runs[i - 1]["score"] if i > 0 else None
            trend = "first run" if prev is None else f"{(run['score'] - prev) * 100:+.1f} points"
            when = str(run.get("time", ""))[:19].replace("T", " ")
            table.add_row(pipeline, when, f"{run['score']:.1%}", f"{run['failed']} of {run['total']}", trend,
                          str(run.get("batch_id")))
    console.print(table)
    reports = EVAL_DIR / "reports"
    console.print(f"reports:  {reports / 'latest.md'}\n          {reports / 'runs'}/<pipeline>-<run>/report.md|json")
    console.print(f"trend:    {reports / 'trend.png'}")
    console.print(f"history:  {reports / 'history'} ({len(history)} runs; run `make demo` again for the trend)")


def main() -> int:
    console = Console(width=max(Console().width, 120))
    DEMO.mkdir(exist_ok=True)
    with serve_in_background(data_dir=DEMO / "server", engine="replay", replay_files=(str(SAMPLE_RUN),),
                             fail_requests=0.03, request_latency=0.005) as base_url:
        console.print(f"[bold]local Batch API server[/] at {base_url} "
                      "(replay engine: a recorded run of the 210-item eval set; 3% injected request failures)")
        ok_airflow = airflow_pipeline(console, base_url)
        ok_prefect = prefect_pipeline(console, base_url)
    summary(console)
    return 0 if ok_airflow and ok_prefect else 1


if __name__ == "__main__":
    sys.exit(main())

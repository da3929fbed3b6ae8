"""`make demo`: the eval matrix, in Airflow and in Prefect, against the local server — offline.

1. Starts the local Batch API server (``replay`` engine answering from a recording of three
   "models" — demo-large, demo-medium, demo-small — and a judge model on the shipped 210-item eval
   set, each request from the recording of the model it names; 2% injected request failures) on a
   free loopback port.
2. Runs ``dags/eval_matrix.py`` with ``airflow dags test`` in a throwaway AIRFLOW_HOME under
   ``.demo/``: one mapped, deferred batch per model, then one judge batch per model (the
   model-graded stage as a second batch), the gate and the HTML report.
3. Runs ``flows/eval_matrix.py`` once with Prefect (a temporary local Prefect server): the same
   matrix, every model concurrently; its gate compares each model with the Airflow run just made.
4. Prints the model x category table with 95% intervals, costs and turnaround, the gate's verdict
   and where the reports are; stops the server.

No API key, no network. Reports and each model's history accumulate in ``.demo/eval/matrix``: run
it again and the trend plot grows. ``make demo-clean`` forgets the history. The single-model
nightly pipeline (``dags/nightly_eval.py``, ``flows/nightly_eval.py``) is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from batch_ops.evals.matrix import MATRIX_RUN
from batch_ops.evals.record import RunRecord
from batch_ops.evals.render import matrix_header, matrix_rows
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
    ok, _ = _run(console, "Airflow: run the eval_matrix DAG", [airflow, "dags", "test", "eval_matrix"], env,
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
    cmd = [sys.executable, str(ROOT / "flows" / "eval_matrix.py"), "--once"]
    ok, _ = _run(console, "Prefect: run the eval-matrix flow", cmd, env, DEMO / "prefect_flow.log")
    return ok


def _latest(pipeline: str) -> tuple[RunRecord, Path] | None:
    found = []
    for path in (EVAL_DIR / "matrix" / "runs").glob("*/record.json"):
        run = RunRecord.from_json(path.read_text(encoding="utf-8"))
        if run.pipeline == pipeline:
            found.append((run.finished_at, run, path))
    if not found:
        return None
    _, run, path = max(found, key=lambda f: str(f[0]))
    return run, path


def summary(console: Console) -> None:
    for pipeline in ("airflow", "prefect"):
        latest = _latest(pipeline)
        if latest is None:
            continue
        run, path = latest
        table = Table(title=f"eval matrix ({pipeline}, run {run.run_id}): score % per model and category "
                            "± the 95% interval; cost = the estimate made before upload / the actual bill, answers + "
                            "judge, at (made-up) batch prices; time = answers / judge batch", box=box.SIMPLE_HEAD,
                      padding=(0, 1), collapse_padding=True, pad_edge=False)
        for i, column in enumerate(matrix_header(run, compact=True)):
            table.add_column(column, no_wrap=True, justify="left" if i == 0 else "right")
        for row in matrix_rows(run, compact=True):
            table.add_row(*row)
        console.print(table)
        if run.gate is not None:
            colour = {"pass": "green", "fail": "red"}.get(run.gate.status, "yellow")
            console.print(f"gate: [{colour}]{run.gate.status}[/] - {run.gate.reason}", highlight=False)
        for c in run.comparisons:
            against = "previous run" if c.kind == "previous_run" else f"baseline {c.reference}"
            console.print(f"  {c.model} vs {against}: {c.diff * 100:+.1f} points "
                          f"[{c.ci_low * 100:+.1f}, {c.ci_high * 100:+.1f}]{' (significant)' if c.significant else ''}",
                          highlight=False)
        console.print(f"report:   {path.with_name('report.html')}\n")
    reports = EVAL_DIR / "matrix"
    console.print(f"latest:   {reports / 'latest.html'}  (one self-contained file: open it in a browser)")
    console.print(f"also:     {reports / 'runs'}/<run>/report.md | record.json | openai_report.json")
    runs = len(list((reports / "runs").glob("*/record.json")))
    console.print(f"history:  {reports / 'models'}/<model>/ ({runs} runs; run `make demo` again for the trend)")


def main() -> int:
    console = Console(width=max(Console().width, 176))  # the model x category table, cost and time columns
    DEMO.mkdir(exist_ok=True)
    with serve_in_background(data_dir=DEMO / "server", engine="replay", replay_files=(str(MATRIX_RUN),),
                             fail_requests=0.02, request_latency=0.005) as base_url:
        console.print(f"[bold]local Batch API server[/] at {base_url} (replay engine: three models and a judge "
                      "recorded on the 210-item eval set; 2% injected request failures)")
        ok_airflow = airflow_pipeline(console, base_url)
        ok_prefect = prefect_pipeline(console, base_url)
    summary(console)
    return 0 if ok_airflow and ok_prefect else 1


if __name__ == "__main__":
    sys.exit(main())

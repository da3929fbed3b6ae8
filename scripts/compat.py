"""``make compat``: the adapter tests on the oldest and the newest Airflow and Prefect we declare.

It first clones the last commit (``.compat/src``: committed work only, so the tree can keep
changing meanwhile). For each row of :data:`MATRIX` it makes a clean venv with ``uv``
(``.compat/<name>``), installs that framework release alone with that clone of batch_ops, runs
the adapter's test directory from the clone, and writes the table to ``docs/compat.md``. The
newest rows install with ``constraints.txt`` (the known-good set); the oldest rows resolve
freely, with only the pins a row names (libraries that later broke that release, e.g. FastAPI
for Prefect 3.6), so they show what a user of that release gets.
Kept out of ``make test``: each row installs a stack and runs a few minutes.

    python scripts/compat.py                # every row
    python scripts/compat.py airflow-3.1.8  # one row
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".compat"
RESULTS = ROOT / "docs" / "compat.md"
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.23", "pytest-xdist>=3.5", "openai>=1.40", "moto[server]>=5", "jsonschema"]


@dataclass(frozen=True)
class Row:
    name: str
    framework: str  # the requirement that pins the release
    extras: str  # batch_ops extras besides the adapter's own
    tests: str  # the test directory
    note: str = ""
    pins: tuple[str, ...] = ()  # extra requirements, for libraries newer than the release can take
    constraints: bool = False  # install with constraints.txt
    maxfail: int = 0  # stop after this many failures (0: run all); for rows below the floor
    override: bool = False  # install the framework release even though batch_ops declares a newer floor


MATRIX = [
    Row("airflow-3.1.8", "apache-airflow==3.1.8", "airflow,server,cli,evals,s3", "tests/airflow",
        "oldest declared"),
    Row("airflow-3.3.2", "apache-airflow==3.3.2", "airflow,server,cli,evals,s3", "tests/airflow",
        "newest; constraints.txt", constraints=True),
    Row("prefect-3.6.29", "prefect==3.6.29", "prefect,server,cli,evals,s3", "tests/prefect",
        "below the floor, tried: the newest 3.6", pins=("fastapi<0.116",), maxfail=10, override=True),
    Row("prefect-3.7.0", "prefect==3.7.0", "prefect,server,cli,evals,s3", "tests/prefect",
        "below the floor, tried", pins=("fastapi<0.116",), override=True),
    Row("prefect-3.7.7", "prefect==3.7.7", "prefect,server,cli,evals,s3", "tests/prefect",
        "oldest declared and newest installable here (3.9 needs a certifi the index lacks); constraints.txt",
        constraints=True),
]


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        sys.exit("make compat needs uv (it comes with the dev extra)")
    return found


SRC = WORK / "src"


def _snapshot() -> str:
    """A clean clone of the last commit; the rows install and test it. Its commit id."""
    shutil.rmtree(SRC, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(SRC)], check=True)
    return subprocess.run(["git", "-C", str(SRC), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _run(argv: list[str], *, env: dict[str, str], log: Path, timeout: float) -> int:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            return subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=SRC).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[compat] stopped after {timeout:.0f} s\n".encode())
            return -1


def play(row: Row) -> dict[str, object]:
    venv = WORK / row.name
    log = WORK / f"{row.name}.log"
    shutil.rmtree(venv, ignore_errors=True)
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_NATIVE_TLS"] = "1"
    uv, started = _uv(), time.monotonic()
    result: dict[str, object] = {"row": row, "installed": "", "passed": 0, "failed": 0, "skipped": 0, "failures": []}
    overrides = WORK / f"{row.name}.overrides.txt"
    overrides.write_text(row.framework + "\n")
    if _run([uv, "venv", "-q", "-p", sys.executable, str(venv)], env=env, log=log, timeout=300) != 0 or _run(
            [uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python"), row.framework, *row.pins, *TEST_DEPS,
             *(["-c", str(ROOT / "constraints.txt")] if row.constraints else []),
             *(["--override", str(overrides)] if row.override else []),
             "-e", f"{SRC}[{row.extras}]"], env=env, log=log, timeout=1200) != 0:
        result["failures"] = ["install failed (see the log)"]
        result["seconds"] = time.monotonic() - started
        return result
    frozen = subprocess.run([uv, "pip", "freeze", "-p", str(venv / "bin" / "python")], capture_output=True, text=True,
                            env=env).stdout
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", frozen, re.M))
    result["installed"] = ", ".join(f"{n} {pins[n]}" for n in ("apache-airflow", "apache-airflow-task-sdk", "prefect",
                                                               "pydantic", "sqlalchemy", "SQLAlchemy") if n in pins)
    junit = WORK / f"{row.name}.xml"
    _run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist",
          "loadfile", f"--junitxml={junit}", *([f"--maxfail={row.maxfail}"] if row.maxfail else []), row.tests],
         env=env, log=log, timeout=1500)
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            if kinds & {"failure", "error"}:
                result["failed"] = int(result["failed"]) + 1  # type: ignore[call-overload]
                result["failures"].append(case.get("name", "?"))  # type: ignore[attr-defined]
            elif "skipped" in kinds:
                result["skipped"] = int(result["skipped"]) + 1  # type: ignore[call-overload]
            else:
                result["passed"] = int(result["passed"]) + 1  # type: ignore[call-overload]
    if not int(result["passed"]) + int(result["failed"]):  # type: ignore[call-overload]
        result["failures"] = ["no test ran (collection failed: see the log)"]
    result["seconds"] = time.monotonic() - started
    return result


def table(results: list[dict[str, object]], commit: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Compatibility",
        "",
        f"`make compat` (`scripts/compat.py`), {stamp}, commit {commit}: each release installed alone in a",
        "clean venv with batch_ops (no constraints file unless the notes say so), then the adapter's whole",
        "test directory.",
        "",
        "| release | installed | adapter tests passed | failed | notes | took |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in results:
        row = r["row"]
        assert isinstance(row, Row)
        failures = r["failures"]
        assert isinstance(failures, list)
        shown = "; ".join(failures[:4]) + (" …" if len(failures) > 4 else "")
        pinned = f"with {', '.join(row.pins)}" if row.pins else ""
        notes = "; ".join(x for x in (row.note, pinned, f"failing: {shown}" if failures else "") if x)
        lines.append(f"| {row.name} | {r['installed']} | {r['passed']} | {r['failed']} | {notes} |"
                     f" {float(r['seconds']):.0f} s |")
    lines += FOOTER
    return "\n".join(lines)


#: What the table cannot say; written under it on every run.
FOOTER = """
Declared in pyproject.toml: `apache-airflow>=3.1.8` and `prefect>=3.7.7`.

**Prefect 3.6.29 and 3.7.0 are not declared.** Both fail the same way: `prefect server start`
needs `importlib_metadata`, which they do not install (the four served-deployment tests), and their
runner's cancellation hooks fail (`'PrefectClient' object has no attribute 'deployment_id'`), so
cancelling a flow run does not cancel its batch: money keeps being spent. 3.7.7 has neither problem.

**Airflow 3.1.0 to 3.1.7 are not declared.** Tried once (3.1.0, structlog < 25.5): 59 adapter tests
passed and 20 failed. Most failures are Airflow 3.1.0's own: `dag.test()` refuses a DAG that is not
serialized yet, a connection lookup outside a task supervisor fails on a private import
(`SUPERVISOR_COMMS`), and its API server cannot sign tokens with today's PyJWT (`Issuer (iss) must
be a string`). None is in batch_ops, but nothing proves batch_ops works there either, so the floor
is the oldest release this table shows passing.

**Airflow 3.0.x is not supported.** `import batch_ops.airflow` works there (3.0.6), but Airflow's
task supervisor logs every connection secret at debug level (`MaskSecret(value='sk-…')`), so a
key would reach the task log, which this project never allows.

**Killing a deferred task** cancels its batch only from Airflow 3.3, which runs `on_kill` for
deferred tasks; before 3.3 the end-to-end test's last step (kill, then expect a cancelled batch)
fails, and [Airflow](airflow.md) documents this.

**Rows below a floor** run with `--maxfail` and show why the floor is where it is.

**Install with constraints.** Releases installed without any constraints pull in libraries newer
than they can take: Prefect 3.4 to 3.6 with the newest FastAPI fail at import (`Body() got an
unexpected keyword argument 'min_items'`, hence the FastAPI pin in those rows), Airflow 3.1.0
imports `structlog.dev.Styles`, which structlog 25.5 removed (hence its row's pin), and Airflow
3.0.6 needs the FastAPI, cadwyn and pydantic of its time. Install with the framework's own constraints
file, or with this project's `constraints.txt`.

The first `make compat` run found a bug of ours: the operators stopped deferring, because
`default_deferrable` was read from `airflow.cfg`, into which Airflow writes every option's
default (`default_deferrable = false`). The setting is now read only from the environment; the
end-to-end test in `make test` guards it.
""".splitlines()


def main(argv: list[str]) -> int:
    rows = [r for r in MATRIX if not argv or r.name in argv]
    WORK.mkdir(exist_ok=True)
    commit = _snapshot()
    print(f"-- batch_ops at {commit} (cloned to {SRC})", flush=True)
    results = []
    for row in rows:
        print(f"-- {row.name}: {row.framework}", flush=True)
        result = play(row)
        print(f"   {result['passed']} passed, {result['failed']} failed in {result['seconds']:.0f} s "
              f"(log: {WORK / (row.name + '.log')})", flush=True)
        results.append(result)
    if not argv:
        RESULTS.write_text(table(results, commit))
        print(RESULTS.read_text())
    else:  # one row: printed, docs/compat.md keeps the last full run
        print(table(results, commit))
    return 0 if all(not r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``make compat``: the adapter tests on the oldest and the newest Airflow and Prefect we declare.

For each row of :data:`MATRIX` it makes a clean venv with ``uv`` (``.compat/<name>``), installs
that framework release alone with batch_ops (editable), runs the adapter's test directory, and
writes the table to ``docs/compat.md``. The newest rows install with ``constraints.txt`` (the
known-good set); the oldest rows resolve freely, with only the pins a row names (libraries that
later broke that release, e.g. FastAPI for Prefect 3.4), so they show what a user of that
release gets.
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


MATRIX = [
    Row("airflow-3.1.8", "apache-airflow==3.1.8", "airflow,server,cli,evals,s3", "tests/airflow",
        "oldest supported: 3.0.x logs the API key (Airflow's supervisor, MaskSecret at debug level)"),
    Row("airflow-3.3.2", "apache-airflow==3.3.2", "airflow,server,cli,evals,s3", "tests/airflow",
        "newest; constraints.txt", constraints=True),
    Row("prefect-3.4.0", "prefect==3.4.0", "prefect,server,cli,evals,s3", "tests/prefect",
        "tried: the reason the floor is 3.7",
        pins=("fastapi<0.116", "sqlalchemy<2.1")),
    Row("prefect-3.7.7", "prefect==3.7.7", "prefect,server,cli,evals,s3", "tests/prefect",
        "oldest supported and newest; constraints.txt",
        constraints=True),
]


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if found is None:
        sys.exit("make compat needs uv (it comes with the dev extra)")
    return found


def _run(argv: list[str], *, env: dict[str, str], log: Path, timeout: float) -> int:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              cwd=ROOT).returncode


def play(row: Row) -> dict[str, object]:
    venv = WORK / row.name
    log = WORK / f"{row.name}.log"
    shutil.rmtree(venv, ignore_errors=True)
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_NATIVE_TLS"] = "1"
    uv, started = _uv(), time.monotonic()
    result: dict[str, object] = {"row": row, "installed": "", "passed": 0, "failed": 0, "skipped": 0, "failures": []}
    if _run([uv, "venv", "-q", "-p", sys.executable, str(venv)], env=env, log=log, timeout=300) != 0 or _run(
            [uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python"), row.framework, *row.pins, *TEST_DEPS,
             *(["-c", str(ROOT / "constraints.txt")] if row.constraints else []),
             "-e", f"{ROOT}[{row.extras}]"], env=env, log=log, timeout=1200) != 0:
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
          "loadfile", f"--junitxml={junit}", row.tests], env=env, log=log, timeout=3600)
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


def table(results: list[dict[str, object]]) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Compatibility",
        "",
        f"`make compat` (`scripts/compat.py`), {stamp}: each release installed alone in a clean venv with",
        "batch_ops (no constraints file), then the adapter's whole test directory.",
        "",
        "| release | installed | adapter tests passed | failed | notes |",
        "|---|---|---:|---:|---|",
    ]
    for r in results:
        row = r["row"]
        assert isinstance(row, Row)
        failures = r["failures"]
        assert isinstance(failures, list)
        shown = "; ".join(failures[:4]) + (" …" if len(failures) > 4 else "")
        pinned = f"with {', '.join(row.pins)}" if row.pins else ""
        notes = "; ".join(x for x in (row.note, pinned, f"failing: {shown}" if failures else "") if x)
        lines.append(f"| {row.name} | {r['installed']} | {r['passed']} | {r['failed']} | {notes} |")
    lines += ["", "Declared: `apache-airflow>=3.1` and `prefect>=3.7` (pyproject.toml). Airflow 3.0.x is not",
              "supported: its task supervisor logs every connection secret at debug level",
              "(`MaskSecret(value=...)`), which breaks the rule that a key never reaches a log.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    rows = [r for r in MATRIX if not argv or r.name in argv]
    WORK.mkdir(exist_ok=True)
    results = []
    for row in rows:
        print(f"-- {row.name}: {row.framework}", flush=True)
        result = play(row)
        print(f"   {result['passed']} passed, {result['failed']} failed in {result['seconds']:.0f} s "
              f"(log: {WORK / (row.name + '.log')})", flush=True)
        results.append(result)
    if not argv:
        RESULTS.write_text(table(results))
        print(RESULTS.read_text())
    else:
        print(table(results))
    return 0 if all(not r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Suite ``scenario_tests``: the test suite's long scenarios (``pytest -m scenario``), left out of ``make test``.

``make test`` stays within its ten minutes by leaving out the tests marked ``scenario``: each walks a promise
that is long to walk (two Airflow deployments migrated and run side by side, webhook outages of seconds, a
Prefect parent retried after its subflows lost their waits, worker processes racing on one job, an eval gate
failing a second night). They run here, in their own pytest process (two workers, one file each at a time),
and every one of them is a check of this drill: a test that fails or errors fails the drill, by name.

* ``scenarios``: ``pytest -m scenario``; figures: tests run, passed, failed, seconds.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from drills._common import ROOT, Drill

__all__ = ["run"]


def run(names: list[str], work: Path) -> list[Drill]:
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, "the test suite's long scenarios (pytest -m scenario)").run(
            lambda d: scenarios(d, work)))
    return results


def scenarios(d: Drill, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    report = work / "scenarios.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "scenario", "-n", "2", "--dist", "loadfile",
            "-p", "no:cacheprovider", f"--junitxml={report}", "tests"]
    done = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    d.require(report.exists(), f"pytest wrote no report (exit {done.returncode}): {done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
    cases = ET.parse(report).getroot().iter("testcase")
    ran = failed = 0
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("skipped") is not None:
            continue
        ran += 1
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if not d.check(bad is None, f"{name}: {(bad.get('message') or '')[:300] if bad is not None else ''}"):
            failed += 1
    d.require(ran > 0, "no test is marked scenario: pytest -m scenario selected nothing")
    d.check(done.returncode == 0, f"pytest exited {done.returncode}: {done.stdout[-1500:]}")
    d.figure("tests", ran)
    d.figure("passed", ran - failed)
    d.figure("failed", failed)

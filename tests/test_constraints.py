"""The known-good set (``constraints.txt``) resolves with every extra, executors included.

``make install`` installs ``-e .[all,dev]`` under ``-c constraints.txt``; the executor extras
(``celery``, ``kubernetes``, ``docker``), object storage (``s3``) and the cluster drill's extra
(``cluster``: moto, psycopg2) must install under the same pins, or a deployment that adds one of
them gets a different Airflow/Prefect stack than the one the tests ran on. pip resolves the whole
set without installing anything (``--dry-run --ignore-installed``), and every package it picks must
be pinned in the file: an unpinned one is where pip silently backtracks (unpinned, s3fs fell back
to 0.4.2 once moto pulled a newer botocore than aiobotocore allows).

Slow for a unit test (pip reads the index for ~270 packages; see the timing note in the report):
it runs in ``make test`` all the same, because a set that stops resolving breaks every install.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
#: Every extra a deployment may add on top of ``make install``'s ``all,dev``.
EXTRAS = "all,dev,s3,celery,kubernetes,docker,cluster"
#: Seconds: ~100 s with the venv's pip 23.2 (~30 s with pip 26) when the set resolves; a set that no
#: longer resolves can keep pip backtracking for many minutes, so it is cut off with a clear message.
TIMEOUT = 600
#: The packages the executor extras must bring, at the versions known to work together.
EXPECTED = {
    "apache-airflow-providers-celery": None,
    "apache-airflow-providers-cncf-kubernetes": None,
    "prefect-docker": None,
    "prefect-kubernetes": None,
    "s3fs": None,
    "moto": None,
    "psycopg2-binary": None,
    "celery": "5.6.3",  # 5.7.0 breaks apache-airflow-providers-celery 3.26.0
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _noise(line: str) -> bool:
    """pip's lines that say nothing about the resolution (missing local index pages, setuptools' nags)."""
    return (line.startswith("WARNING: Location") or "does not provide the extra" in line
            or "project.license" in line or not line.strip())


def _said(stderr: str) -> str:
    """pip's verdict first (its ERROR lines and the conflict it explains), then its last lines."""
    lines = [line for line in stderr.splitlines() if not _noise(line)]
    verdict = [line for line in lines if line.startswith("ERROR") or "depends on" in line or "conflict" in line]
    return "\n".join([*verdict, "--- last lines ---", *lines[-40:]])[-8000:]


@pytest.mark.scenario  # ~20 s of pip resolving: `make drill` (make install resolves the set it uses)
def test_constraints_resolve_with_every_extra() -> None:
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--disable-pip-version-check", "--report", "-", "-c", str(CONSTRAINTS), "-e", f".[{EXTRAS}]"]
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(
            f"pip did not resolve constraints.txt with .[{EXTRAS}] within {TIMEOUT} s (it resolves in about "
            f"100 s when every package is pinned; longer means it is backtracking through old releases).\n"
            f"Command: {' '.join(argv)}\npip said (last lines):\n{_said(said)}") from None
    assert proc.returncode == 0, (
        f"constraints.txt does not resolve with .[{EXTRAS}] (pip exited {proc.returncode}).\n"
        f"Command: {' '.join(argv)}\npip said:\n{_said(proc.stderr)}"
    )

    report = json.loads(proc.stdout)
    picked = {_norm(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    picked.pop("openai-batch-ops", None)
    pins = _pins()
    unpinned = sorted(f"{name}=={version}" for name, version in picked.items() if name not in pins)
    assert not unpinned, (
        "pip resolved packages that constraints.txt does not pin, so another resolver run may pick other "
        f"versions; add these lines (checked to resolve together just now): {', '.join(unpinned)}"
    )
    drifted = sorted(f"{name}: pinned {pins[name]}, picked {v}" for name, v in picked.items() if pins[name] != v)
    assert not drifted, f"pip picked versions other than the pins: {drifted}"
    for name, version in EXPECTED.items():
        assert name in picked, f"{name} is not installed by .[{EXTRAS}]: an extra lost it"
        assert version is None or picked[name] == version, f"{name} {picked[name]}, known-good is {version}"

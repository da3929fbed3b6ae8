"""The deployment identity is made once, atomically, by the Airflow components as they start.

A fresh deployment's first tasks used to make it, several at once, through the Execution API (no
compare-and-set): a try could use a value a racing task then replaced, and its retry derived another key
(a loaded end-to-end run paid 35 requests for 20 on Gemini this way). Now this provider's plugin makes
it in every Airflow job as it starts (scheduler, triggerer, dag processor), inserting the identity and
its record in one transaction: four components starting at the same moment (real processes behind a
barrier file) end with one identity, one record, and every one of them reading it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from batch_ops.airflow.deployment import VARIABLE, made_variable

COMPONENT = """
import json, os, sys, time
from pathlib import Path

barrier = Path(sys.argv[1])
while not barrier.exists():
    time.sleep(0.005)
from airflow.jobs.job import Job

Job()  # what every Airflow component does as it starts: the listeners' on_starting runs
from airflow.models.variable import Variable
from airflow.utils.session import create_session
from sqlalchemy import select

with create_session() as session:  # what this component reads once it has started
    row = session.scalar(select(Variable).where(Variable.key == "batch_ops_deployment_id"))
    print(json.dumps({"identity": None if row is None else row.val}))
"""


def _rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select key, val from variable where key like ?", (VARIABLE + "%",)).fetchall()


def test_components_starting_at_once_make_one_identity(airflow_db: None, airflow_home: Path, tmp_path: Path) -> None:
    db = airflow_home / "airflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("delete from variable where key like ?", (VARIABLE + "%",))
    barrier = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", COMPONENT, str(barrier)], env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(3)  # every process imported Python and waits at the barrier
    barrier.touch()
    said = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        said.append(json.loads(out.strip().splitlines()[-1])["identity"])
    (identity,) = set(said)
    assert identity, said
    # One identity made, with its record (what proves_identity reads); no record of a value that lost. (The values
    # are stored encrypted where the deployment has a Fernet key: the keys say it.)
    assert sorted(key for key, _ in _rows(db)) == sorted([VARIABLE, made_variable(identity)]), _rows(db)


def test_a_component_keeps_an_identity_already_made(airflow_db: None, airflow_home: Path, tmp_path: Path) -> None:
    db = airflow_home / "airflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("delete from variable where key like ?", (VARIABLE + "%",))
        conn.execute("insert into variable (key, val, is_encrypted) values (?, ?, 0)", (VARIABLE, "kept0123"))
    barrier = tmp_path / "go"
    barrier.touch()
    done = subprocess.run([sys.executable, "-c", COMPONENT, str(barrier)], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["identity"] == "kept0123"
    assert dict(_rows(db)) == {VARIABLE: "kept0123"}

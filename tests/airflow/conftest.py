"""Airflow set-up for tests/airflow: a throwaway AIRFLOW_HOME, SQLite, and the test DAG folder.

Airflow reads its configuration once, when it is first imported, so the environment is set
here at import time (pytest loads this file before collecting anything below it, and before
the doctests of ``batch_ops.airflow``, which sort after ``tests``). ``airflow db migrate`` runs
once per session. DAGs live in ``tests/airflow/dags`` (``dag.test()`` only runs DAGs found in
the configured DAG folder).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DAGS = HERE / "dags"
API_KEY = "sk-test-CANARY-4f9d2b"  # distinctive, so tests can prove it never leaks

collect_ignore = ["dags", "e2e_dags"]  # DAG files are for Airflow, not for pytest's doctest collector

_HOME = Path(tempfile.mkdtemp(prefix="batch_ops_airflow_"))
atexit.register(shutil.rmtree, _HOME, True)
_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_HOME / "logs"),
    # Triggers run inside this process (dag.test) and its children: keep pytest's own heap out of
    # gc.freeze(); test_trigger.py checks the default (on) in a process of its own.
    "AIRFLOW__BATCH_OPS__TRIGGERER_GC_FREEZE": "False",
}
if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != _ENV["AIRFLOW_HOME"]:
    # Imported earlier with another configuration: its database is not ours.
    raise RuntimeError("airflow was imported before tests/airflow/conftest.py could configure it")
os.environ.update(_ENV)


def airflow_bin() -> str:
    """The ``airflow`` command of the interpreter running the tests."""
    candidate = Path(sys.executable).with_name("airflow")
    return str(candidate) if candidate.exists() else "airflow"


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key every test connection carries; it must never show up in logs, XCom or errors."""
    return API_KEY


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the metadata database once (``airflow db migrate``, ~5 s on SQLite)."""
    proc = subprocess.run(
        [airflow_bin(), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="session")
def dagbag(airflow_db: None) -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag


EXAMPLE_DAGS = HERE.parents[1] / "dags"


def example_dags_env(home: Path, *, drop: tuple[str, ...] = (), **more: str) -> dict[str, str]:
    """The environment of ``airflow`` commands on this repository's example DAGs (``dags/``), as a user runs
    them: an AIRFLOW_HOME of their own (SQLite in it), nothing of this session's Airflow, OpenAI or batch_ops
    settings (nor the variables named by prefix in ``drop``), this interpreter's ``airflow`` first on PATH;
    ``more`` added. Migrate it with :func:`migrate`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI", "BATCH_OPS", *drop))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **more,
    })
    return env


def migrate(env: dict[str, str]) -> None:
    """``airflow db migrate`` in ``env`` (a home of :func:`example_dags_env`)."""
    done = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def connection_env(url: str, *, api_key: str = API_KEY, conn_type: str = "openaibatch", **extra: Any) -> str:
    conn: dict[str, Any] = {"conn_type": conn_type, "host": str(url), "password": api_key}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


@pytest.fixture
def use_server(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Point the default connection (``openai_batch_default``) at a server for this test."""

    def use(url: str, **kwargs: Any) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_OPENAI_BATCH_DEFAULT", connection_env(url, **kwargs))

    return use


@pytest.fixture
def run_dag(dagbag: Any) -> Callable[..., Any]:
    """``run_dag(dag_id, conf)``: ``dag.test()`` it and return the DagRun."""

    def run(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
        dag = dagbag.get_dag(dag_id)
        assert dag is not None, f"no DAG {dag_id} in {DAGS}"
        return dag.test(run_conf=conf or {})

    return run


class Helpers:
    """Reading a finished DAG run, and writing request files (``af`` fixture)."""

    @staticmethod
    def state(dr: Any, task_id: str, map_index: int = -1) -> str | None:
        ti = dr.get_task_instance(task_id, map_index=map_index)
        return None if ti is None else str(getattr(ti.state, "value", ti.state))

    @staticmethod
    def try_number(dr: Any, task_id: str) -> int:
        return int(dr.get_task_instance(task_id).try_number)

    @staticmethod
    def xcom(dr: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            query = XComModel.get_many(
                run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key=key, map_indexes=map_index
            )
            if hasattr(query, "with_only_columns"):  # a select (Airflow >= 3.1, SQLAlchemy 2)
                row = session.execute(query.with_only_columns(XComModel.value)).first()
            else:  # a Query (Airflow 3.0, SQLAlchemy 1.4)
                row = query.with_entities(XComModel.value).first()
        return None if row is None else XComModel.deserialize_value(row)

    @staticmethod
    def write_requests(path: Path, n: int, *, prefix: str = "q") -> Path:
        with path.open("w") as fh:
            for i in range(n):
                body = {"model": "m", "messages": [{"role": "user", "content": f"{prefix} {i}"}]}
                line = {"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                fh.write(json.dumps(line) + "\n")
        return path


@pytest.fixture(scope="session")
def af() -> Helpers:
    return Helpers()


@pytest.fixture
def requests_file(tmp_path: Path) -> Path:
    return Helpers.write_requests(tmp_path / "requests.jsonl", 5)


@pytest.fixture
def oracle() -> Iterator[Callable[[str], Any]]:
    """The official ``openai`` SDK on a server: what the server really holds."""
    import openai

    clients: list[Any] = []

    def make(url: str) -> Any:
        client = openai.OpenAI(base_url=str(url), api_key="sk-oracle", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()

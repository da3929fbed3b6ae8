"""The orphan sweep, run by Airflow (``airflow dags test``): the operator and ``dags/batch_ops_orphan_sweep.py``.

``orphan_maker`` creates a batch without waiting for it (``wait_for_completion=False``, the
pattern a downstream sensor completes) and then sweeps, while its own run is still going: its
own batch must be kept. Once that run has ended, its batch is an orphan: the example DAG's sweep
must cancel it, and must leave alone a batch naming a run Airflow does not know and a batch made
outside Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from batch_ops import BatchClient
from batch_ops.identity import airflow_owner_metadata

REPO_DAGS = Path(__file__).resolve().parents[2] / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
KEY = "sk-sweep-test-secret-5521"

MAKER = '''
import pendulum
from airflow.sdk import dag
from batch_ops.airflow import OpenAIBatchOperator, OpenAIBatchOrphanSweepOperator

@dag(dag_id="orphan_maker", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def orphan_maker():
    create = OpenAIBatchOperator(
        task_id="create", endpoint="/v1/embeddings", wait_for_completion=False,
        requests=[{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(3)])
    create >> OpenAIBatchOrphanSweepOperator(task_id="sweep", min_age=0)

orphan_maker()
'''


def _requests() -> list[dict[str, object]]:
    return [{"custom_id": "a", "body": {"model": "m", "input": "x"}}]


@pytest.mark.scenario  # ~35 s: `make drill`, beside drill 22.6
def test_sweep_cancels_only_batches_whose_run_ended(make_server: Callable[..., AbstractContextManager[str]],
                                                      tmp_path: Path) -> None:
    dags, home = tmp_path / "dags", tmp_path / "home"
    dags.mkdir()
    shutil.copy(REPO_DAGS / "batch_ops_orphan_sweep.py", dags)
    (dags / "orphan_maker.py").write_text(MAKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "BATCH_OPS_SWEEP_MIN_AGE": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    # Every request takes 10 minutes: nothing finishes while the test runs.
    with make_server(request_latency=600, api_key=KEY) as url:
        env["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps({"conn_type": "openaibatch", "host": url,
                                                              "password": KEY})
        def airflow(*args: str) -> str:
            done = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
            return done.stdout + done.stderr

        with BatchClient(api_key=KEY, base_url=url) as client:
            def made() -> list[str]:  # orphan_maker's batches, oldest first
                return [b.id for b in reversed(list(client.batches.iter_all()))
                        if "orphan_maker" in (b.metadata or {}).get("airflow_task_instance", "")
                        and "1999" not in b.metadata["airflow_task_instance"]]

            first_log = airflow("dags", "test", "orphan_maker", "2026-03-01")
            stranger = client.submit(_requests(), endpoint="/v1/embeddings", metadata=airflow_owner_metadata(
                dag_id="orphan_maker", run_id="manual__1999-01-01", task_id="create"))
            unowned = client.submit(_requests(), endpoint="/v1/embeddings")
            (first,) = made()
            log = airflow("dags", "test", "batch_ops_orphan_sweep", "2026-03-03")
            status = {b.id: b.status.value for b in client.batches.iter_all()}
    # The run's own sweep kept its batch: its run was still going (a sensor could be waiting on it).
    assert "'kept': 1, 'orphan': 0" in first_log, first_log[-3000:]
    # The example DAG, once that run had ended: its batch is an orphan, cancelled; the others stay.
    assert status[first] in ("cancelling", "cancelled"), log[-3000:]
    assert status[stranger.id] == status[unowned.id] == "in_progress", status
    assert "'kept': 0, 'orphan': 1, 'unproven': 0, 'foreign': 0, 'unknown': 1, 'unowned': 1, 'cancelled': 1" in log, \
        log[-3000:]
    assert KEY not in first_log + log

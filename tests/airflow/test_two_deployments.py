"""Two Airflow deployments, one OpenAI project (issue 22, item 6; issue 23, item 1).

Production and staging run the same DAG file against one Batch API project, each with its own
metadata database (two AIRFLOW_HOMEs, two SQLite files), and a run of the same day has the same
run id in both.

* A sweep never cancels the other's batches. Before issue 22 a batch's owner was
  ``dag/run/task/map_index`` only: staging's sweep (the example DAG, ``cancel=True`` by default)
  asked *its* Airflow about production's batches, found its own run of that id ended, and
  cancelled them.
* A task never re-attaches to the other's batch. Before issue 23 the idempotency key was derived
  from (dag, task, run, map index) only: staging's task found production's batch by its key,
  re-attached to it and read its results (and its ``cancel_on_kill``/``cancel_on_timeout`` could
  cancel it). The key now holds the deployment's identity; a batch made under the old key before
  the upgrade is still found by its own deployment's retry (never paid twice), never by the other's.
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
from batch_ops.airflow.operators import idempotency_key
from batch_ops.identity import airflow_owner_metadata

#: Long (~70 s): run by `make drill` (drills/scenario_tests.py), beside drill 22.6.
pytestmark = pytest.mark.scenario

REPO_DAGS = Path(__file__).resolve().parents[2] / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
KEY = "sk-two-deployments-CANARY-6e1f"
DAY = "2026-03-01T00:00:00+00:00"
RUN_ID = f"manual__{DAY}"  # a run of that day has this id in both deployments (a scheduled one: scheduled__<day>)

NIGHTLY = '''
import pendulum
from airflow.sdk import dag
from batch_ops.airflow import OpenAIBatchOperator

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]

@dag(dag_id="nightly", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def nightly():
    OpenAIBatchOperator(task_id="create", endpoint="/v1/embeddings", wait_for_completion=False, requests=REQUESTS)
    OpenAIBatchOperator(task_id="create_fresh", endpoint="/v1/embeddings", wait_for_completion=False,
                        requests=REQUESTS, reattach=False)

DAG = nightly()

if __name__ == "__main__":  # run it for a day, with that day's run id (`airflow dags test` names runs by the clock)
    import sys
    day = pendulum.parse(sys.argv[1])
    print("state=" + str(DAG.test(run_after=day, logical_date=day).state))
'''


class Deployment:
    """One Airflow deployment: its own AIRFLOW_HOME, metadata database and DAG folder (same DAG files)."""

    def __init__(self, base: Path, name: str, url: str) -> None:
        self.name = name
        self.home = base / name
        self.dags = dags = self.home / "dags"
        dags.mkdir(parents=True)
        shutil.copy(REPO_DAGS / "batch_ops_orphan_sweep.py", dags)
        (dags / "nightly.py").write_text(NIGHTLY)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI"))}
        self.env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": json.dumps({"conn_type": "openaibatch", "host": url,
                                                             "password": KEY}),
            "BATCH_OPS_SWEEP_MIN_AGE": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })

    def airflow(self, *args: str) -> str:
        return self._run([AIRFLOW, *args])

    def nightly(self, day: str) -> str:
        """A run of ``nightly`` for ``day``, run id ``manual__<day>`` (``dag.test()``, as ``airflow dags test``)."""
        output = self._run([sys.executable, str(self.dags / "nightly.py"), day])
        assert "state=success" in output, output[-3000:]
        return output

    def _run(self, argv: list[str]) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{self.name}: {' '.join(argv)}\n{output[-3000:]}"
        return output


def test_staging_sweep_cancels_its_own_orphans_and_none_of_productions(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    """Production runs ``nightly`` for a day: ``create`` (the default: re-attaches by key) and
    ``create_fresh`` (``reattach=False``) leave two batches running. Staging runs the same day and
    makes two of its own (its key names the task instance in *its* deployment). A batch made by an
    older batch_ops (an owner without a deployment identity) names staging's run. Then staging's
    hourly sweep runs: it must cancel its own two orphans and nothing else — production's two
    batches are another deployment's, the old one is unproven."""
    with make_server(request_latency=600, api_key=KEY) as url:  # nothing finishes while the test runs
        production, staging = Deployment(tmp_path, "production", url), Deployment(tmp_path, "staging", url)
        production.airflow("db", "migrate")
        # A freshly migrated database holds no deployment state yet: staging's is a copy of it (a second
        # `db migrate` takes as long again); each deployment gets its identity on first use.
        shutil.copy(production.home / "airflow.db", staging.home / "airflow.db")

        with BatchClient(api_key=KEY, base_url=url) as client:
            def owners() -> dict[str, str]:
                return {b.id: (b.metadata or {}).get("airflow_task_instance", "") for b in client.batches.iter_all()}

            production_log = production.nightly(DAY)
            productions = set(owners())
            staging_log = staging.nightly(DAY)
            stagings = set(owners()) - productions
            old = client.submit([{"custom_id": "a", "body": {"model": "m", "input": "x"}}], endpoint="/v1/embeddings",
                                metadata=airflow_owner_metadata(dag_id="nightly", run_id=RUN_ID,
                                                                task_id="create_fresh"))
            sweep_log = staging.airflow("dags", "test", "batch_ops_orphan_sweep", "2026-03-03")
            status = {b.id: b.status.value for b in client.batches.iter_all()}

    # Staging's `create` made its own batch: the key names the task instance *in this deployment*.
    assert len(productions) == 2 and len(stagings) == 2, (productions, stagings, staging_log[-2000:])
    assert "Re-attaching to batch" not in staging_log, staging_log[-3000:]
    cancelled = {b for b, s in status.items() if s in ("cancelling", "cancelled")}
    assert cancelled & productions == set(), f"staging cancelled production's {cancelled & productions}"
    assert old.id not in cancelled, "a batch whose owner is unproven was cancelled"
    assert cancelled == stagings, (status, sweep_log[-3000:])
    assert "'orphan': 2" in sweep_log and "'foreign': 2" in sweep_log and "'unproven': 1" in sweep_log, \
        sweep_log[-3000:]
    assert KEY not in production_log + staging_log + sweep_log


KEYED = '''
import pendulum
from airflow.sdk import dag
from batch_ops.airflow import OpenAIBatchOperator

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]

@dag(dag_id="nightly", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def nightly():
    for task_id in ("upgraded", "fresh"):
        OpenAIBatchOperator(task_id=task_id, endpoint="/v1/embeddings", wait_for_completion=False, requests=REQUESTS)

DAG = nightly()

if __name__ == "__main__":
    import sys
    day = pendulum.parse(sys.argv[1])
    print("state=" + str(DAG.test(run_after=day, logical_date=day).state))
'''
REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]


def test_staging_makes_batches_of_its_own_and_a_retry_across_the_upgrade_finds_its_old_batch(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    """Both deployments run ``nightly`` for the same day: ``upgraded`` (production ran it before the
    upgrade: a batch under the old key, its owner naming production) and ``fresh`` (never ran).
    Production's ``upgraded`` re-attaches to its old batch (a retry across the upgrade pays nothing);
    its ``fresh`` creates one. Staging finds neither: it creates one batch for each task."""
    with make_server(request_latency=600, api_key=KEY) as url:  # nothing finishes while the test runs
        production, staging = Deployment(tmp_path, "production", url), Deployment(tmp_path, "staging", url)
        for deployment, identity in ((production, "prod0123456789ab"), (staging, "stag0123456789ab")):
            deployment.env["AIRFLOW_VAR_BATCH_OPS_DEPLOYMENT_ID"] = identity  # pinned, to name it in the old batch
            (deployment.dags / "nightly.py").write_text(KEYED)
        production.airflow("db", "migrate")
        shutil.copy(production.home / "airflow.db", staging.home / "airflow.db")

        with BatchClient(api_key=KEY, base_url=url) as client:
            old = client.submit(REQUESTS, endpoint="/v1/embeddings",
                                idempotency_key=idempotency_key(dag_id="nightly", task_id="upgraded", run_id=RUN_ID),
                                metadata=airflow_owner_metadata(dag_id="nightly", run_id=RUN_ID, task_id="upgraded",
                                                                deployment="prod0123456789ab"))
            production_log = production.nightly(DAY)
            staging_log = staging.nightly(DAY)
            made = {b.id: json.loads((b.metadata or {}).get("airflow_task_instance", "{}"))
                    for b in client.batches.iter_all()}

    def batches_of(deployment: str, task_id: str) -> set[str]:
        return {b for b, owner in made.items() if owner.get("deployment") == deployment
                and owner.get("task_id") == task_id}

    assert batches_of("prod0123456789ab", "upgraded") == {old.id}, "production's retry paid again for its old batch"
    assert len(batches_of("prod0123456789ab", "fresh")) == 1, production_log[-3000:]
    assert len(batches_of("stag0123456789ab", "upgraded")) == 1, f"staging adopted production's old batch: " \
        f"{made}\n{staging_log[-3000:]}"
    assert len(batches_of("stag0123456789ab", "fresh")) == 1, f"staging re-attached to production's batch: " \
        f"{made}\n{staging_log[-3000:]}"
    assert len(made) == 4 and "Re-attaching to batch" not in staging_log, (made, staging_log[-3000:])
    assert f"Re-attaching to batch {old.id}" in production_log, production_log[-3000:]
    assert KEY not in production_log + staging_log

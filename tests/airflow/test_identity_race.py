"""A deployment identity replaced after a try used it: the next try never pays again (issue 22, money).

A fresh Airflow deployment makes its identity (the Variable ``batch_ops_deployment_id``, part of
every key) in its first tasks, often several at once, and Airflow offers no compare-and-set: a
task slow between its read (nothing yet) and its write replaces a value another task already
used, and a task reading between the first tasks' writes uses a value that is then replaced. On
a loaded machine the end-to-end run paid 18 requests for 12 (and once 35 for 20): the retry of a
task whose first try had used the replaced value derived another key, found no chain and paid
attempt 0 again (seen in 1 of 8 runs: the API server's log shows that task's read finishing
before the last of three writes began).

The race depends on the API server's timing; the test makes its outcome happen every time with
the same writes a racing first task makes: a run
of ``nightly`` (its first try: the deployment's identity is made, the batch created under it),
then a task of that run writes another identity the way the late racer does (its record, then the
identity), and the run is tried again (same run id: the same task instance). The second try must
take over the first try's batch; a batch made under an identity this deployment never made (the
other deployment sharing the project) must never be taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from batch_ops import BatchClient
from batch_ops.airflow.operators import idempotency_key
from batch_ops.identity import airflow_owner_metadata

KEY = "sk-identity-race-CANARY-91ce"
DAY = "2026-03-01T00:00:00+00:00"
RUN_ID = f"manual__{DAY}"
FOREIGN = "f0e1d2c3b4a59687"  # the other deployment's identity: this one never made it
LATE = "1a7e1a7e1a7e1a7e"  # what the racing first task writes after this run's first try used its own

NIGHTLY = '''
import pendulum
from airflow.sdk import Variable, dag, task
from batch_ops.airflow import OpenAIBatchOperator

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(3)]

@dag(dag_id="nightly", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def nightly():
    embed = OpenAIBatchOperator(task_id="embed", endpoint="/v1/embeddings", wait_for_completion=False,
                                requests=REQUESTS)
    other = OpenAIBatchOperator(task_id="other", endpoint="/v1/embeddings", wait_for_completion=False,
                                requests=REQUESTS)

    @task
    def late_first_task():
        # What a first task of the deployment that read "no identity yet" before `embed` made one does
        # when its writes land late: its record, then the identity (Airflow's own Variable API).
        Variable.set("batch_ops_deployment_id.LATE", "LATE")
        Variable.set("batch_ops_deployment_id", "LATE")

    [embed, other] >> late_first_task()

DAG = nightly()

if __name__ == "__main__":  # the run for a day, then that run again (the same task instances: their next tries)
    import sys
    day = pendulum.parse(sys.argv[1])
    for n in (1, 2):
        print(f"run {n} state=" + str(DAG.test(run_after=day, logical_date=day).state), flush=True)
'''.replace("LATE", LATE)
REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(3)]


def _owner(batch: object) -> dict[str, object]:
    return json.loads((getattr(batch, "metadata", None) or {}).get("airflow_task_instance", "{}"))


def test_a_retry_after_the_identity_was_replaced_takes_over_its_batch_and_never_a_foreign_one(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path, airflow_db: None,
        airflow_home: Path) -> None:
    home = tmp_path / "deployment"
    dags = home / "dags"
    dags.mkdir(parents=True)
    (dags / "nightly.py").write_text(NIGHTLY)
    # A fresh deployment: the session's migrated database, without any Variable (no identity yet).
    shutil.copy(airflow_home / "airflow.db", home / "airflow.db")
    with sqlite3.connect(home / "airflow.db") as db:
        db.execute("delete from variable")
    db.close()
    with make_server(request_latency=600, api_key=KEY) as url:  # nothing finishes while the test runs
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENAI"))}
        env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW_CONN_OPENAI_BATCH_DEFAULT": json.dumps({"conn_type": "openaibatch", "host": url,
                                                             "password": KEY}),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })

        def run() -> tuple[str, str]:
            """Both runs in one process (each ``dag.test()``); what each logged."""
            done = subprocess.run([sys.executable, str(dags / "nightly.py"), DAY], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=300)
            output = done.stdout
            assert done.returncode == 0 and "run 1 state=success" in output and "run 2 state=success" in output, \
                output[-3000:]
            first, second = output.split("run 1 state=success", 1)
            return first, second

        with BatchClient(api_key=KEY, base_url=url) as client:
            # The other deployment's batches for both tasks of this run, same requests, under its identity.
            foreign = {task_id: client.submit(
                REQUESTS, endpoint="/v1/embeddings",
                idempotency_key=idempotency_key(dag_id="nightly", task_id=task_id, run_id=RUN_ID, deployment=FOREIGN),
                metadata=airflow_owner_metadata(dag_id="nightly", run_id=RUN_ID, task_id=task_id,
                                                deployment=FOREIGN)).id for task_id in ("embed", "other")}
            first, second = run()
            made = {b.id: _owner(b) for b in client.batches.iter_all()}

    mine = {b: o for b, o in made.items() if b not in foreign.values()}
    by_task: dict[str, list[str]] = {}
    for batch_id, owner in mine.items():
        by_task.setdefault(str(owner["task_id"]), []).append(batch_id)
    # The first try made one batch per task under the identity it made; the second (identity replaced)
    # found both again: nothing paid twice, and the other deployment's batches were never taken.
    assert {t: len(b) for t, b in by_task.items()} == {"embed": 1, "other": 1}, (made, second[-3000:])
    (embed,) = by_task["embed"]
    assert mine[embed]["deployment"] != LATE, "the first try ran with the late identity: nothing was raced"
    assert f"Re-attaching to batch {embed}" in second, second[-3000:]
    assert not any(f"Re-attaching to batch {b}" in first + second for b in foreign.values()), second[-3000:]
    assert KEY not in first + second

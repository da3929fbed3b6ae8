"""Suite ``owner_drills``: two Airflow deployments sweeping one API project (issue 22, item 6; issue 23, item 1).

* ``two-deployments`` (22.6): production and staging, each a migrated AIRFLOW_HOME of its own
  (its own SQLite metadata database), run the same DAG file against one local Batch API server
  whose requests take 10 minutes (nothing finishes during the drill). A run of the same day has
  the same run id in both. The DAG leaves batches running after its run ends: ``create`` (the
  default, re-attaching by key: the key holds the deployment, so staging's never finds
  production's batch — before issue 23 it adopted it), a mapped ``create_mapped`` over two inputs
  (likewise), and ``create_fresh`` (``reattach=False``). Two batches an earlier batch_ops made (an owner naming no
  deployment) name that run too.

  Then, with the example DAG ``batch_ops_orphan_sweep`` (``cancel=True``, the default):
  staging sweeps (production's 4 batches must stay, staging's own 4 orphans must go, the two old
  ones stay: unproven); staging runs another day (4 batches of its own, run ended); production
  sweeps (its own 4 must go, staging's 4 and the old two stay). Figures: foreign cancels, own
  orphans cancelled, unproven left; the key in no output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from drills._common import CANARY, ROOT, AirflowHome, Drill

__all__ = ["run"]

DAY1, DAY2 = "2026-03-01T00:00:00+00:00", "2026-03-02T00:00:00+00:00"
RUN1 = f"manual__{DAY1}"

NIGHTLY = '''
import pendulum
from airflow.sdk import dag
from batch_ops.airflow import OpenAIBatchOperator

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": "x"}} for i in range(2)]

@dag(dag_id="nightly", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def nightly():
    kw = dict(endpoint="/v1/embeddings", wait_for_completion=False, requests=REQUESTS)
    OpenAIBatchOperator(task_id="create", **kw)
    OpenAIBatchOperator(task_id="create_fresh", reattach=False, **kw)
    OpenAIBatchOperator.partial(task_id="create_mapped", endpoint="/v1/embeddings",
                                wait_for_completion=False).expand(requests=[REQUESTS, REQUESTS[:1]])

DAG = nightly()

if __name__ == "__main__":  # one run for a day, run id manual__<day> in any deployment
    import sys
    day = pendulum.parse(sys.argv[1])
    print("state=" + str(DAG.test(run_after=day, logical_date=day).state))
'''


def run(names: list[str], work: Path) -> list[Drill]:
    drills: dict[str, tuple[str, Callable[[Drill], None]]] = {
        "two-deployments": ("two deployments sweeping one project", lambda d: two_deployments(d, work)),
    }
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        title, body = drills[name]
        results.append(Drill(name, title).run(body))
    return results


class _Deployment:
    """An AirflowHome whose DAG folder holds ``nightly`` and the repo's example sweep DAG."""

    def __init__(self, work: Path, name: str, url: str) -> None:
        self.name = name
        self.home = AirflowHome(work, name)
        self.dags = self.home.path / "dags"
        self.dags.mkdir(parents=True, exist_ok=True)
        (self.dags / "nightly.py").write_text(NIGHTLY)
        shutil.copy(ROOT / "dags" / "batch_ops_orphan_sweep.py", self.dags)
        self.home.env["AIRFLOW__CORE__DAGS_FOLDER"] = str(self.dags)
        self.home.env["BATCH_OPS_SWEEP_MIN_AGE"] = "0"
        self.home.connection("openai_batch_default", url)
        self.output = ""

    def _check(self, what: str, proc: subprocess.CompletedProcess[str]) -> str:
        out = proc.stdout + proc.stderr
        self.output += out
        if proc.returncode != 0:
            raise AssertionError(f"{self.name}: {what} exited {proc.returncode}:\n{out[-2000:]}")
        return out

    def nightly(self, day: str) -> None:
        proc = subprocess.run([sys.executable, str(self.dags / "nightly.py"), day], env=self.home.env,
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        out = self._check(f"nightly {day}", proc)
        if "state=success" not in out:
            raise AssertionError(f"{self.name}: nightly {day} did not succeed:\n{out[-2000:]}")

    def sweep(self) -> str:
        return self._check("the sweep", self.home.cli("dags", "test", "batch_ops_orphan_sweep", "2026-03-03"))


def two_deployments(d: Drill, work: Path) -> None:
    from batch_ops import BatchClient
    from batch_ops.identity import airflow_owner_metadata
    from batch_ops.server import serve_in_background

    with serve_in_background(api_key=CANARY, request_latency=600) as url:
        production, staging = _Deployment(work, "production", url), _Deployment(work, "staging", url)
        for deployment in (production, staging):  # two real metadata databases, each migrated
            deployment.home.migrate()
        with BatchClient(api_key=CANARY, base_url=url) as client:
            def running() -> set[str]:
                return {b.id for b in client.batches.iter_all() if b.status.value == "in_progress"}

            def cancelled() -> set[str]:
                return {b.id for b in client.batches.iter_all() if b.status.value in ("cancelling", "cancelled")}

            production.nightly(DAY1)
            productions = running()
            staging.nightly(DAY1)
            staging_day1 = running() - productions
            old = {client.submit([{"custom_id": "a", "body": {"model": "m", "input": "x"}}],
                                 endpoint="/v1/embeddings",
                                 metadata=airflow_owner_metadata(dag_id="nightly", run_id=RUN1, task_id=task)).id
                   for task in ("create", "create_fresh")}
            d.require(len(productions) == 4, f"production's run left 4 batches running ({len(productions)})")
            d.check(len(staging_day1) == 4, f"staging's run made 4 batches of its own, adopting none of "
                                            f"production's (the key holds the deployment; {len(staging_day1)} made)")

            staging_log = staging.sweep()
            after_staging = cancelled()
            staging.nightly(DAY2)
            staging_day2 = running() - productions - staging_day1 - old
            production_log = production.sweep()
            after_production = cancelled() - after_staging

    foreign_by_staging = len(after_staging & productions)
    foreign_by_production = len(after_production & (staging_day1 | staging_day2))
    d.check(foreign_by_staging == 0, f"staging's sweep cancelled {foreign_by_staging} of production's 4 batches")
    d.check(after_staging == staging_day1, f"staging's sweep cancelled exactly its own orphans "
                                           f"({len(after_staging & staging_day1)} of {len(staging_day1)}; "
                                           f"{len(after_staging - staging_day1)} others)")
    d.check(len(staging_day2) == 4, f"staging's second day left 4 batches of its own ({len(staging_day2)})")
    d.check(foreign_by_production == 0,
            f"production's sweep cancelled {foreign_by_production} of staging's {len(staging_day2)} running batches")
    d.check(after_production == productions, f"production's sweep cancelled exactly its own 4 "
                                             f"({len(after_production & productions)}; "
                                             f"{len(after_production - productions)} others)")
    d.check(not (after_staging | after_production) & old, "no sweep cancelled the batches naming no deployment")
    d.check("'foreign': 4" in production_log and "'unproven': 2" in production_log,
            "production's report: staging's 4 foreign, the old 2 unproven")
    d.check(CANARY not in production.output + staging.output, "the key appears in no output of either deployment")
    d.figure("foreign cancels", f"{foreign_by_staging + foreign_by_production} (staging's sweep: {foreign_by_staging} "
                                f"of production's 4, none of them adopted by staging's tasks; production's: "
                                f"{foreign_by_production} of staging's 4)")
    d.figure("own orphans cancelled", f"staging {len(after_staging & staging_day1)}/{len(staging_day1)}, "
                                      f"production {len(after_production & productions)}/{len(productions)}")
    d.figure("unproven (no deployment) cancelled", f"{len((after_staging | after_production) & old)}/{len(old)}")
    d.check("'foreign': 4" in staging_log and "'unproven': 2" in staging_log,
            "staging's report: production's 4 foreign, the old 2 unproven")

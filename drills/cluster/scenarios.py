"""The cluster drill's Airflow rows, each against a running :class:`~drills.cluster.stack.CeleryStack`.

1. ``nightly-eval-s3``: ``dags/nightly_eval.py`` run three times with its storage on S3 (moto); its
   tasks land on two workers that share no disk, so every file must travel through S3.
2. ``triggerer-kill``: forty deferred batches from one mapped task; the triggerer holding most of
   them is killed with ``kill -9``; the other must adopt its triggers; all forty succeed, one batch
   each.
3. ``worker-kill``: the Celery worker running a task is killed (its whole process tree) while the
   task's create is in flight (the server created the batch, a proxy holds the answer back); the
   retry runs on the other worker and re-attaches: one create, one batch.
5. ``job-s3``: an upstream task writes a request file to S3; ``OpenAIBatchJobOperator`` runs it as
   many batches (5% of requests fail, so there are rounds) with its state on S3. A create of its
   second wave reaches the server with the answer held back, and the worker running that step is
   killed; Airflow's retry resumes the job from S3 and re-attaches: one create per part.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from drills._common import CANARY, DrillFailed, HoldProxy, descendant_of, oracle, wait_for
from drills.cluster.services import BatchServer, Moto
from drills.cluster.stack import CeleryStack

__all__ = ["TERMINAL", "Row", "job_on_s3", "nightly_eval", "triggerer_kill", "worker_kill"]

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Row:
    """One line of the table, and the checks behind its verdict."""

    scenario: str
    runs: str = ""
    batches: str = ""
    orphans: str = ""
    adoption: str = ""
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    error: str | None = None
    seconds: float = 0.0
    skipped: bool = False

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  [{self.scenario}] FAILED: {what}", flush=True)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  [{self.scenario}] {text}", flush=True)

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None and self.passed > 0

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")


def _orphans(url: str) -> tuple[list[Any], int]:
    """(every batch on the server, how many are not terminal)."""
    sdk = oracle(url)
    try:
        batches = list(sdk.batches.list(limit=100))
    finally:
        sdk.close()
    return batches, sum(1 for b in batches if b.status not in TERMINAL)


def _statuses(batches: list[Any]) -> dict[str, int]:
    return dict(collections.Counter(b.status for b in batches))


def _first_error(log: str) -> str | None:
    """The exception a failed task's log reports (Airflow 3 task logs are JSON lines), in one line."""
    found = None
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if re.search(r"(Error|Exception)\b", line):
                found = re.sub(r"\s+", " ", line).strip()
            continue
        if not isinstance(entry, dict):
            continue
        chain = [f"{d['exc_type']}: {d.get('exc_value', '')}" for d in entry.get("error_detail") or []
                 if isinstance(d, dict) and d.get("exc_type")]
        if chain:  # the exception and its causes
            found = " | ".join(chain)
        if found is None and entry.get("level") == "error":
            found = str(entry.get("event"))
    return " ".join(found.split())[:600] if found else None


# ---------------------------------------------------------------------------------------------
# 1. nightly eval on S3, three runs over two disk-less workers
# ---------------------------------------------------------------------------------------------


def nightly_eval(row: Row, stack: CeleryStack, *, server: BatchServer, moto: Moto, prefix: str,
                 runs: int = 3) -> None:
    run_ids = []
    for _ in range(runs):
        run_ids.append(stack.trigger_dag("nightly_eval"))
        time.sleep(0.5)
    states = stack.wait(f"{runs} nightly_eval runs to finish", lambda: (
        (s := [stack.run_state("nightly_eval", r) for r in run_ids]) and all(x in ("success", "failed") for x in s)
        and s), timeout=480, interval=1.0)
    ok = states.count("success")
    row.runs = f"{ok}/{runs}"
    row.check(ok == runs, f"{ok}/{runs} nightly_eval runs succeeded ({states})")

    batches, orphans = _orphans(server.url)
    row.batches = f"{len(batches)} / {runs}"
    row.orphans = str(orphans)
    row.check(len(batches) == runs, f"one batch per run: {len(batches)} created for {runs} runs")
    row.check(orphans == 0, f"no batch left running after the runs ended ({_statuses(batches)})")
    row.check(all(b.status == "completed" for b in batches), f"every batch completed ({_statuses(batches)})")

    keys = moto.keys(prefix)
    names = collections.Counter(k.rsplit("/", 1)[-1] for k in keys)
    summary = ", ".join(f"{n} x{c}" for n, c in sorted(names.items()))
    row.note(f"S3 s3://{moto.bucket}/{prefix}: {len(keys)} objects ({summary or 'none'})")
    row.check(names.get("requests.jsonl", 0) == runs, f"each run's requests.jsonl is in S3 "
                                                      f"({names.get('requests.jsonl', 0)}/{runs})")
    row.check(names.get("output.jsonl", 0) == runs, f"each run's output.jsonl is in S3 "
                                                    f"({names.get('output.jsonl', 0)}/{runs})")
    row.check(any(k.startswith(f"{prefix}/reports") for k in keys), "the reports and history are in S3")

    hosts: collections.Counter[str] = collections.Counter()
    crossed = 0
    for run_id in run_ids:
        tis = {t["task_id"]: t for t in stack.tis("nightly_eval", run_id)}
        hosts.update(t["hostname"] for t in tis.values() if t["hostname"])
        chain = [tis.get(t, {}).get("hostname") for t in ("build_requests", "run_batch", "download_results",
                                                             "score_and_report")]
        crossed += sum(1 for a, b in itertools.pairwise(chain) if a and b and a != b)
        for t in tis.values():
            if t["state"] == "failed":
                error = _first_error(stack.task_logs("nightly_eval", run_id, t["task_id"]))
                row.note(f"{run_id}: {t['task_id']} failed on {t['hostname']}: {error or '(no error line in its log)'}")
    row.note("tasks ran on " + ", ".join(f"{h} x{c}" for h, c in sorted(hosts.items()))
             + f"; {crossed} hand-overs between consecutive tasks crossed workers")
    row.check(len(hosts) >= 2, f"the tasks ran on both workers ({dict(hosts)})")


# ---------------------------------------------------------------------------------------------
# 2. forty deferred tasks, one of two triggerers killed
# ---------------------------------------------------------------------------------------------


def _triggers(stack: CeleryStack, run_id: str) -> dict[int, int | None]:
    """map_index -> triggerer job id of the trigger of each deferred task instance of the run."""
    rows = stack.pg.query(
        "select ti.map_index, t.triggerer_id from task_instance ti join trigger t on ti.trigger_id = t.id "
        "where ti.dag_id = 'cluster_mapped' and ti.run_id = %s", run_id)
    return {int(m): (int(t) if t is not None else None) for m, t in rows}


def triggerer_kill(row: Row, stack: CeleryStack, *, server: BatchServer, mapped: int) -> None:
    run_id = stack.trigger_dag("cluster_mapped")
    started = time.monotonic()

    def all_deferred() -> bool:
        tis = [t for t in stack.tis("cluster_mapped", run_id) if t["map_index"] >= 0]
        return len(tis) == mapped and all(t["state"] == "deferred" for t in tis)

    stack.wait(f"all {mapped} mapped tasks deferred", all_deferred, timeout=420, interval=1.0)
    deferred_after = time.monotonic() - started
    held = stack.wait("every trigger assigned to a triggerer", lambda: (
        (t := _triggers(stack, run_id)) and len(t) == mapped and all(v is not None for v in t.values()) and t),
        timeout=60)
    jobs = {job: name for name, job in stack.triggerer_jobs.items()}
    per = collections.Counter(jobs.get(v, f"job {v}") for v in held.values())
    row.note(f"all {mapped} deferred {deferred_after:.0f} s after the trigger; triggers held: {dict(per)}")
    victim_name, _ = per.most_common(1)[0]
    survivor_name = next(n for n in stack.triggerer_jobs if n != victim_name)
    victim, survivor = stack.triggerer_jobs[victim_name], stack.triggerer_jobs[survivor_name]

    batches, _ = _orphans(server.url)
    running = sum(1 for b in batches if b.status not in TERMINAL)
    log_offset = server.log.stat().st_size
    killed = stack.kill(victim_name)
    killed_at = time.monotonic()
    row.check(running == mapped, f"all {mapped} batches still running at the kill ({_statuses(batches)})")
    row.check(all_deferred(), f"all {mapped} tasks still deferred right after the kill")
    moved = [m for m, job in held.items() if job == victim]
    row.note(f"kill -9 {victim_name} (job {victim}, {len(moved)} triggers, pids {killed[:4]}...)")

    # Two moments: the trigger rows name the survivor (the DB), and the survivor has polled every
    # batch (the server's access log: after the kill, nobody else polls them).
    ids = {b.id for b in batches}
    marks: dict[str, float] = {}
    polled: set[str] = set()

    def adopted() -> bool:
        if "db" not in marks:
            now = _triggers(stack, run_id)
            if len(now) == mapped and all(job == survivor for job in now.values()):
                marks["db"] = time.monotonic() - killed_at
        if "polls" not in marks:
            with server.log.open("rb") as fh:
                fh.seek(log_offset)
                fresh = fh.read().decode(errors="replace")
            polled.update(i for i in ids if f"GET /v1/batches/{i} " in fresh)
            if polled == ids:
                marks["polls"] = time.monotonic() - killed_at
        return len(marks) == 2

    stack.wait(f"{survivor_name} to adopt and poll the triggers", adopted, timeout=120, interval=0.2)
    row.adoption = f"{marks['db']:.1f}"
    row.note(f"{survivor_name} (job {survivor}) holds all {mapped} triggers {marks['db']:.1f} s after the kill "
             f"and has polled every batch {marks['polls']:.1f} s after it (health check threshold 8 s, "
             "heartbeat 1 s, poll interval 1 s)")

    final = stack.wait(f"all {mapped} tasks to finish", lambda: (
        (tis := [t for t in stack.tis("cluster_mapped", run_id) if t["map_index"] >= 0])
        and all(t["state"] in ("success", "failed") for t in tis) and tis), timeout=600, interval=1.0)
    ok = sum(1 for t in final if t["state"] == "success")
    row.runs = f"{ok}/{mapped}"
    row.check(ok == mapped, f"{ok}/{mapped} mapped tasks succeeded")
    retried = sum(1 for t in final if (t["try_number"] or 0) > 1)
    if retried:
        row.note(f"{retried} tasks needed a second try")

    batches, orphans = _orphans(server.url)
    row.batches = f"{len(batches)} / {mapped}"
    row.orphans = str(orphans)
    row.check(len(batches) == mapped, f"one batch per task: {len(batches)} created for {mapped} tasks")
    row.check(orphans == 0 and all(b.status == "completed" for b in batches),
              f"every batch completed, none left running ({_statuses(batches)})")
    ids = {(stack.xcom("cluster_mapped", run_id, map_index=m) or {}).get("batch_id") for m in range(mapped)}
    ids.discard(None)
    row.check(ids == {b.id for b in batches}, f"each task's XCom names its own batch ({len(ids)} distinct ids)")
    logs = "\n".join(p.read_text(errors="replace") for p in (stack.logs / "dag_id=cluster_mapped").rglob("*trigger*")
                     if p.is_file()) if (stack.logs / "dag_id=cluster_mapped").exists() else ""
    row.check(CANARY not in logs, "no trigger log holds the API key")


# ---------------------------------------------------------------------------------------------
# 3. a worker killed mid-create
# ---------------------------------------------------------------------------------------------


def worker_kill(row: Row, stack: CeleryStack, *, proxy: HoldProxy, server: BatchServer) -> None:
    from batch_ops.airflow.operators import idempotency_key

    run_id = stack.trigger_dag("cluster_worker_kill")
    wait_for("the create to reach the server (its answer held back)", proxy.held.is_set, timeout=240,
             alive=stack.dead)
    sdk = oracle(server.url)
    try:
        (created,) = wait_for("the batch on the server", lambda: list(sdk.batches.list()), timeout=30)
    finally:
        sdk.close()
    # The key names the task instance in this deployment (the identity its owner record names).
    deployment = json.loads((created.metadata or {}).get("airflow_task_instance") or "{}").get("deployment")
    key = idempotency_key(dag_id="cluster_worker_kill", task_id="batch", run_id=run_id, map_index=-1,
                          deployment=deployment)
    row.check(((created.metadata or {}).get("batch_ops_idempotency_key") or "").split("@")[0] == key,
              "the server holds the batch, tagged with the task instance's idempotency key (<key>@<requests>)")
    ti = stack.wait("the running task's pid and host", lambda: (
        (t := stack.ti("cluster_worker_kill", run_id)) and t["pid"] and t["hostname"] and t), timeout=30)
    pid, host = int(ti["pid"]), ti["hostname"]
    victim = next((n for n in ("worker-1", "worker-2") if descendant_of(pid, stack.procs[n].pid)), None)
    if victim is None:
        raise DrillFailed(f"task pid {pid} (host {host}) runs under neither Celery worker")
    row.check(host.endswith(victim[-1]), f"the task's hostname {host} is its worker's ({victim})")
    killed = stack.kill(victim)
    killed_at = time.monotonic()
    row.note(f"kill -9 of {victim} ({host}): process group + {len(killed) - 1} processes under it, "
             f"task pid {pid} among them: {pid in killed}")

    final = stack.wait("the retried task to finish", lambda: (
        (t := stack.ti("cluster_worker_kill", run_id)) and t["state"] in ("success", "failed") and t),
        timeout=240, interval=0.5)
    row.runs = f"{1 if final['state'] == 'success' else 0}/1"
    row.check(final["state"] == "success" and final["try_number"] == 2,
              f"Airflow retried the task and try 2 succeeded ({final['state']}, try {final['try_number']})")
    row.check(final["hostname"] not in (None, host), f"try 2 ran on the other worker ({final['hostname']})")
    row.note(f"try 2 on {final['hostname']}, success {time.monotonic() - killed_at:.0f} s after the kill "
             "(task heartbeat timeout 10 s)")
    logs = stack.task_logs("cluster_worker_kill", run_id, "batch")
    row.check(f"Re-attaching to batch {created.id}" in logs, "try 2 re-attached to the batch of try 1 (task log)")
    row.check(proxy.creates == 1, f"no second create was sent ({proxy.creates} POST /v1/batches through the proxy)")
    batches, orphans = _orphans(server.url)
    row.batches = f"{len(batches)} / 1"
    row.orphans = str(orphans)
    row.check(len(batches) == 1 and batches[0].status == "completed",
              f"the server holds one batch, completed ({_statuses(batches)})")
    result = stack.xcom("cluster_worker_kill", run_id)
    row.check(bool(result) and result.get("batch_id") == created.id, "the task's result is that batch")


# ---------------------------------------------------------------------------------------------
# 5. a job over many batches, its state on S3, its steps on both workers
# ---------------------------------------------------------------------------------------------


def _workers_up(stack: CeleryStack) -> list[str]:
    """Start again every Celery worker an earlier row killed (a replacement machine: an empty disk)."""
    restarted = []
    for n in (1, 2):
        if f"worker-{n}" in stack.down:
            stack.start_worker(n)
            stack.down.discard(f"worker-{n}")
            restarted.append(f"worker-{n}")
    return restarted


def job_on_s3(row: Row, stack: CeleryStack, *, server: BatchServer, proxy: HoldProxy, moto: Moto,
              requests: int) -> None:
    from batch_ops.jobs import JobState

    restarted = _workers_up(stack)
    if restarted:
        row.note(f"restarted {', '.join(restarted)} (killed by an earlier row) with an empty disk")
    run_id = stack.trigger_dag("cluster_job")
    prefix = f"job/{run_id}"
    s3 = moto.client()
    state_key = f"{prefix}/out.jsonl.state.json"

    def stored() -> JobState:
        return JobState.model_validate_json(s3.get_object(Bucket=moto.bucket, Key=state_key)["Body"].read())

    # A create in the middle of the job (after the first wave) reaches the server, its answer held back.
    wait_for("a create of the job's second wave to reach the server (its answer held back)", proxy.held.is_set,
             timeout=300, alive=stack.dead)
    before = stored()
    submitting = [p for p in before.parts if p.status == "submitting"]
    row.check(len(submitting) == 1 and bool(submitting[0].key),
              f"the part being created is 'submitting' with its key, in the state on S3 "
              f"({[(p.name, p.status) for p in before.parts]})")
    ti = stack.wait("the job step's pid and host", lambda: (
        (t := stack.ti("cluster_job", run_id, task_id="job")) and t["pid"] and t["hostname"] and t), timeout=30)
    pid, host = int(ti["pid"]), ti["hostname"]
    victim = next((n for n in ("worker-1", "worker-2") if descendant_of(pid, stack.procs[n].pid)), None)
    if victim is None:
        raise DrillFailed(f"the job step's pid {pid} (host {host}) runs under neither Celery worker")
    stack.kill(victim)
    killed_at = time.monotonic()
    part = submitting[0].name if submitting else "?"
    row.note(f"kill -9 of {victim} ({host}) during create #{proxy.creates} (part {part}); it is started again "
             "with an empty disk")
    _workers_up(stack)

    states = stack.wait("the job DAG run to finish", lambda: (
        (s := stack.run_state("cluster_job", run_id)) in ("success", "failed") and s), timeout=480, interval=1.0)
    tis = {t["task_id"]: t for t in stack.tis("cluster_job", run_id)}
    for t in tis.values():
        if t["state"] == "failed":
            error = _first_error(stack.task_logs("cluster_job", run_id, t["task_id"]))
            row.note(f"{t['task_id']} failed on {t['hostname']}: {error or '(no error line in its log)'}")
    job_ti = tis.get("job", {})
    row.runs = f"{1 if states == 'success' else 0}/1"
    row.check(states == "success" and job_ti.get("try_number") == 2,
              f"Airflow retried the job task and try 2 finished the job ({states}, try {job_ti.get('try_number')})")
    row.note(f"try 2 on {job_ti.get('hostname')}, the job done {time.monotonic() - killed_at:.0f} s after the kill")

    state = stored()
    output = s3.get_object(Bucket=moto.bucket, Key=f"{prefix}/out.jsonl")["Body"].read().decode().splitlines()
    ids = [json.loads(line)["custom_id"] for line in output]
    row.check(ids == [f"cj-{i}" for i in range(requests)], f"the merged output has {len(ids)} lines, one per "
              f"request in input order (of {requests})")
    result = stack.xcom("cluster_job", run_id, task_id="job") or {}
    row.check(result.get("succeeded", 0) + result.get("failed", 0) == requests,
              f"the summary accounts for every request ({result.get('succeeded')} succeeded, "
              f"{result.get('failed')} failed)")

    batches, orphans = _orphans(server.url)
    row.batches = f"{len(batches)} / {len(state.parts)}"
    row.orphans = str(orphans)
    row.check(sorted(b.id for b in batches) == sorted(state.batch_ids),
              f"the server holds exactly the job's batches ({len(batches)} vs {len(state.batch_ids)} in the state)")
    row.check(len(batches) == len(state.parts) == proxy.creates,
              f"one create and one batch per part: {proxy.creates} creates, {len(batches)} batches, "
              f"{len(state.parts)} parts")
    row.check(orphans == 0, f"no batch left running ({_statuses(batches)})")
    rounds = max(p.round for p in state.parts) + 1
    row.note(f"{requests} requests in {len(state.parts)} parts over {rounds} rounds; "
             f"{result.get('resubmitted')} requests resubmitted")

    log = stack.task_logs("cluster_job", run_id, "job")
    row.check(f"part {part}: re-attached to batch" in log and f"part {part}: created batch" not in log,
              f"try 2 re-attached part {part} to the batch whose create was cut off (task log)")
    hosts = collections.Counter(re.findall(r"job step on host ([\w.-]+)", log))
    writer = tis.get("write_input", {}).get("hostname")
    row.note(f"input written on {writer}; job steps on " + ", ".join(f"{h} x{c}" for h, c in sorted(hosts.items())))
    row.check(len(hosts) >= 2, f"the job's steps ran on both workers ({dict(hosts)})")
    row.check(CANARY not in log, "no job log holds the API key")

"""End to end under real Airflow: scheduler, LocalExecutor, triggerer, API server, SQLite.

``airflow standalone`` runs all components in its own process group (stopped by this test, by
that group's id). The test unpauses the DAGs of tests/airflow/e2e_dags, watches task states in
the metadata database, and checks the servers:

* ``bo_e2e``: the task is ``deferred`` while its batch runs, then ``success`` with the result
  dict in XCom;
* ``bo_e2e_kill``: marked failed through the REST API while deferred; the triggerer calls the
  trigger's ``on_kill`` (Airflow >= 3.3), which cancels the batch;
* ``bo_e2e_retry_failures`` / ``bo_e2e_retry_expired``: the scheduler retries the task, each try
  in a new task process, after request failures (``fail_on_request_failures``) or an expired
  batch; the requests paid for (successes over all batches on the server) equal the requests
  needed, and the result lists the chain's batches;
* the same kill and retries on Anthropic's and Gemini's batch APIs (``bo_e2e_<provider>_*``: neutral
  requests, a connection per provider and scenario), judged by the provider's own SDK
  (``anthropic``, ``google-genai``; ``openai`` for a profile): the cancel reached the batch, each
  custom id was paid exactly once over every batch the SDK lists, and a downstream task gets the
  chain's results joined by custom id;
* the example pair ``dags/eval_assets.py``: ``eval_submit`` creates a batch and ends; its webhook
  reaches ``batch-ops webhooks serve``; the asset watcher in the triggerer turns it into one
  asset event; the scheduler runs ``eval_process``, which scores that batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops.airflow.provider import CONN_TYPE
from batch_ops.server.background import free_port

E2E_DAGS = Path(__file__).resolve().parent / "e2e_dags"
EXAMPLE_ASSET_DAGS = Path(__file__).resolve().parents[2] / "dags" / "eval_assets.py"
#: The other batch APIs run through the same scenarios, and the model each connection names. ``make test``
#: runs the new wires (Anthropic, Gemini); ``BATCH_OPS_E2E_PROVIDERS=anthropic,gemini,groq`` adds an
#: OpenAI-shaped profile (three more DAGs: +30 s, and on a loaded 2-core machine one more chance for the
#: one API server worker to time out).
MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "groq": "llama-3.3-70b-versatile"}
PROVIDER_MODELS = {p: MODELS[p] for p in os.environ.get("BATCH_OPS_E2E_PROVIDERS", "anthropic,gemini").split(",") if p}
STARTUP_TIMEOUT = 240.0
RUN_TIMEOUT = 180.0


@contextlib.contextmanager
def standalone(home: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = (home / "standalone.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("airflow")), "standalone"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        yield proc
    finally:
        # Only our own process group: standalone and the components it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        # A component can outlive standalone (a scheduler stuck in its shutdown did): the group
        # goes, whatever is left of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # A task process runs in a session of its own (out of the group) and outlives its supervisor:
        # found by the AIRFLOW_HOME only this run uses, and stopped by its id.
        for pid in _processes_of(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


def _processes_of(home: Path) -> list[int]:
    """The ids of the live processes whose environment names ``home`` as AIRFLOW_HOME."""
    import psutil

    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and process.environ().get("AIRFLOW_HOME") == str(home):
                found.append(process.pid)
    return found


class Airflow:
    def __init__(self, home: Path, proc: subprocess.Popen[bytes], api: str) -> None:
        self.home, self.proc = home, proc
        self.http = httpx.Client(base_url=api, timeout=20)
        self._token = False

    def _authorize(self) -> None:
        """A bearer token for the REST API: Airflow < 3.2 wants one even with all users admins
        (``/auth/token`` hands it out without credentials then)."""
        if not self._token:
            answer = self.http.get("/auth/token")
            if answer.status_code in (200, 201):
                self.http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
                self._token = True

    def patch(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """A PATCH as a user makes it in the UI, again while the API server answers 500 (its "Database
        error" is SQLite busy with the scheduler's writes: a dozen DAGs at once) or not in time."""
        for attempt in range(20):
            try:
                answer = self.http.patch(path, json=body)
            except httpx.TimeoutException:  # the one worker busy; setting a state again is harmless
                if attempt == 19:
                    raise
                continue
            if answer.status_code < 500:
                break
            time.sleep(0.5)
        return answer

    def mark_failed(self, dag_id: str, run_id: str) -> None:
        """A user marks the deferred task failed."""
        answer = self.patch(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/batch", {"new_state": "failed"})
        assert answer.status_code == 200, answer.text

    def log_tail(self, lines: int = 60) -> str:
        text = (self.home / "standalone.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"airflow standalone exited while waiting for {what}:\n{self.log_tail()}"
            with contextlib.suppress(httpx.HTTPError, sqlite3.Error, KeyError, ValueError):  # still starting
                self._authorize()
                value = check()
                if value:
                    return value
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {what}:\n{self.log_tail()}")

    def grep(self, text: str) -> bool:
        """True when ``text`` is in standalone's output or in any log Airflow wrote."""
        logs = [self.home / "standalone.log", *(self.home / "logs").rglob("*")]
        return any(text in p.read_text(errors="replace") for p in logs if p.is_file())

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.home / "airflow.db", timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def ti(self, dag_id: str) -> tuple[str, str | None] | None:
        rows = self.query("select run_id, state from task_instance where dag_id = ? and task_id = 'batch'", dag_id)
        return rows[0] if rows else None


def _money_evidence(home: Path, dag_id: str, batches: list[Any]) -> str:
    """What each try said it did, and every batch the server holds: why a retry paid what it paid."""
    said = []
    for log in sorted((home / "logs" / f"dag_id={dag_id}").rglob("attempt=*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if re.search(r"Created batch|Attached|concurrent|carrying|ended|Marking|heartbeat|zombie", line):
                said.append(f"{log.name}: {line[:300]}")
    held = [f"{b.id} created {b.created_at} {b.status} total {b.request_counts.total} "
            f"completed {b.request_counts.completed} key {(b.metadata or {}).get('batch_ops_idempotency_key')}"
            for b in batches]
    return "\n".join(["what the tries logged:", *said, "batches on the server:", *held])


def _provider_connections(provider: str, urls: dict[str, str], ledger: Path) -> dict[str, str]:
    """``AIRFLOW_CONN_BO_<PROVIDER>_<SCENARIO>``: a connection per scenario to its own server, differing from
    the other providers' only in provider, model, the host's API root and the key ledger: set, as
    docs/providers.md asks, where batches carry no owner record (Anthropic: it also keeps the key; Gemini: it
    records the deployment identities a task created under, for a retry after the identity race)."""
    from batch_ops.dialects import dialect_named

    extra: dict[str, str] = {"provider": provider, "model": PROVIDER_MODELS[provider]}
    if not dialect_named(provider).carries_metadata:
        extra["key_ledger"] = str(ledger)
    conns = {}
    for scenario, url in urls.items():
        host = str(url).removesuffix("/v1") + "/v1beta" if provider == "gemini" else str(url)
        conns[f"AIRFLOW_CONN_BO_{provider.upper()}_{scenario.upper()}"] = json.dumps(
            {"conn_type": CONN_TYPE, "host": host, "password": f"{provider}-e2e-key", "extra": extra})
    return conns


def _money_evidence_of(home: Path, dag_id: str, batches: list[tuple[str, str]]) -> str:
    """:func:`_money_evidence` for any provider: the tries' words, and the batches its SDK lists."""
    return _money_evidence(home, dag_id, []) + "".join(f"\n{b} {status}" for b, status in batches)


def test_deferred_then_success_and_kill_cancels(make_server, receiver, webhook_secret: str, tmp_path: Path,
                                                oracle, wire_oracle) -> None:
    home = tmp_path / "airflow_home"
    home.mkdir()
    dags = tmp_path / "dags"
    dags.mkdir()
    for source in (*E2E_DAGS.glob("*.py"), EXAMPLE_ASSET_DAGS):
        (dags / source.name).write_text(source.read_text())
    with make_server(concurrency=1, request_latency=0.5) as url, \
            make_server(concurrency=1, request_latency=1.0) as kill_url, \
            make_server(fail_requests=0.3, seed=4, request_latency=0.01) as failing_url, \
            make_server(concurrency=1, request_latency=0.25, expire_after=1.2) as expiring_url, \
            make_server(request_latency=0.05, webhook_urls=[receiver.hook_url],
                        webhook_secret=webhook_secret) as events_url, contextlib.ExitStack() as servers:
        # The other batch APIs: per provider a server per scenario, with the same faults as OpenAI's.
        provider_urls = {provider: {
            "kill": str(servers.enter_context(make_server(concurrency=1, request_latency=1.0))),
            "failures": str(servers.enter_context(make_server(fail_requests=0.3, seed=4, request_latency=0.01))),
            "expiring": str(servers.enter_context(make_server(concurrency=1, request_latency=0.25,
                                                              expire_after=1.2))),
        } for provider in PROVIDER_MODELS}
        # Picked once every server above holds its port: a free port picked earlier can go to one of them.
        port = free_port()
        api = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # SQLite's busy timeout 60 s, not 5: with sixteen DAGs at once a write waited longer, and the API
            # server then failed a task it meant to retry ("database is locked" in ti_update_state).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=60",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            # A task's calls to the API server wait 60 s, not 5: on a loaded machine a task's start timed out
            # and the task failed before it ran (httpx.ReadTimeout in the supervisor; its retry then got 409).
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            # An asset's watcher starts when its file is parsed again after its DAG is unpaused.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW_CONN_OPENAI_BATCH_KILL": json.dumps(
                {"conn_type": CONN_TYPE, "host": str(kill_url), "password": "sk-e2e"}),
            "AIRFLOW_CONN_OPENAI_BATCH_FAILURES": json.dumps(
                {"conn_type": CONN_TYPE, "host": str(failing_url), "password": "sk-e2e"}),
            "AIRFLOW_CONN_OPENAI_BATCH_EXPIRING": json.dumps(
                {"conn_type": CONN_TYPE, "host": str(expiring_url), "password": "sk-e2e"}),
            "AIRFLOW_CONN_OPENAI_BATCH_EVENTS": json.dumps(
                {"conn_type": CONN_TYPE, "host": str(events_url), "password": "sk-e2e",
                 "extra": {"events_url": receiver.events_url}}),
            "BATCH_OPS_EVAL_CONN_ID": "openai_batch_events",
            "BATCH_OPS_EVAL_STORAGE": str(tmp_path / "eval"),
        }
        for provider, urls in provider_urls.items():
            env.update(_provider_connections(provider, urls, tmp_path / "ledger"))
        with standalone(home, env) as proc:
            af = Airflow(home, proc, api)
            dag_ids = ("bo_e2e", "bo_e2e_kill", "bo_e2e_retry_failures", "bo_e2e_retry_expired",
                       *(f"bo_e2e_{p}_{s}" for p in PROVIDER_MODELS for s in ("kill", "retry_failures",
                                                                                "retry_expired")))
            af.wait("the API server and the DAGs", lambda: af.http.get(
                "/api/v2/dags", params={"tags": "batch_ops-e2e"}).json()["total_entries"] == len(dag_ids),
                STARTUP_TIMEOUT)
            # The processing DAG now, the submitting one once its asset watcher follows the receiver (it
            # starts when the file is parsed again: min_file_process_interval), so the batch ends watched.
            af.wait("the example asset DAGs", lambda: af.http.get(
                "/api/v2/dags", params={"tags": "assets"}).json()["total_entries"] == 2, RUN_TIMEOUT)
            assert af.patch("/api/v2/dags/eval_process", {"is_paused": False}).status_code == 200
            # The default connection is saved the way a user does it in the UI: in the metadata
            # database, so tasks fetch it through the API server (the others come from the environment).
            answer = af.http.post("/api/v2/connections", json={
                "connection_id": "openai_batch_default", "conn_type": CONN_TYPE, "host": str(url),
                "password": "sk-e2e"})
            assert answer.status_code == 201, answer.text
            for dag_id in dag_ids:
                assert af.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False}).status_code == 200

            # The task waits in the triggerer, not in a worker slot...
            run_id, _ = af.wait("bo_e2e deferred", lambda: (ti := af.ti("bo_e2e")) and ti[1] == "deferred" and ti,
                                RUN_TIMEOUT)

            # ...meanwhile a user kills the other one once its trigger runs.
            kill_run, _ = af.wait("bo_e2e_kill deferred",
                                  lambda: (ti := af.ti("bo_e2e_kill")) and ti[1] == "deferred" and ti, RUN_TIMEOUT)
            trigger_logs = home / "logs" / "dag_id=bo_e2e_kill"
            polled = re.compile(r"Batch \S+: ")  # the trigger's line after its first poll
            af.wait("the kill DAG's trigger polling", lambda: any(
                polled.search(p.read_text(errors="replace")) for p in trigger_logs.rglob("*.trigger.*")),
                RUN_TIMEOUT)
            af.mark_failed("bo_e2e_kill", kill_run)
            (killed,) = oracle(kill_url).batches.list().data
            af.wait("the killed task's batch cancelled",
                    lambda: oracle(kill_url).batches.retrieve(killed.id).status in ("cancelling", "cancelled"), 60)

            # The same kill on every other provider: deferred, polled, failed by a user, cancelled on the wire.
            for provider, urls in provider_urls.items():
                dag_id = f"bo_e2e_{provider}_kill"
                run, _ = af.wait(f"{dag_id} deferred", lambda dag_id=dag_id: (ti := af.ti(dag_id)) and
                                 ti[1] == "deferred" and ti, RUN_TIMEOUT)
                logs = home / "logs" / f"dag_id={dag_id}"
                af.wait(f"the {dag_id} trigger polling", lambda logs=logs: any(
                    polled.search(p.read_text(errors="replace")) for p in logs.rglob("*.trigger.*")), RUN_TIMEOUT)
                af.mark_failed(dag_id, run)
                af.wait(f"the {provider} batch cancelled", lambda provider=provider, url=urls["kill"]: (
                    len(listed := wire_oracle.batches(provider, url)) == 1
                    and wire_oracle.cancel_seen(provider, listed[0][1])), 60)

            af.wait("the asset watcher following the receiver", lambda: af.grep("Watching batch events from"),
                    RUN_TIMEOUT)
            assert af.patch("/api/v2/dags/eval_submit", {"is_paused": False}).status_code == 200

            af.wait("bo_e2e success", lambda: af.ti("bo_e2e") == (run_id, "success"), RUN_TIMEOUT)
            (value,) = af.query("select value from xcom where dag_id = 'bo_e2e' and key = 'return_value'")[0]
            result = json.loads(value)
            (held,) = oracle(url).batches.list().data
            assert result["batch_id"] == held.id and result["status"] == "completed"
            assert result["output_file_id"] == held.output_file_id

            # Retried by the scheduler after a rejected outcome: each try a new task process, each a
            # new attempt carrying only what had not succeeded. Paid (successes over every batch the
            # server holds) equals needed.
            for dag_id, server, needed in (("bo_e2e_retry_failures", failing_url, 20),
                                           ("bo_e2e_retry_expired", expiring_url, 12)):
                af.wait(f"{dag_id} success", lambda dag_id=dag_id: (ti := af.ti(dag_id)) and ti[1] == "success",
                        RUN_TIMEOUT)
                tries = af.query("select try_number from task_instance where dag_id = ? and task_id = 'batch'",
                                 dag_id)[0][0]
                (value,) = af.query("select value from xcom where dag_id = ? and key = 'return_value'", dag_id)[0]
                result = json.loads(value)
                # Oldest first: pages come newest first, and creation times have whole seconds.
                batches = sorted(reversed(oracle(server).batches.list(limit=100).data), key=lambda b: b.created_at)
                paid = sum(b.request_counts.completed for b in batches)
                assert tries >= 2, f"{dag_id}: the outcome called for at least one retry"
                assert paid == needed, (f"{dag_id}: paid for {paid} requests, needed {needed}\n"
                                        + _money_evidence(home, dag_id, batches))
                # One attempt per try, except a last try that finds every request already answered (an
                # attempt that expired just after its last answer) and so pays for nothing.
                assert 2 <= len(batches) <= tries and result["batch_ids"] == [b.id for b in batches]
                assert batches[0].request_counts.total == needed
                assert all(b.request_counts.total < needed for b in batches[1:]), "a retry carried a success again"
                assert result["chain_request_counts"]["completed"] == needed

            # The same retries on every other provider, judged by its own SDK: each custom id paid exactly once
            # over the chain's batches, and the chain's results joined by custom id (a task downstream).
            for provider, urls in provider_urls.items():
                for scenario, url, needed, tag in (("retry_failures", urls["failures"], 20, "rf"),
                                                   ("retry_expired", urls["expiring"], 12, "ex")):
                    dag_id = f"bo_e2e_{provider}_{scenario}"
                    af.wait(f"{dag_id} joined", lambda dag_id=dag_id: af.query(
                        "select state from task_instance where dag_id = ? and task_id = 'joined'", dag_id)
                        in ([("success",)], [("failed",)], [("upstream_failed",)]), RUN_TIMEOUT)
                    states = af.query("select task_id, state, try_number from task_instance where dag_id = ? "
                                      "order by task_id", dag_id)
                    batches = wire_oracle.batches(provider, url)
                    paid = wire_oracle.paid(provider, url)
                    evidence = _money_evidence_of(home, dag_id, batches)
                    assert [(t, st) for t, st, _ in states] == [("batch", "success"), ("joined", "success")], (
                        f"{dag_id}: {states}\n{evidence}")
                    tries = states[0][2]
                    ids = [f"{tag}-{i}" for i in range(needed)]
                    assert tries >= 2, f"{dag_id}: the outcome called for at least one retry\n{evidence}"
                    assert paid == dict.fromkeys(ids, 1), (
                        f"{dag_id}: paid for {sum(paid.values())} requests, needed {needed}: {paid}\n{evidence}")
                    (value,) = af.query("select value from xcom where dag_id = ? and task_id = 'batch' "
                                        "and key = 'return_value'", dag_id)[0]
                    result = json.loads(value)
                    assert 2 <= len(batches) <= tries and result["batch_ids"] == [b for b, _ in batches], evidence
                    (value,) = af.query("select value from xcom where dag_id = ? and task_id = 'joined' "
                                        "and key = 'return_value'", dag_id)[0]
                    answers = json.loads(value)
                    assert sorted(answers) == sorted(ids) and all(ok and text for ok, text in answers.values()), (
                        f"{dag_id}: results joined by custom id: {answers}")

            # Event-driven: eval_submit ended right after the create; the batch's webhook became one
            # asset event, and the scheduler ran eval_process on it, which scored that batch.
            af.wait("eval_process success", lambda: af.query(
                "select state from dag_run where dag_id = 'eval_process'") == [("success",)], RUN_TIMEOUT)
            assert af.query("select state from task_instance where dag_id = 'eval_submit' and task_id = 'submit'"
                            ) == [("success",)]
            (submitted,) = oracle(events_url).batches.list().data
            (value,) = af.query("select value from xcom where dag_id = 'eval_process' and key = 'return_value'")[0]
            (report,) = json.loads(value)
            assert report["batch_id"] == submitted.id and report["total"] == submitted.request_counts.total
            assert af.query("select count(*) from asset_event e join asset a on a.id = e.asset_id "
                            "where a.name = 'openai_batch_eval_assets'") == [(1,)]
            assert receiver.counts()["accepted"] == 1
            if af.query("select name from sqlite_master where name = 'asset_state_store'"):  # Airflow >= 3.3
                # The watcher keeps how far it got where a restarted triggerer finds it.
                (stored,) = af.query("select value from asset_state_store s join asset a on a.id = s.asset_id "
                                     "where a.name = 'openai_batch_eval_assets' and s.key = 'batch_ops.watermark'")
                (event,) = receiver.events()
                assert json.loads(stored[0])["recent"] == [event["id"]]

            # The API server turns each connection it serves into a URI, and warns when the type has a
            # "_" in it (95 times in one api-server log with the type's old name, openai_batch).
            logs = [home / "standalone.log", *(home / "logs").rglob("*.log")]
            noisy = [p.name for p in logs if p.is_file() and "RFC3986" in p.read_text(errors="replace")]
            assert not noisy, f"the RFC 3986 warning about the connection type appears in {noisy}"

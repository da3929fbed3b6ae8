"""DAGs the drills run: under ``airflow dags test`` (faults, bad input) and under a real scheduler
and triggerer (triggerer restart, worker kill, security).

Each uses its own connection id, which the drill points at its own local server through an
``AIRFLOW_CONN_*`` variable. Nothing here runs unless a drill triggers it: no schedule.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG

from batch_ops.airflow import OpenAIBatchOperator

CHAT = "/v1/chat/completions"
START = datetime(2025, 1, 1)


def _requests(tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{tag}-{i}", "body": {"model": "gpt-4o-mini",
                                             "messages": [{"role": "user", "content": f"{tag} question {i}"}]}}
        for i in range(n)
    ]


def _dag(dag_id: str, **kwargs: Any) -> DAG:
    return DAG(dag_id, schedule=None, start_date=START, catchup=False, tags=["batch_ops-drill"], **kwargs)


# Drill 1: ten deferrable batches side by side, against a server injecting faults.
with _dag("drill_faults"):
    for i in range(10):
        OpenAIBatchOperator(task_id=f"batch_{i}", endpoint=CHAT, requests=_requests(f"af{i}", 40),
                            conn_id="drill_faults", poll_interval=0.3, timeout=timedelta(minutes=5))


def _record_failure(context: Any) -> None:
    """Keep each bad-input task's exception, so the drill can check it names problem and fix."""
    exc = context.get("exception")
    with open(os.environ["BATCH_OPS_DRILL_FAILURES"], "a") as fh:
        fh.write(json.dumps({"task_id": context["ti"].task_id, "type": type(exc).__name__, "message": str(exc)}) + "\n")


# Drill 6: one task per bad input case, from the case file the drill wrote.
_CASES = os.environ.get("BATCH_OPS_DRILL_CASES")
if _CASES:
    with _dag("drill_bad_input", default_args={"retries": 0, "on_failure_callback": _record_failure}):
        for case in json.loads(open(_CASES).read()):
            OpenAIBatchOperator(task_id=case["task_id"], conn_id=case.get("conn_id", "drill_bad_input"),
                                poll_interval=0.5, **case["kwargs"])

# Drill 3: a long wait that must survive a triggerer crash...
with _dag("drill_triggerer_wait"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("tw", 45), conn_id="drill_slow",
                        poll_interval=1.0, timeout=timedelta(minutes=10))

# ...and a wait whose deadline must not be reset by it.
with _dag("drill_triggerer_deadline"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("td", 200), conn_id="drill_stuck",
                        poll_interval=1.0, retries=0,
                        timeout=timedelta(seconds=float(os.environ.get("BATCH_OPS_DRILL_DEADLINE_TIMEOUT", "75"))))

# Drill 4: the task process is killed while its create is in flight; Airflow retries the task.
with _dag("drill_worker_kill"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("wk", 20), conn_id="drill_hold",
                        poll_interval=0.5, retries=1, retry_delay=timedelta(seconds=1),
                        timeout=timedelta(minutes=5))

# Drill 7: one ordinary deferred batch whose traces (logs, XCom, trigger row) are searched for the key.
with _dag("drill_security"):
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("sec", 30), conn_id="drill_security",
                        poll_interval=0.5, metadata={"purpose": "security drill"}, timeout=timedelta(minutes=5))

# Drill 8 (money): each DAG is retried by the scheduler after the outcome that calls for it, every
# try in a new task process; the drill compares the requests paid for with the requests needed.
_MONEY = {"retries": 8, "retry_delay": timedelta(seconds=0)}
with _dag("drill_money_failed", default_args=_MONEY):  # token_limit_exceeded: nothing ran
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("mf", 40), conn_id="drill_money_failed",
                        poll_interval=0.3, timeout=timedelta(minutes=5))

with _dag("drill_money_expired", default_args=_MONEY):  # expired with part of the work done
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("me", 40), conn_id="drill_money_expired",
                        poll_interval=0.3, timeout=timedelta(minutes=5))

with _dag("drill_money_failures", default_args=_MONEY):  # completed with failed requests, and the policy says no
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("mr", 40), conn_id="drill_money_failures",
                        poll_interval=0.3, fail_on_request_failures=True, timeout=timedelta(minutes=5))

with _dag("drill_money_kill", default_args={"retries": 1, "retry_delay": timedelta(seconds=1)}):
    # Killed after its upload, while its create is held (and never delivered) by a proxy.
    OpenAIBatchOperator(task_id="batch", endpoint=CHAT, requests=_requests("mk", 40), conn_id="drill_money_kill",
                        poll_interval=0.3, timeout=timedelta(minutes=5))

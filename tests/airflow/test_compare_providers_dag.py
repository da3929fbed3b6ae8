"""The example DAG ``dags/compare_providers.py`` runs end to end (``airflow dags test``, deferred waits run
inline) on four providers at once: the same neutral requests, four connections that differ only in
provider, model and key, one local server speaking OpenAI's, Anthropic's and Gemini's batch APIs (and
OpenAI's as Groq, an OpenAI-shaped profile)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from tests.airflow.conftest import example_dags_env, migrate

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_compare_providers_dag_runs_the_same_requests_on_three_providers(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = example_dags_env(home, drop=("ANTHROPIC", "GEMINI", "GOOGLE"), BATCH_OPS_COMPARE_POLL_INTERVAL="0.2")
    migrate(env)
    with make_server(request_latency=0.05) as url:
        root = str(url).removesuffix("/v1")
        conns = {
            "BATCH_OPS_OPENAI": {"host": str(url), "password": "sk-openai-7731",
                                 "extra": {"provider": "openai", "model": "gpt-4o-mini"}},
            "BATCH_OPS_ANTHROPIC": {"host": str(url), "password": "sk-ant-7731",
                                    "extra": {"provider": "anthropic", "model": "claude-sonnet-4-5",
                                              "key_ledger": str(tmp_path / "ledger")}},
            "BATCH_OPS_GEMINI": {"host": root + "/v1beta", "password": "gemini-7731",
                                 "extra": {"provider": "gemini", "model": "gemini-2.5-flash"}},
            # An OpenAI-shaped profile too: the fourth connection is all it takes.
            "BATCH_OPS_GROQ": {"host": str(url), "password": "gsk-groq-7731",
                               "extra": {"provider": "groq", "model": "llama-3.3-70b-versatile"}},
        }
        env["BATCH_OPS_COMPARE_CONNS"] = ",".join(name.lower() for name in conns)
        for name, conn in conns.items():
            env[f"AIRFLOW_CONN_{name}"] = json.dumps({"conn_type": "openaibatch", **conn})
        run = subprocess.run([AIRFLOW, "dags", "test", "compare_providers"], env=env, capture_output=True, text=True,
                             timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "state=success" in log
    for conn in conns.values():
        assert str(conn["password"]) not in log
    with sqlite3.connect(home / "airflow.db") as db:
        (value,) = db.execute("select value from xcom where dag_id = 'compare_providers' and task_id = 'compare' "
                              "and key = 'return_value'").fetchone()
    summary = json.loads(value)
    ids = ["batch_ops_openai", "batch_ops_anthropic", "batch_ops_gemini", "batch_ops_groq"]
    assert sorted(summary["answers"]) == ["q-0", "q-1", "q-2"]
    for answers in summary["answers"].values():
        assert sorted(answers) == sorted(ids)
        assert all(isinstance(text, str) and text and not text.startswith("error") for text in answers.values())
    assert all(summary["tokens"][conn_id] > 0 for conn_id in ids), summary["tokens"]

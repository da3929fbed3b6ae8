"""The example DAG ``dags/nightly_eval.py`` runs end to end (``airflow dags test``) against the
local server, in its own AIRFLOW_HOME whose DAG folder is the repository's ``dags/``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from batch_ops.evals import SAMPLE_RUN, read_history
from tests.airflow.conftest import example_dags_env, migrate

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def test_nightly_eval_dag_runs_and_reports(make_server: Callable[..., AbstractContextManager[str]],
                                           tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = example_dags_env(home, BATCH_OPS_EVAL_DIR=str(tmp_path / "eval"), BATCH_OPS_EVAL_POLL_INTERVAL="0.2")
    migrate(env)
    with make_server(engine="replay", replay_files=(str(SAMPLE_RUN),), fail_requests=0.03, seed=5,
                     api_key="sk-dag-test-secret-7731") as url:
        env["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps(
            {"conn_type": "openaibatch", "host": url, "password": "sk-dag-test-secret-7731"})
        run = subprocess.run([AIRFLOW, "dags", "test", "nightly_eval"], env=env, capture_output=True, text=True,
                             timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "state=success" in log
    assert "sk-dag-test-secret-7731" not in log
    history = read_history(tmp_path / "eval" / "reports")
    assert len(history) == 1 and history[0]["pipeline"] == "airflow"
    assert 0.75 < history[0]["score"] < 0.95 and history[0]["batch_id"].startswith("batch_")
    assert (tmp_path / "eval" / "reports" / "trend.png").exists()


@pytest.mark.scenario  # ~20 s: `make drill`
def test_nightly_eval_dag_keeps_every_file_on_object_storage(
        make_server: Callable[..., AbstractContextManager[str]], tmp_path: Path) -> None:
    """BATCH_OPS_EVAL_STORAGE=s3://…: requests, downloads, reports and history on S3 (moto over loopback),
    nothing on the worker's disk, so tasks on workers that share no disk pass files to each other."""
    import fsspec
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    try:
        host, port = s3.get_host_and_port()
        aws = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        fs = fsspec.filesystem("s3", key="testing", secret="testing", skip_instance_cache=True,
                               client_kwargs={"endpoint_url": aws["AWS_ENDPOINT_URL"]})
        fs.mkdir("eval-bucket")
        home, cwd = tmp_path / "home", tmp_path / "cwd"
        cwd.mkdir()
        env = example_dags_env(home, drop=("AWS",), **aws, BATCH_OPS_EVAL_STORAGE="s3://eval-bucket/nightly",
                               BATCH_OPS_EVAL_POLL_INTERVAL="0.2")
        migrate(env)
        with make_server(engine="replay", replay_files=(str(SAMPLE_RUN),), seed=5,
                         api_key="sk-dag-test-secret-7731") as url:
            env["AIRFLOW_CONN_OPENAI_BATCH_DEFAULT"] = json.dumps(
                {"conn_type": "openaibatch", "host": url, "password": "sk-dag-test-secret-7731"})
            run = subprocess.run([AIRFLOW, "dags", "test", "nightly_eval"], env=env, cwd=cwd, capture_output=True,
                                 text=True, timeout=600)
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-4000:]
        fs.invalidate_cache()
        keys = fs.find("eval-bucket/nightly")
        assert any(k.endswith("/requests.jsonl") for k in keys) and any(k.endswith("/output.jsonl") for k in keys)
        assert "eval-bucket/nightly/reports/latest.md" in keys
        records = [k for k in keys if k.startswith("eval-bucket/nightly/reports/history/")]
        history = [json.loads(fs.cat(k)) for k in records]
        assert len(history) == 1 and history[0]["pipeline"] == "airflow"
        assert list(cwd.iterdir()) == [] and not (home / "eval_runs").exists()
    finally:
        s3.stop()

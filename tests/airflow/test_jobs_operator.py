"""OpenAIBatchJobOperator under dag.test(): deferred steps until every request is accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_job_operator_defers_until_the_job_is_done(make_server: Any, use_server: Any, run_dag: Any, af: Any,
                                                   oracle: Any, tmp_path: Path, api_key: str) -> None:
    src = af.write_requests(tmp_path / "in.jsonl", 150)
    out = tmp_path / "out.jsonl"
    with make_server(fail_requests=0.1, token_limit_failures=1, seed=8, api_key=api_key) as url:
        use_server(url)
        dr = run_dag("batch_ops_job", {"input_path": str(src), "output_path": str(out)})
        summary = af.xcom(dr, "job")
        on_server = [b.id for b in oracle(url).with_options(api_key=api_key).batches.list(limit=100)]
    assert af.state(dr, "job") == "success", summary
    assert summary["total"] == 150 and summary["succeeded"] + summary["failed"] == 150
    assert summary["batches"] == len(on_server) and summary["resubmitted"] > 0
    assert summary["output_path"] == str(out.resolve())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(150)]
    assert api_key not in json.dumps(summary)


def test_job_operator_keeps_the_job_on_object_storage(make_server: Any, use_server: Any, run_dag: Any, af: Any,
                                                      oracle: Any, tmp_path: Path, api_key: str, s3: Any,
                                                      monkeypatch: Any) -> None:
    """Input and output on S3: every deferred step reopens the job from S3 in a fresh local cache (as a
    step on another Celery worker would); nothing of the job is left on the worker's disk."""
    import shutil

    src = af.write_requests(tmp_path / "in.jsonl", 150)
    s3.put_file(str(src), "batch-ops-test/job/in.jsonl")
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    with make_server(fail_requests=0.1, seed=8, api_key=api_key) as url:
        use_server(url)
        dr = run_dag("batch_ops_job", {"input_path": "s3://batch-ops-test/job/in.jsonl",
                                       "output_path": "s3://batch-ops-test/job/out.jsonl"})
        summary = af.xcom(dr, "job")
        on_server = [b.id for b in oracle(url).with_options(api_key=api_key).batches.list(limit=100)]
    assert af.state(dr, "job") == "success", summary
    assert summary["succeeded"] + summary["failed"] == 150 and summary["batches"] == len(on_server)
    assert summary["state_path"] == "s3://batch-ops-test/job/out.jsonl.state.json"
    s3.invalidate_cache()
    lines = [json.loads(line) for line in s3.cat("batch-ops-test/job/out.jsonl").splitlines()]
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(150)]
    assert list(tmp_path.iterdir()) == []

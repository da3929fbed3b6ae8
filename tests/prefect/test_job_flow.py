"""run_batch_job: a many-batch job as a Prefect flow, against the local server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops.jobs import JobConfig
from batch_ops.jsonl import request_line, write_requests
from batch_ops.prefect import OpenAIBatchCredentials, run_batch_job


def test_job_flow_accounts_for_every_request_and_resumes(make_server: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_requests([request_line(f"q{i}", {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
                                 endpoint="/v1/chat/completions") for i in range(120)], src)
    out = tmp_path / "out.jsonl"
    with make_server(fail_requests=0.1, token_limit_failures=1, seed=4, api_key="sk-job-flow-secret-55") as url:
        creds = OpenAIBatchCredentials(api_key="sk-job-flow-secret-55", base_url=url)
        config = JobConfig(endpoint="/v1/chat/completions", max_lines=30, max_concurrent=2, token_limit_backoff=0.2)
        summary = asyncio.run(run_batch_job(str(src), str(out), config, credentials=creds, poll_interval=0.05))
        again = asyncio.run(run_batch_job(str(src), str(out), {"endpoint": "/v1/chat/completions", "max_lines": 30},
                                          credentials=creds, poll_interval=0.05))
        on_server = list(openai.OpenAI(api_key="sk-job-flow-secret-55", base_url=url).batches.list(limit=100))
    assert summary["succeeded"] + summary["failed"] == summary["total"] == 120
    assert summary["batches"] == len(on_server) and summary["resubmitted"] > 0
    assert again["batches"] == summary["batches"]  # resumed from the state file: nothing resubmitted
    assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == [f"q{i}" for i in range(120)]
    assert "sk-job-flow-secret-55" not in json.dumps(summary)


def test_job_flow_rejects_a_bad_file_before_any_upload(make_server: Any, tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n{oops\n')
    with make_server() as url:
        creds = OpenAIBatchCredentials(api_key="k", base_url=url)
        with pytest.raises(Exception, match="line 2: invalid_json_line"):
            asyncio.run(run_batch_job(str(src), str(tmp_path / "o.jsonl"), {"endpoint": "/v1/chat/completions"},
                                      credentials=creds))
        assert openai.OpenAI(api_key="k", base_url=url).files.list().data == []


def test_job_flow_keeps_the_job_in_a_storage_block(make_server: Any, tmp_path: Path, s3: Any,
                                                   s3_endpoint: str) -> None:
    """Paths inside a RemoteFileSystem block on S3: the state, parts and results go there, and a second
    run (as on another worker of a pool whose workers share no disk) resumes from it alone."""
    from prefect.filesystems import RemoteFileSystem

    src = tmp_path / "in.jsonl"
    write_requests([request_line(f"q{i}", {"model": "m", "messages": [{"role": "user", "content": str(i)}]},
                                 endpoint="/v1/chat/completions") for i in range(60)], src)
    s3.put_file(str(src), "batch-ops-test/pool/in.jsonl")
    block = RemoteFileSystem(basepath="s3://batch-ops-test/pool", settings={
        "key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}})
    with make_server(fail_requests=0.1, seed=4) as url:
        creds = OpenAIBatchCredentials(api_key="local", base_url=url)
        config = JobConfig(endpoint="/v1/chat/completions", max_lines=20, max_concurrent=2)
        summary = asyncio.run(run_batch_job("in.jsonl", "out/results.jsonl", config, credentials=creds,
                                            poll_interval=0.05, storage=block))
        again = asyncio.run(run_batch_job("in.jsonl", "out/results.jsonl", config, credentials=creds,
                                          poll_interval=0.05, storage=block))
        on_server = list(openai.OpenAI(api_key="local", base_url=url).batches.list(limit=100))
    assert summary["succeeded"] + summary["failed"] == 60 and summary["batches"] == len(on_server)
    assert again["batches"] == summary["batches"]
    assert summary["output_path"] == "s3://batch-ops-test/pool/out/results.jsonl"
    s3.invalidate_cache()
    assert s3.exists("batch-ops-test/pool/out/results.jsonl.state.json")
    lines = s3.cat("batch-ops-test/pool/out/results.jsonl").splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == [f"q{i}" for i in range(60)]

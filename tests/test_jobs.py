"""Jobs over many batches against the local server: every request accounted for, none twice,
no batch created twice — through request failures, token-limit refusals, expiry and crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import openai
import pytest

from batch_ops import AsyncBatchClient, BatchClient
from batch_ops.jobs import BatchJob
from batch_ops.jobs.state import load_state, state_path_for
from batch_ops.jsonl import request_line, write_requests

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]


def make_input(path: Path, n: int) -> Path:
    write_requests(
        (request_line(f"q{i:05d}", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]},
                      endpoint=CHAT) for i in range(n)),
        path,
    )
    return path


def server_batches(url: str) -> list[openai.types.Batch]:
    return list(openai.OpenAI(api_key="local", base_url=url, max_retries=5).batches.list(limit=100))


def successes_per_custom_id(url: str, tmp: Path) -> Counter[str]:
    """Count successful answers per custom_id across every output file the server holds."""
    sdk = openai.OpenAI(api_key="local", base_url=url, max_retries=5)
    seen: Counter[str] = Counter()
    for b in server_batches(url):
        if b.output_file_id:
            for raw in sdk.files.content(b.output_file_id).text.splitlines():
                line = json.loads(raw)
                if line["response"] and line["response"]["status_code"] == 200:
                    seen[line["custom_id"]] += 1
    return seen


def read_output(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_job_accounts_for_every_request_through_failures_and_token_limits(
    make_server: MakeServer, tmp_path: Path
) -> None:
    src = make_input(tmp_path / "in.jsonl", 2400)
    with make_server(fail_requests=0.05, token_limit_failures=1, seed=11) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_lines=400,
                            max_concurrent=3, max_rounds=3, token_limit_backoff=0.2)
        assert [p.requests for p in job.state.parts] == [400] * 6
        summary = job.run(client, poll_interval=0.1)
        on_server = server_batches(url)
        answered = successes_per_custom_id(url, tmp_path)
    assert summary.succeeded + summary.failed == summary.total == 2400
    assert summary.token_limit_resubmits == 1
    assert summary.resubmitted > 0 and summary.rounds >= 2
    assert summary.duplicates == 0
    # No batch created twice: the server holds exactly the batches the job recorded.
    assert sorted(b.id for b in on_server) == sorted(job.state.batch_ids)
    assert summary.batches == len(on_server)
    # No request answered twice, and every success in the merged output was answered once.
    assert max(answered.values()) == 1
    out = read_output(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in out] == [f"q{i:05d}" for i in range(2400)]
    ok = [line for line in out if line["response"] and line["response"]["status_code"] == 200]  # type: ignore[index]
    assert len(ok) == summary.succeeded == len(answered)
    assert {line["batch_ops"]["batch_id"] for line in out} <= set(job.state.batch_ids)  # type: ignore[index]
    assert any(line["batch_ops"]["round"] > 0 for line in out)  # type: ignore[index]
    assert summary.usage["tokens"]["input"] > 0


def test_without_rounds_failures_are_final_and_counted(make_server: MakeServer, tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 300)
    with make_server(fail_requests=0.2, seed=5) as url, BatchClient(api_key="local", base_url=url) as client:
        summary = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_rounds=0).run(
            client, poll_interval=0.1)
    assert summary.failed > 0 and summary.succeeded + summary.failed == 300
    assert summary.batches == 1 and summary.resubmitted == 0
    failed = [line for line in read_output(tmp_path / "out.jsonl") if line["error"] or
              line["response"]["status_code"] >= 400]  # type: ignore[index]
    assert len(failed) == summary.failed


def test_expired_batches_give_back_their_work_and_only_the_rest_reruns(
    make_server: MakeServer, tmp_path: Path
) -> None:
    src = make_input(tmp_path / "in.jsonl", 400)
    with make_server(request_latency=0.02, concurrency=4, expire_after=1.0) as url, \
            BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_rounds=8)
        summary = job.run(client, poll_interval=0.1)
        answered = successes_per_custom_id(url, tmp_path)
    assert job.state.parts[0].outcome == "expired"
    assert 0 < job.state.parts[0].succeeded < 400  # partial work recovered, not rerun
    assert summary.succeeded == 400 and summary.failed == 0
    assert summary.resubmitted < 400 + 400  # only remainders went again
    assert max(answered.values()) == 1 and len(answered) == 400


def test_crash_between_create_and_record_reattaches(make_server: MakeServer, tmp_path: Path) -> None:
    """Kill the job right after its batch was created but before the id reached the state file."""
    src = make_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        job = BatchJob.open(src, output_path=out, endpoint=CHAT)
        plan = job.advance_plan()
        call = plan.send(None)
        assert call.target == "submit_spec"
        assert load_state(state_path_for(out)).parts[0].status == "submitting"  # type: ignore[union-attr]
        client.submit_spec(**call.kwargs)  # the batch exists on the server ...
        plan.close()                  # ... and the process dies before recording it.
        resumed = BatchJob.open(src, output_path=out, endpoint=CHAT)
        events: list[str] = []
        summary = resumed.run(client, poll_interval=0.05, on_step=lambda p: events.extend(p.events))
        (batch,) = server_batches(url)
    assert summary.batches == 1 and summary.succeeded == 50
    # The step says what it did: the re-attachment first, then the harvest; no "created".
    assert events[0].startswith(f"part r0-001: re-attached to batch {batch.id}")
    assert not any("created" in e for e in events) and f"batch {batch.id} completed: 50 succeeded" in events[-1]


def test_killed_job_process_resumes_without_duplicate_batches(make_server: MakeServer, tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 1200)
    out = tmp_path / "out.jsonl"
    script = (
        "import sys\n"
        "from batch_ops import BatchClient\n"
        "from batch_ops.jobs import BatchJob\n"
        "job = BatchJob.open(sys.argv[1], output_path=sys.argv[2], endpoint='/v1/chat/completions', max_lines=100,"
        " max_concurrent=2)\n"
        "job.run(BatchClient(api_key='local', base_url=sys.argv[3]), poll_interval=0.05)\n"
    )
    with make_server(request_latency=0.002, fail_requests=0.05, seed=2) as url:
        proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(out), url])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = load_state(state_path_for(out)) if state_path_for(out).exists() else None
                if state is not None and sum(p.status == "harvested" for p in state.parts) >= 3:
                    break
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        before = load_state(state_path_for(out))
        assert before is not None and not before.done
        with BatchClient(api_key="local", base_url=url) as client:
            job = BatchJob.open(src, output_path=out, endpoint=CHAT, max_lines=100, max_concurrent=2)
            summary = job.run(client, poll_interval=0.05)
        on_server = server_batches(url)
        answered = successes_per_custom_id(url, tmp_path)
    assert sorted(b.id for b in on_server) == sorted(job.state.batch_ids)
    assert summary.succeeded + summary.failed == 1200
    assert max(answered.values()) == 1


async def test_async_job(make_server: MakeServer, tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 200)
    with make_server(fail_requests=0.1, seed=9) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_lines=50)
            summary = await job.arun(client, poll_interval=0.05)
    assert summary.succeeded + summary.failed == 200 and summary.batches >= 4


def test_resuming_with_another_input_is_refused(tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 3)
    BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT)
    other = make_input(tmp_path / "other.jsonl", 3)
    with pytest.raises(Exception, match="belongs to a job"):
        BatchJob.open(other, output_path=tmp_path / "out.jsonl", endpoint=CHAT)


def test_cost_estimate_from_a_price_table(make_server: MakeServer, tmp_path: Path) -> None:
    src = make_input(tmp_path / "in.jsonl", 20)
    prices = {"gpt-4o-mini": {"input": 0.075, "cached_input": 0.0375, "output": 0.30}}
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        summary = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint=CHAT, prices=prices).run(
            client, poll_interval=0.05)
    tokens = summary.usage["tokens"]
    expected = (tokens["input"] - tokens["cached"]) * 0.075 / 1e6 + tokens["output"] * 0.30 / 1e6
    assert summary.usage["cost_usd"] == pytest.approx(expected, abs=1e-6)

"""Repair rounds in a job (``JobConfig.repair_rounds``): after a part's batch completed, only the requests whose
answers are invalid are resubmitted, as the next attempt of the part's chain, through the one repair path
(``batch_ops._repair.repair_plan``); the merged output holds each request's latest answer.

The local server spoils a fifth of the structured answers (``invalid_share=0.2``, mixed kinds), once each, so a
round repairs them all. Output dominates the price and each request's output limit is exactly the valid answer's
15 tokens: a part's actual cost is its upper bound, so a budget just above the parts' bounds leaves no room for a
repair round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from batch_ops import AsyncBatchClient, BatchClient
from batch_ops.errors import ConfigurationError
from batch_ops.jobs import BatchJob, JobConfig
from batch_ops.models import ResultLine
from batch_ops.structured import ResponseSchema, invalid_answers, parse_line

from .conftest import S3_BUCKET

MakeServer = Callable[..., AbstractContextManager[Any]]

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 0.001, "output": 100}}  # USD per 1M tokens: the answers are what costs
ANSWER_TOKENS = 15  # tokens of the server's valid answer {"name": "", "population": 0, "tags": []}
CITY = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}
SPOILED = {"invalid_share": 0.2, "invalid_kind": "mixed", "seed": 11}  # seed 11: both parts get invalid answers


def requests(path: Path, n: int = 20) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT,
                                        "body": {"model": MODEL, "max_tokens": ANSWER_TOKENS,
                                                 "messages": [{"role": "user", "content": f"City {i}?"}]}}) + "\n"
                            for i in range(n)))
    return path


def open_job(tmp_path: Path, **options: Any) -> BatchJob:
    return BatchJob.open(tmp_path / "in.jsonl", output_path=tmp_path / "out.jsonl", endpoint=CHAT, max_lines=10,
                         max_concurrent=2, response_schema=CITY, prices=PRICES, **options)


def calls(url: Any) -> dict[str, int]:
    """The server's calls by route (uploads: ``POST /v1/files``; batches: ``POST /v1/batches``)."""
    counted: dict[str, int] = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    return counted


def ids_in(sdk: openai.OpenAI, file_id: str, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    path = tmp_path / name
    path.write_bytes(sdk.files.content(file_id).content)
    return path, [json.loads(raw)["custom_id"] for raw in path.read_text().splitlines() if raw.strip()]


def test_each_part_repairs_exactly_its_invalid_answers_and_the_output_is_typed(
        make_server: MakeServer, tmp_path: Path) -> None:
    requests(tmp_path / "in.jsonl")
    schema = ResponseSchema.of(CITY)
    with make_server(**SPOILED) as url, BatchClient(api_key="local", base_url=url) as client:
        job = open_job(tmp_path, repair_rounds=1)
        summary = job.run(client, poll_interval=0.05)
        counted = calls(url)
        sdk = openai.OpenAI(api_key="local", base_url=str(url))
        invalid_total = 0
        for part in job.state.parts:
            (record,) = part.repairs
            main, repair = sdk.batches.retrieve(part.batch_id or ""), sdk.batches.retrieve(record.batch_id or "")
            output, _ = ids_in(sdk, main.output_file_id or "", tmp_path, f"{part.name}-out.jsonl")
            invalid = invalid_answers([output], schema)
            _, carried = ids_in(sdk, repair.input_file_id, tmp_path, f"{part.name}-repair-in.jsonl")
            # Paid == needed: the part's repair batch carries exactly its invalid requests, each once.
            assert invalid and sorted(carried) == sorted(invalid), (part.name, carried, invalid)
            assert (repair.metadata or {}).get("batch_ops_part") == part.name
            assert record.carried == repair.request_counts.total == len(invalid) == sum(record.invalid.values())
            assert record.repaired == len(invalid) and record.still_invalid == 0 and record.refused is None
            invalid_total += len(invalid)
    parts = len(job.state.parts)
    assert parts == 2
    assert counted.get("POST /v1/files") == counted.get("POST /v1/batches") == 2 * parts, counted
    assert summary.batches == 2 * parts and summary.succeeded == 20 and summary.failed == 0
    repairs = summary.repairs
    assert repairs is not None
    assert (repairs["invalid"], repairs["repaired"], repairs["still_invalid"], repairs["refused"],
            repairs["batches"]) == (invalid_total, invalid_total, 0, 0, parts)
    # The bill covers the repair rounds: 20 answers plus one per repaired request, output priced.
    per_answer = ANSWER_TOKENS * PRICES[MODEL]["output"] / 1e6
    assert summary.cost_usd is not None and summary.cost_usd == pytest.approx((20 + invalid_total) * per_answer,
                                                                              rel=1e-3)
    lines = [ResultLine.model_validate_json(raw) for raw in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line.custom_id for line in lines] == [f"q-{i}" for i in range(20)]
    assert all(parse_line(line, schema).parsed is not None for line in lines)  # every answer typed
    provenance = [json.loads(raw)["batch_ops"] for raw in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sum(p.get("repair") == 1 for p in provenance) == invalid_total


def test_a_worker_killed_after_submitting_a_repair_round_is_attached_to_not_paid_again(
        make_server: MakeServer, tmp_path: Path) -> None:
    requests(tmp_path / "in.jsonl")
    with make_server(**SPOILED) as url, BatchClient(api_key="local", base_url=url) as client:
        job = open_job(tmp_path, repair_rounds=1)
        repaired: list[Any] = []
        while not repaired:  # steps, until the one that submits a repair round: it dies after the submit
            plan = job.advance_plan()
            value: Any = None
            try:
                while True:
                    call = plan.send(value)
                    target: Any = client
                    for attr in call.target.split("."):
                        target = getattr(target, attr)
                    value = target(**call.kwargs)
                    if call.target == "repair":
                        repaired.append(value)  # the round's batch exists on the server ...
                        break
            except StopIteration:
                pass
            finally:
                plan.close()  # ... and the worker dies before recording it.
        (made,) = repaired
        assert made.submission is not None and made.submission.created
        stored = BatchJob.open(tmp_path / "in.jsonl", output_path=tmp_path / "out.jsonl", endpoint=CHAT)
        (hanging,) = [p for p in stored.state.parts if p.key == made.submission.chain.key]
        assert hanging.status == "repairing" and hanging.repairs[-1].batch_id is None  # a round, not its batch
        events: list[str] = []
        resumed = open_job(tmp_path, repair_rounds=1)  # another worker resumes the job
        summary = resumed.run(client, poll_interval=0.05, on_step=lambda step: events.extend(step.events))
        counted = calls(url)
    parts = len(resumed.state.parts)
    assert counted.get("POST /v1/batches") == counted.get("POST /v1/files") == 2 * parts, counted
    part = next(p for p in resumed.state.parts if p.name == hanging.name)
    assert part.repairs[-1].batch_id == made.submission.batch.id
    assert any(e.startswith(f"part {part.name}: Repair round 1:") and "attached to batch "
               f"{made.submission.batch.id}" in e for e in events), events
    assert summary.batches == 2 * parts and summary.repairs is not None and summary.repairs["batches"] == parts
    assert summary.repairs["still_invalid"] == 0 and summary.succeeded == 20
    schema = ResponseSchema.of(CITY)
    lines = [ResultLine.model_validate_json(raw) for raw in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)


def test_a_worker_killed_while_harvesting_a_repair_round_leaves_it_to_the_next_once(
        make_server: MakeServer, tmp_path: Path) -> None:
    """Killed after writing a finished round's results, before its state said so (the state on disk is put back
    as it was before that step): the next worker harvests the round again, the bill counts it once, and nothing
    more is submitted."""
    requests(tmp_path / "in.jsonl")
    state = tmp_path / "out.jsonl.state.json"
    with make_server(**SPOILED) as url, BatchClient(api_key="local", base_url=url) as client:
        job = open_job(tmp_path, repair_rounds=1)
        while True:
            before = state.read_bytes()
            job.advance(client)
            if any(r.outcome for p in job.state.parts for r in p.repairs):
                break
            time.sleep(0.05)
        state.write_bytes(before)  # the step's save never happened; the round's results file is there
        assert list((tmp_path / "out.jsonl.work" / "results").glob("*.repair1.jsonl"))
        summary = open_job(tmp_path, repair_rounds=1).run(client, poll_interval=0.05)
        counted = calls(url)
    assert counted.get("POST /v1/batches") == summary.batches == 4, counted
    repairs = summary.repairs
    assert repairs is not None and repairs["repaired"] == repairs["invalid"] > 0 and repairs["still_invalid"] == 0
    per_answer = ANSWER_TOKENS * PRICES[MODEL]["output"] / 1e6
    assert summary.cost_usd == pytest.approx((20 + repairs["invalid"]) * per_answer, rel=1e-3)  # counted once
    schema = ResponseSchema.of(CITY)
    lines = [ResultLine.model_validate_json(raw) for raw in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)


def test_a_budget_that_fits_the_parts_but_not_the_repair_refuses_the_round_and_the_job_completes(
        make_server: MakeServer, tmp_path: Path) -> None:
    requests(tmp_path / "in.jsonl")
    # Each part's upper bound is its 10 answers (+ a few input tokens): $0.0150038; both fit, with no room left
    # for a repair round (one more answer is $0.0015).
    budget = 0.0301
    schema = ResponseSchema.of(CITY)
    with make_server(**SPOILED) as url, BatchClient(api_key="local", base_url=url) as client:
        job = open_job(tmp_path, repair_rounds=1, max_cost_usd=budget)
        summary = job.run(client, poll_interval=0.05)
        counted = calls(url)
    parts = len(job.state.parts)
    assert counted.get("POST /v1/files") == counted.get("POST /v1/batches") == parts, counted  # 0 repair uploads
    assert summary.budget_stop is None and summary.succeeded == 20 and summary.failed == 0
    assert summary.batches == parts and summary.cost_usd is not None and summary.cost_usd <= budget
    repairs = summary.repairs
    assert repairs is not None and repairs["refused"] == parts and repairs["batches"] == 0
    assert repairs["repaired"] == 0 and repairs["still_invalid"] == repairs["invalid"] > 0
    for records in repairs["parts"].values():
        (record,) = records
        assert record["batch_id"] is None and record["upper_usd"] > 0
        message = record["refused"]
        assert message.startswith(f"the job's max_cost_usd ${budget:.6f} less the other parts' spend $")
        assert "Budget: attempt 1 would cost up to $" in message and "Nothing was uploaded" in message
    # What was paid for is delivered: the valid answers typed, the invalid ones as they are.
    lines = [parse_line(ResultLine.model_validate_json(raw), schema)
             for raw in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 20 and sum(line.invalid is not None for line in lines) == repairs["invalid"]


def test_repair_rounds_without_a_schema_are_refused_before_anything_is_uploaded(
        make_server: MakeServer, tmp_path: Path) -> None:
    requests(tmp_path / "in.jsonl")
    with make_server(**SPOILED) as url:
        with pytest.raises(ConfigurationError) as refused:
            BatchJob.open(tmp_path / "in.jsonl", output_path=tmp_path / "out.jsonl", endpoint=CHAT, repair_rounds=1)
        counted = calls(url)
    message = str(refused.value)
    assert "repair_rounds" in message and "needs a response_schema" in message
    assert "fix: give the response_schema" in message
    assert not counted.get("POST /v1/files") and not counted.get("POST /v1/batches")
    assert not (tmp_path / "out.jsonl.state.json").exists()


async def test_an_async_job_repairs_with_the_fault_in_each_repaired_request(
        make_server: MakeServer, tmp_path: Path) -> None:
    requests(tmp_path / "in.jsonl")
    with make_server(**SPOILED) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            job = open_job(tmp_path, repair_rounds=2, repair_feedback=True)
            summary = await job.arun(client, poll_interval=0.05)
        sdk = openai.OpenAI(api_key="local", base_url=str(url))
        carried = []
        for part in job.state.parts:
            (record,) = part.repairs  # every answer valid after the first round: no second one
            repair = sdk.batches.retrieve(record.batch_id or "")
            path, _ = ids_in(sdk, repair.input_file_id, tmp_path, f"{part.name}-repair-in.jsonl")
            carried += [json.loads(raw) for raw in path.read_text().splitlines()]
    assert carried and summary.repairs is not None and summary.repairs["repaired"] == len(carried)
    for request in carried:  # the answer's fault, as a new user turn after the question
        messages = request["body"]["messages"]
        assert len(messages) > 1 and messages[0]["content"].startswith("City ") and messages[-1]["role"] == "user"
    assert summary.repairs["still_invalid"] == 0 and summary.succeeded == 20


def test_the_job_command_runs_repair_rounds_and_refuses_them_without_a_schema(
        make_server: MakeServer, tmp_path: Path) -> None:
    key = "sk-jobs-repair-cli-0123456789"
    schema, prices = tmp_path / "city.json", tmp_path / "prices.json"
    schema.write_text(json.dumps(CITY))
    prices.write_text(json.dumps(PRICES))
    src = requests(tmp_path / "in.jsonl")
    with make_server(api_key=key, **SPOILED) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCH_OPS_"))}
        env.update(NO_COLOR="1", COLUMNS="300", PYTHONWARNINGS="ignore", OPENAI_API_KEY=key, OPENAI_BASE_URL=str(url))

        def job(out: str, *more: str | Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "batch_ops.cli", "job", str(src), "--endpoint", CHAT,
                                   "--output", str(tmp_path / out), "--max-lines", "10", "--prices", str(prices),
                                   "--poll-interval", "0.05", "--repair-rounds", "1", *map(str, more)],
                                  env=env, capture_output=True, text=True, timeout=60, check=False)

        refused = job("refused.jsonl")
        assert not calls(url).get("POST /v1/files")  # refused before anything was uploaded
        done = job("out.jsonl", "--response-schema", schema, "--repair-feedback", "--json")
        counted = calls(url)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "needs a response_schema" in refused.stderr and "fix: give the response_schema" in refused.stderr
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    repairs = summary["repairs"]
    assert repairs["batches"] == 2 and repairs["repaired"] == repairs["invalid"] > 0 and repairs["still_invalid"] == 0
    assert counted.get("POST /v1/batches") == summary["batches"] == 4


def test_a_config_with_a_schema_survives_its_own_dump(tmp_path: Path) -> None:
    """The Airflow jobs operator keeps ``JobConfig.of(...).model_dump()`` and opens the job with it; the CLI passes
    a ``JobConfig``: the schema must come back as it was, not wrapped as the root of a new one."""
    requests(tmp_path / "in.jsonl")
    config = JobConfig.of(endpoint=CHAT, response_schema=CITY, repair_rounds=1)
    for again in (config, config.model_dump(), json.loads(config.model_dump_json())):
        assert JobConfig.of(again).response_schema == config.response_schema
    job = BatchJob.open(tmp_path / "in.jsonl", output_path=tmp_path / "out.jsonl", config=config.model_dump())
    assert job.state.response_schema == config.response_schema and job.state.repair_rounds == 1


def test_on_s3_a_worker_that_harvested_a_part_merges_the_repair_another_worker_applied(
        s3: Any, make_server: MakeServer, tmp_path: Path) -> None:
    """Two workers with their own caches step one job on S3: A harvests the parts (and submits their rounds), B
    applies the rounds, A merges. A round's results are a new file, so A's cache holds no stale copy of them."""
    s3.put_file(str(requests(tmp_path / "in.jsonl")), f"{S3_BUCKET}/repair/in.jsonl")
    base = f"s3://{S3_BUCKET}/repair"

    def worker() -> BatchJob:
        return BatchJob.open(f"{base}/in.jsonl", output_path=f"{base}/out.jsonl", endpoint=CHAT, max_lines=10,
                             max_concurrent=2, response_schema=CITY, prices=PRICES, repair_rounds=1)

    with make_server(**SPOILED) as url, BatchClient(api_key="local", base_url=url) as client:
        a, b = worker(), worker()
        assert a.work_dir != b.work_dir
        a.advance(client)  # submits both parts
        while not all(p.status == "repairing" and p.repair_batch for p in a.state.parts):
            time.sleep(0.05)
            a.advance(client)  # harvests them into A's cache, and submits their repair rounds
        while not b.advance(client).done:  # B applies the rounds
            time.sleep(0.05)
        summary = a.finish()
    assert summary.repairs is not None and summary.repairs["batches"] == 2 and summary.repairs["still_invalid"] == 0
    schema = ResponseSchema.of(CITY)
    lines = [ResultLine.model_validate_json(raw) for raw in s3.cat(f"{S3_BUCKET}/repair/out.jsonl").splitlines()]
    assert len(lines) == 20 and all(parse_line(line, schema).parsed is not None for line in lines)

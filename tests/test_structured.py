"""Structured outputs through our client, on each provider's dialect of the local server.

A pydantic model becomes each provider's native form (OpenAI ``response_format`` json_schema strict,
Anthropic a forced tool, Gemini ``response_json_schema``); the server answers the smallest JSON that
follows it; results parse into the model (``line.parsed``) or say why not (``line.invalid``). With a
share of answers spoiled (``invalid_share``), one repair round resubmits exactly the invalid ones — as
the chain's next attempt, counted on the server — and the rest arrive typed. Official SDKs judge the
wire we add: the anthropic SDK reads our ``tool_use`` answer, google-genai our JSON text part, the
openai SDK parses our chat completion into the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from batch_ops import BatchClient, ClientSettings, InputValidationError, SubmitSpec
from batch_ops.server import ServerURL
from batch_ops.structured import schema_problems

MakeServer = Callable[..., AbstractContextManager[ServerURL]]


class City(BaseModel):
    name: str
    population: int
    tags: list[str]
    capital: bool | None = None


def _root(url: str) -> str:
    return str(url).removesuffix("/v1")


def neutral(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    """Provider-neutral chat requests: one list for every provider."""
    return [{"custom_id": f"{prefix}-{i}", "model": "gemini-2.5-flash", "max_tokens": 200,
             "messages": [{"role": "user", "content": f"Describe city {i} as JSON."}]} for i in range(n)]


def settings(provider: str, url: str, tmp_path: Path) -> ClientSettings:
    base = {"openai": str(url), "anthropic": str(url), "gemini": _root(url) + "/v1beta"}[provider]
    extra: dict[str, Any] = {"key_ledger": str(tmp_path / "ledger")} if provider == "anthropic" else {}
    if provider == "gemini":
        extra["model"] = "gemini-2.5-flash"
    return ClientSettings(api_key="sk-local", base_url=base, provider=provider, backoff_initial=0.05,
                          backoff_max=0.2, **extra)


def calls(url: str) -> dict[str, int]:
    return dict(httpx.get(_root(url) + "/healthz").json()["calls"])


def run(client: BatchClient, requests: Any, spec: SubmitSpec) -> Any:
    sub = client.submit_spec(requests, spec)
    done = client.batches.wait(sub.batch.id, poll_interval=0.05, timeout=30)
    return sub.chain.with_batch(done)


PROVIDERS = ("openai", "anthropic", "gemini")


@pytest.fixture(scope="module")
def spoiling() -> Iterator[ServerURL]:
    """A server that spoils a fifth of the structured answers, each kind in turn, once per request."""
    from batch_ops.server import serve_in_background

    with serve_in_background(invalid_share=0.2, invalid_kind="mixed", seed=7) as url:
        yield url


@pytest.mark.parametrize("provider", PROVIDERS)
def test_model_round_trips_to_typed_results(provider: str, server_url: ServerURL, tmp_path: Path) -> None:
    with BatchClient(settings=settings(provider, server_url, tmp_path)) as client:
        chain = run(client, neutral(5), SubmitSpec.of(idempotency_key=f"typed-{provider}-{tmp_path.name}",
                                                      response_schema=City))
        lines = list(client.results(chain, response_schema=City))
    assert sorted(line.custom_id for line in lines) == [f"q-{i}" for i in range(5)]
    for line in lines:
        assert line.invalid is None and isinstance(line.parsed, City), line
        assert line.parsed == City(name="", population=0, tags=[], capital=False)
        record = line.record(raw=False)
        assert record["parsed"] == {"name": "", "population": 0, "tags": [], "capital": False}
        assert record["invalid"] is None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_one_repair_round_pays_exactly_the_invalid(provider: str, spoiling: ServerURL, tmp_path: Path) -> None:
    key = f"repair-{provider}-{tmp_path.name}"
    spec = SubmitSpec.of(idempotency_key=key, response_schema=City)
    with BatchClient(settings=settings(provider, spoiling, tmp_path)) as client:
        chain = run(client, neutral(20, provider), spec)
        first = list(client.results(chain, response_schema=City))
        invalid = {line.custom_id: line.invalid.reason for line in first if line.invalid is not None}
        assert invalid, "the server spoiled none"
        assert all(line.parsed is not None for line in first if line.custom_id not in invalid)
        assert set(invalid.values()) <= {"bad_json", "schema", "refusal", "truncated"}

        repair = client.repair(neutral(20, provider), spec, chain, feedback=True)
        assert repair.count == len(invalid) and repair.submission is not None
        assert repair.submission.created and repair.submission.carried == len(invalid)
        repaired = client.batches.wait(repair.submission.batch.id, poll_interval=0.05, timeout=30)
        # Paid == needed: the repair batch the server ran holds exactly the invalid requests.
        assert repaired.request_counts.total == len(invalid)
        assert repair.submission.chain.batch_ids[0] == chain.batch_ids[0]  # the same chain, its next attempt
        final = list(client.results(repair.submission.chain.with_batch(repaired), response_schema=City))
        assert all(isinstance(line.parsed, City) and line.invalid is None for line in final)

        # A retried try (the same round again) attaches to the repair attempt: nothing is paid twice.
        again = client.repair(neutral(20, provider), spec, chain, feedback=True)
        assert again.submission is not None and not again.submission.created
        assert again.submission.batch.id == repaired.id
        # And a round after it finds nothing left to repair.
        latest = repair.submission.chain.with_batch(repaired)
        assert client.repair(neutral(20, provider), spec, latest, round=2).count == 0


def test_feedback_puts_the_fault_in_the_repaired_request(spoiling: ServerURL, tmp_path: Path) -> None:
    spec = SubmitSpec.of(idempotency_key=f"feedback-{tmp_path.name}", response_schema=City)
    with BatchClient(settings=settings("openai", spoiling, tmp_path)) as client:
        chain = run(client, neutral(20, "fb"), spec)
        repair = client.repair(neutral(20, "fb"), spec, chain, feedback=True)
        assert repair.submission is not None
        sent = tmp_path / "repair-input.jsonl"
        client.files.download(repair.submission.batch.input_file_id, sent)
        lines = [json.loads(x) for x in sent.read_text().splitlines()]
    assert len(lines) == repair.count
    for line in lines:
        last = line["body"]["messages"][-1]
        assert last["role"] == "user" and last["content"].startswith("Your previous answer was not valid (")
        assert line["body"]["response_format"]["json_schema"]["strict"] is True


def test_a_schema_the_provider_refuses_is_refused_before_upload(server_url: ServerURL, tmp_path: Path) -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"allOf": [{"type": "integer"}]}}}
    before = calls(server_url)
    with BatchClient(settings=settings("openai", server_url, tmp_path)) as client:
        with pytest.raises(InputValidationError) as caught:
            client.submit(neutral(2), response_schema=loose, idempotency_key=f"loose-{tmp_path.name}")
    text = str(caught.value)
    assert "additionalProperties: false" in text and "'a' is not in required" in text
    assert "at /properties/b: 'allOf' is not supported" in text
    after = calls(server_url)
    for route in ("POST /v1/files", "POST /v1/batches"):
        assert after.get(route, 0) == before.get(route, 0)
    # Anthropic's tools need an object at the root; Gemini's responseJsonSchema takes an array.
    assert "needs an object" in schema_problems({"type": "array"}, "anthropic")[0].message
    assert schema_problems({"type": "array", "items": {"type": "string"}}, "gemini") == []


def test_an_embeddings_batch_cannot_have_a_schema(server_url: ServerURL, tmp_path: Path) -> None:
    with BatchClient(settings=settings("openai", server_url, tmp_path)) as client:
        with pytest.raises(InputValidationError, match="gives no structured answers"):
            client.submit([{"custom_id": "e", "body": {"model": "e", "input": "x"}}], endpoint="/v1/embeddings",
                          response_schema=City)


def test_a_line_with_its_own_schema_keeps_it(server_url: ServerURL, tmp_path: Path) -> None:
    own = {"type": "json_schema", "json_schema": {"name": "own", "strict": True, "schema": {
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}}}
    line = {"custom_id": "own", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": own}}
    with BatchClient(settings=settings("openai", server_url, tmp_path)) as client:
        chain = run(client, [line, *[{"custom_id": f"n-{i}", "method": "POST", "url": "/v1/chat/completions",
                                      "body": {"model": "m", "messages": [{"role": "user", "content": "y"}]}}
                                     for i in range(2)]],
                    SubmitSpec.of(endpoint="/v1/chat/completions", response_schema=City))
        lines = {line.custom_id: line for line in client.results(chain, response_schema=City)}
    # The line with its own schema was answered by it ({"x": 0}), which City refuses: said, not hidden.
    assert lines["own"].invalid is not None and lines["own"].invalid.reason == "schema"
    assert isinstance(lines["n-0"].parsed, City)


# ---- the official SDKs judge the wire we add ------------------------------------------------------


def test_anthropic_sdk_reads_the_forced_tool_answer(server_url: ServerURL, tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    with BatchClient(settings=settings("anthropic", server_url, tmp_path)) as client:
        chain = run(client, neutral(3), SubmitSpec.of(response_schema=City))
    sdk = anthropic.Anthropic(api_key="sk-local", base_url=_root(server_url), max_retries=0)
    results = list(sdk.messages.batches.results(chain.latest.id))
    assert len(results) == 3
    for result in results:
        message = result.result.message
        assert message.stop_reason == "tool_use"
        (block,) = message.content
        assert isinstance(block, anthropic.types.ToolUseBlock) and block.name == "City"
        assert City.model_validate(block.input) == City(name="", population=0, tags=[], capital=False)


def test_genai_reads_the_json_text_part(server_url: ServerURL, tmp_path: Path) -> None:
    genai = pytest.importorskip("google.genai")
    with BatchClient(settings=settings("gemini", server_url, tmp_path)) as client:
        chain = run(client, neutral(2), SubmitSpec.of(response_schema=City))
        lines = list(client.results(chain))
    for line in lines:
        response = genai.types.GenerateContentResponse.model_validate(line.raw["response"])
        assert City.model_validate_json(response.text) == City(name="", population=0, tags=[], capital=False)
        assert response.candidates[0].finish_reason == genai.types.FinishReason.STOP


def test_openai_sdk_parses_the_answer_into_the_model(server_url: ServerURL, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    from openai.lib._parsing._completions import parse_chat_completion
    from openai.types.chat import ChatCompletion

    with BatchClient(settings=settings("openai", server_url, tmp_path)) as client:
        chain = run(client, neutral(2), SubmitSpec.of(response_schema=City))
        lines = list(client.results(chain))
    for line in lines:
        parsed = parse_chat_completion(response_format=City, input_tools=[],
                                       chat_completion=ChatCompletion.model_validate(line.body))
        assert parsed.choices[0].message.parsed == City(name="", population=0, tags=[], capital=False)


def test_native_forms_are_what_the_sdks_send() -> None:
    """The request side: each provider's native form as its own SDK writes (or types) it."""
    from anthropic.types import ToolChoiceToolParam, ToolParam
    from google.genai import types as genai_types
    from openai.lib._parsing._completions import type_to_response_format_param
    from pydantic import TypeAdapter

    from batch_ops.jsonl.neutral import translate
    from batch_ops.structured import ResponseSchema, with_schema

    schema = ResponseSchema.of(City)
    request = neutral(1)[0]
    openai_line = with_schema(translate(request, "openai").line, schema, form="openai", body_field="body")
    assert openai_line["body"]["response_format"] == type_to_response_format_param(City)

    params = with_schema(translate(request, "anthropic").line, schema, form="anthropic", body_field="params")["params"]
    (tool,) = params["tools"]
    assert set(tool) <= set(ToolParam.__annotations__) and set(params["tool_choice"]) <= set(
        ToolChoiceToolParam.__annotations__)
    TypeAdapter(ToolParam).validate_python(tool)
    TypeAdapter(ToolChoiceToolParam).validate_python(params["tool_choice"])
    assert tool["input_schema"] == schema.schema and params["tool_choice"] == {"type": "tool", "name": "City"}

    gemini = with_schema(translate(request, "gemini", id_field="key", body_field="request").line, schema,
                         form="gemini", body_field="request")["request"]
    config = genai_types.GenerationConfig.model_validate(gemini["generation_config"])  # extra fields: refused
    assert config.response_mime_type == "application/json" and config.response_json_schema == schema.schema


# ---- jobs over many batches ------------------------------------------------------------------------


def test_a_job_gives_every_part_the_schema_and_answers_parse(server_url: ServerURL, tmp_path: Path) -> None:
    from batch_ops.jobs import BatchJob
    from batch_ops.models import ResultLine
    from batch_ops.structured import ResponseSchema, parse_line

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"j-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}) + "\n"
                           for i in range(6)))
    with BatchClient(api_key="sk-local", base_url=str(server_url)) as client:
        job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint="/v1/chat/completions", max_lines=3,
                            response_schema=City)
        assert len(job.state.parts) == 2 and job.state.response_schema is not None
        summary = job.run(client, poll_interval=0.05)
    assert summary.succeeded == 6
    schema = ResponseSchema.from_json(job.state.response_schema)
    lines = [parse_line(ResultLine.model_validate_json(x), schema) for x in (tmp_path / "out.jsonl").read_text()
             .splitlines()]
    assert all(isinstance(line.parsed, City) for line in lines)  # the model is imported again by its path


def test_a_job_refuses_a_schema_the_provider_refuses_before_sharding(tmp_path: Path) -> None:
    from batch_ops.jobs import BatchJob

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": []}}) + "\n")
    with pytest.raises(InputValidationError, match="additionalProperties: false"):
        BatchJob.open(src, output_path=tmp_path / "out.jsonl", endpoint="/v1/chat/completions",
                      response_schema={"type": "object", "properties": {"a": {"type": "string"}}})
    assert not list(tmp_path.glob("out.jsonl*"))

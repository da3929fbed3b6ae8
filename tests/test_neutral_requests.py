"""Provider-neutral chat requests: translated for each provider's line shape, refused clearly when a provider
cannot take them, and run end to end (written once, submitted to OpenAI and to Azure OpenAI unchanged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, ChatRequest, ClientSettings
from batch_ops.errors import InputValidationError
from batch_ops.jsonl import LineShape, write_requests
from batch_ops.jsonl.neutral import is_neutral, translate

ANTHROPIC = LineShape(name="anthropic", id_pattern=r"[A-Za-z0-9_-]{1,64}", body_field="params", method_url=False,
                      one_model=False, example='{"custom_id": "req-1", "params": {...}}')
GEMINI = LineShape(name="gemini", id_field="key", body_field="request", method_url=False, model_in_body=False,
                   example='{"key": "req-1", "request": {...}}')
TOGETHER = LineShape(name="openai", id_pattern=r".{1,64}", method_url=False, example='{"custom_id": "r", "body": {}}')

EVAL = [
    ChatRequest(custom_id="q-1", model="m-1", system="Answer in one word.", max_tokens=8, temperature=0,
                stop=["\n"], messages=[{"role": "user", "content": "Capital of France?"}]),
    {"custom_id": "q-2", "model": "m-1", "max_tokens": 8,
     "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": [{"type": "text", "text": "3+3?"}]}]},
]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_openai_translation() -> None:
    assert translate(EVAL[0], "openai").line == {
        "custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m-1", "messages": [{"role": "system", "content": "Answer in one word."},
                                              {"role": "user", "content": "Capital of France?"}],
                 "max_tokens": 8, "temperature": 0, "stop": ["\n"]}}
    # Azure OpenAI spells the endpoint without /v1; lines of APIs without method/url carry none.
    assert translate(EVAL[0], "openai", endpoint="/chat/completions").line["url"] == "/chat/completions"
    assert set(translate(EVAL[0], "openai", method_url=False).line) == {"custom_id", "body"}


def test_anthropic_translation() -> None:
    assert translate(EVAL[1], "anthropic").line == {"custom_id": "q-2", "params": {
        "model": "m-1", "max_tokens": 8, "system": "Be terse.",
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                     {"role": "user", "content": "3+3?"}]}}
    assert translate(EVAL[0], "anthropic").line["params"]["stop_sequences"] == ["\n"]


def test_gemini_translation_names_the_batch_model() -> None:
    done = translate(EVAL[0], "gemini")
    assert done.model == "m-1"
    assert done.line == {"key": "q-1", "request": {
        "contents": [{"role": "user", "parts": [{"text": "Capital of France?"}]}],
        "system_instruction": {"parts": [{"text": "Answer in one word."}]},
        "generation_config": {"max_output_tokens": 8, "temperature": 0, "stop_sequences": ["\n"]}}}
    roles = [c["role"] for c in translate(EVAL[1], "gemini").line["request"]["contents"]]
    assert roles == ["user", "model", "user"]


@pytest.mark.parametrize(("request_", "vocabulary", "rule", "param"), [
    ({"custom_id": "a", "model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}, "openai",
     "unknown_role", "messages[0].role"),
    ({"custom_id": "a", "model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"},
                                                                     {"role": "system", "content": "late"}]},
     "anthropic", "unknown_role", "messages[1].role"),
    ({"custom_id": "a", "model": "m", "max_tokens": 1,
      "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, "gemini",
     "unsupported_content", "messages[0].content"),
    ({"custom_id": "a", "model": "m", "messages": [{"role": "user", "content": "x"}]}, "anthropic",
     "missing_max_tokens", "max_tokens"),
    ({"custom_id": "a", "messages": [{"role": "user", "content": "x"}]}, "openai", "missing_model", "model"),
    ({"custom_id": "a", "model": "m", "messages": []}, "openai", "missing_messages", "messages"),
    ({"custom_id": "a", "model": "m", "top_k": 3, "messages": [{"role": "user", "content": "x"}]}, "openai",
     "unknown_field", "top_k"),
    ({"custom_id": "a", "model": "m", "messages": [{"role": "user", "content": "x"}]}, "cohere", "untranslatable",
     "requests"),
])
def test_what_a_provider_cannot_take_is_named_with_its_fix(request_: dict[str, Any], vocabulary: str, rule: str,
                                                            param: str) -> None:
    with pytest.raises(InputValidationError) as info:
        translate(request_, vocabulary)
    problem = info.value.problems[0]
    assert (problem.rule, problem.param) == (rule, param)
    assert problem.fix


def test_openai_chat_endpoint_only() -> None:
    with pytest.raises(InputValidationError) as info:
        translate(EVAL[0], "openai", endpoint="/v1/embeddings")
    assert info.value.problems[0].rule == "unsupported_endpoint"


def test_native_lines_pass_through_unchanged(tmp_path: Path) -> None:
    native = {"custom_id": "n", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "m-1", "messages": [{"role": "developer", "content": "x"}], "seed": 7}}
    assert not is_neutral(native) and is_neutral(EVAL[1]) and is_neutral(EVAL[0])
    write_requests([EVAL[0], native], tmp_path / "mix.jsonl", endpoint="/v1/chat/completions")
    assert _lines(tmp_path / "mix.jsonl")[1] == native


@pytest.mark.parametrize(("shape", "first_keys"), [(ANTHROPIC, ["custom_id", "params"]), (GEMINI, ["key", "request"]),
                                                   (TOGETHER, ["custom_id", "body"])])
def test_one_eval_set_written_for_each_shape(tmp_path: Path, shape: LineShape, first_keys: list[str]) -> None:
    path = tmp_path / f"{shape.name}.jsonl"
    report = write_requests(EVAL, path, shape=shape, endpoint="/v1/chat/completions")
    lines = _lines(path)
    assert report.lines == 2 and [list(line) for line in lines] == [first_keys, first_keys]
    assert report.model == "m-1"  # Gemini: the batch's model, as the lines want it


def test_gemini_lines_must_want_one_model_and_errors_name_the_request(tmp_path: Path) -> None:
    other = {"custom_id": "q-3", "model": "m-2", "messages": [{"role": "user", "content": "x"}]}
    bad = {"custom_id": "q-4", "messages": [{"role": "tool", "content": "x"}]}
    with pytest.raises(InputValidationError) as info:
        write_requests([*EVAL, other, bad], tmp_path / "g.jsonl", shape=GEMINI)
    assert [(p.line, p.rule) for p in info.value.problems] == [(3, "model_mismatch"), (4, "unknown_role")]
    assert "'m-2' differs from 'm-1' on line 1" in info.value.problems[0].message
    assert not (tmp_path / "g.jsonl").exists()
    # A Gemini line may name no model (the batch's is used); an Anthropic line may name any.
    assert write_requests([EVAL[0], {**other, "model": None}], tmp_path / "g2.jsonl", shape=GEMINI).model == "m-1"
    write_requests([EVAL[0], {**other, "max_tokens": 4}], tmp_path / "a.jsonl", shape=ANTHROPIC)


@pytest.mark.parametrize("azure", [False, True])
def test_the_same_neutral_requests_run_end_to_end(server_url: str, tmp_path: Path, azure: bool) -> None:
    settings = ClientSettings(api_key="k", base_url=server_url, api_version="2024-10-21" if azure else None)
    # The eval set as a neutral JSONL file on disk: submitted unchanged, translated for the connection.
    path = tmp_path / "evals.jsonl"
    path.write_text("".join(json.dumps(r.as_dict() if isinstance(r, ChatRequest) else r) + "\n" for r in EVAL))
    with BatchClient(settings=settings) as client:
        endpoint = "/chat/completions" if azure else "/v1/chat/completions"
        for source in (path, EVAL):
            batch = client.submit(source, endpoint=endpoint)
            done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
            assert done.status == "completed" and done.request_counts.total == 2
            results = list(client.results(done))
            assert [(r.custom_id, r.ok) for r in results] == [("q-1", True), ("q-2", True)]
            sent = client.files.download(done.input_file_id, tmp_path / "sent.jsonl")
            line = _lines(Path(str(sent)))[0]
            assert line["url"] == endpoint and line["body"]["messages"][0]["role"] == "system"

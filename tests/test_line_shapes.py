"""Request lines checked by each provider's own rules (``LineShape``), and each provider's limits.

The checker, the writer, the shard, the retry filter, the results join and the jobs read the
dialect's line shape and limits: these tests hold them to it with the shapes of four batch APIs,
written here as data (the dialects that own them live elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, ClientSettings
from batch_ops.dialects import DIALECTS, Dialect, Limits
from batch_ops.errors import ConfigurationError, InputValidationError
from batch_ops.jobs import BatchJob, JobConfig
from batch_ops.jsonl import (
    OPENAI_LINES,
    LineShape,
    check_file,
    filter_requests,
    shard_file,
    validate_file,
    write_requests,
)
from batch_ops.results import join_results

ANTHROPIC = LineShape(name="anthropic", id_pattern=r"[A-Za-z0-9_-]{1,64}", body_field="params", method_url=False,
                      one_model=False,
                      example='{"custom_id": "req-1", "params": {"model": "claude-...", "max_tokens": 1024, '
                              '"messages": [...]}}')
GEMINI = LineShape(name="gemini", id_field="key", body_field="request", method_url=False, model_in_body=False,
                   example='{"key": "req-1", "request": {"contents": [{"parts": [{"text": "..."}]}]}}')
TOGETHER = LineShape(name="openai", id_pattern=r".{1,64}", method_url=False,
                     example='{"custom_id": "req-1", "body": {"model": "...", "messages": [...]}}')


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _rules(problems: list[Any]) -> list[tuple[int | None, str]]:
    return [(p.line, p.rule) for p in problems]


def _claude(cid: str, model: str = "claude-haiku-4-5", **params: Any) -> dict[str, Any]:
    return {"custom_id": cid, "params": {"model": model, "max_tokens": 16,
                                          "messages": [{"role": "user", "content": "hi"}], **params}}


# -- the checker -----------------------------------------------------------------------------------


def test_anthropic_lines_pass_by_anthropic_rules_and_fail_by_openai_rules(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", [_claude("q-1"), _claude("q_2", model="claude-sonnet-4-5")])
    report, problems = check_file(path, shape=ANTHROPIC)
    assert problems == [] and report.lines == 2
    # The same file by OpenAI's rules: no method, url or body.
    _, openai = check_file(path)
    assert {p.rule for p in openai} >= {"invalid_method", "url_mismatch", "missing_body"}


def test_anthropic_ids_are_checked_by_its_pattern_and_the_fix_shows_its_line(tmp_path: Path) -> None:
    long_id = "x" * 65
    path = _write(tmp_path / "a.jsonl", [_claude("has space"), _claude(long_id), _claude("ok"), _claude("ok"),
                                         {"custom_id": "m", "params": {"max_tokens": 1, "messages": []}},
                                         {"custom_id": "b", "body": {"model": "m"}}])
    _, problems = check_file(path, shape=ANTHROPIC)
    assert _rules(problems) == [(1, "invalid_custom_id"), (2, "invalid_custom_id"), (4, "duplicate_custom_id"),
                                (5, "missing_model"), (6, "missing_body")]
    assert "[A-Za-z0-9_-]{1,64}" in problems[0].message and problems[0].param == "custom_id"
    assert problems[3].param == "params.model"
    assert 'under "params"' in problems[4].fix and '"params": {"model": "claude-...' in problems[4].fix


def test_openai_fields_on_a_line_that_carries_none_are_named_once(tmp_path: Path) -> None:
    lines = [{**_claude(f"q{i}"), "method": "POST", "url": "/v1/messages"} for i in range(3)]
    _, problems = check_file(_write(tmp_path / "a.jsonl", lines), shape=ANTHROPIC)
    assert _rules(problems) == [(1, "unexpected_field")]
    assert "method" in problems[0].message and ANTHROPIC.example in problems[0].fix


def test_gemini_lines_are_named_by_key_and_carry_no_model(tmp_path: Path) -> None:
    good = [{"key": f"k{i}", "request": {"contents": [{"parts": [{"text": "hi"}]}]}} for i in range(3)]
    path = _write(tmp_path / "g.jsonl", good)
    report, problems = check_file(path, shape=GEMINI)
    assert problems == [] and report.lines == 3 and report.model is None
    bad = _write(tmp_path / "bad.jsonl", [*good, {"key": "k1", "request": {}}, {"custom_id": "c", "request": {}},
                                          {"key": "k9", "body": {}}])
    _, problems = check_file(bad, shape=GEMINI)
    assert _rules(problems) == [(4, "duplicate_custom_id"), (5, "missing_custom_id"), (6, "missing_body")]
    assert problems[0].message == "key 'k1' repeats line 2" and problems[1].param == "key"
    assert '"key"' in problems[1].fix and GEMINI.example in problems[1].fix
    assert problems[2].message == "request is missing"


def test_together_lines_have_a_body_and_one_model_but_no_method_or_url(tmp_path: Path) -> None:
    line = {"custom_id": "t1", "body": {"model": "meta-llama/Llama-3-8b", "messages": []}}
    other = {"custom_id": "t2", "body": {"model": "mistral", "messages": []}}
    path = _write(tmp_path / "t.jsonl", [line, other, {**line, "custom_id": "y" * 65}])
    report, problems = check_file(path, shape=TOGETHER, endpoint="/v1/chat/completions")
    assert _rules(problems) == [(2, "model_mismatch"), (3, "invalid_custom_id")]
    assert report.endpoint == "/v1/chat/completions" and report.model == "meta-llama/Llama-3-8b"


def test_an_empty_or_non_object_file_shows_the_providers_line(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("[]\n")
    _, problems = check_file(tmp_path / "e.jsonl", shape=GEMINI)
    assert problems[0].rule == "invalid_json_line" and GEMINI.example in problems[0].fix
    (tmp_path / "z.jsonl").write_text("")
    _, problems = check_file(tmp_path / "z.jsonl", shape=GEMINI)
    assert problems[0].rule == "empty_file" and GEMINI.example in problems[0].fix


def test_openai_shape_is_unchanged() -> None:
    assert OPENAI_LINES == LineShape()
    assert (OPENAI_LINES.id_field, OPENAI_LINES.body_field, OPENAI_LINES.method_url) == ("custom_id", "body", True)


# -- writer, shard, retry filter, join ---------------------------------------------------------------


def test_write_requests_adds_no_method_or_url_to_lines_that_carry_none(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    report = write_requests([_claude("q1"), _claude("q2", model="claude-opus-4-1")], path, shape=ANTHROPIC,
                            endpoint="/v1/messages")
    assert report.lines == 2
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first) == ["custom_id", "params"]
    with pytest.raises(InputValidationError) as info:
        write_requests([_claude("bad id")], tmp_path / "b.jsonl", shape=ANTHROPIC)
    assert info.value.problems[0].rule == "invalid_custom_id"
    assert not (tmp_path / "b.jsonl").exists()
    # OpenAI's lines still get their method and url.
    write_requests([{"custom_id": "o", "body": {"model": "m"}}], tmp_path / "o.jsonl", endpoint="/v1/responses")
    assert json.loads((tmp_path / "o.jsonl").read_text())["url"] == "/v1/responses"


def test_shard_splits_gemini_lines_and_finds_duplicate_keys_across_parts(tmp_path: Path) -> None:
    lines = [{"key": f"k{i}", "request": {"contents": []}} for i in range(5)]
    src = _write(tmp_path / "g.jsonl", lines)
    parts = shard_file(src, tmp_path / "parts", shape=GEMINI, max_lines=2)
    assert [len(p.read_text().splitlines()) for p in parts] == [2, 2, 1]
    dup = _write(tmp_path / "d.jsonl", [*lines, lines[0]])
    with pytest.raises(InputValidationError) as info:
        shard_file(dup, tmp_path / "dparts", shape=GEMINI, max_lines=2)
    assert _rules(info.value.problems) == [(6, "duplicate_custom_id")]
    with pytest.raises(InputValidationError):  # by OpenAI's rules these are not request lines
        shard_file(src, tmp_path / "oparts", max_lines=2)


def test_retry_filter_and_results_join_read_the_shapes_id_field(tmp_path: Path) -> None:
    src = _write(tmp_path / "g.jsonl", [{"key": k, "request": {"contents": []}} for k in "abc"])
    rest = tmp_path / "rest.jsonl"
    assert filter_requests(src, exclude={"a", "c"}, dest=rest, id_field="key") == 1
    assert json.loads(rest.read_text())["key"] == "b"
    # Results are written in the neutral shape (custom_id), whatever the provider: joined by the request's key.
    out = _write(tmp_path / "out.jsonl", [{"custom_id": "c", "response": {"status_code": 200, "body": 3}},
                                          {"custom_id": "a", "response": {"status_code": 200, "body": 1}}])
    joined = [(r.custom_id, r.body, r.error_code)
              for r in join_results(input_path=src, output_path=out, error_path=None, id_field="key")]
    assert joined == [("a", 1, None), ("b", None, "missing_result"), ("c", 3, None)]


# -- limits per dialect ------------------------------------------------------------------------------


class _Tiny(Dialect):
    """OpenAI's wire with a 3-request, 1 KB batch: what a provider's limits look like to the core."""

    name = "tiny-limits"
    limits = Limits(max_requests=3, max_file_bytes=1024)


class _Keyed(Dialect):
    name = "keyed-lines"
    line_shape = GEMINI


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Dialect:
    dialect = _Tiny()
    monkeypatch.setitem(DIALECTS, dialect.name, dialect)
    monkeypatch.setitem(DIALECTS, _Keyed.name, _Keyed())
    return dialect


def _openai_lines(n: int) -> list[dict[str, Any]]:
    return [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
            for i in range(n)]


def test_line_rules_carry_the_dialects_shape_and_limits(tiny: Dialect, tmp_path: Path) -> None:
    rules = tiny.line_rules("/v1/embeddings")
    assert (rules["max_lines"], rules["max_bytes"], rules["shape"]) == (3, 1024, OPENAI_LINES)
    path = _write(tmp_path / "r.jsonl", _openai_lines(4))
    with pytest.raises(InputValidationError) as info:
        validate_file(path, **rules)
    assert _rules(info.value.problems) == [(4, "too_many_tasks")]


def test_submit_refuses_a_file_over_the_providers_limit_before_any_upload(
    tiny: Dialect, server_url: str, tmp_path: Path
) -> None:
    path = _write(tmp_path / "r.jsonl", _openai_lines(4))
    with BatchClient(settings=ClientSettings(api_key="k", base_url=server_url, provider=tiny.name)) as client:
        assert client.dialect is tiny
        with pytest.raises(InputValidationError) as info:
            client.submit(path, endpoint="/v1/embeddings")
        assert _rules(info.value.problems) == [(4, "too_many_tasks")]
        with pytest.raises(InputValidationError):  # request dicts are written by the same rules
            client.submit(_openai_lines(4), endpoint="/v1/embeddings")
        assert client.files.list().data == []  # nothing was uploaded
        # Within the limit, the same client pays for it.
        assert client.submit(_openai_lines(3), endpoint="/v1/embeddings").id


def test_a_job_shards_by_its_providers_limits(tiny: Dialect, tmp_path: Path) -> None:
    cfg = JobConfig.of(endpoint="/v1/embeddings", provider=tiny.name)
    assert (cfg.max_lines, cfg.max_bytes) == (3, 1024)
    assert JobConfig.of(endpoint="/v1/embeddings").max_lines == 50_000  # OpenAI's, as before
    with pytest.raises(ConfigurationError, match="max_lines 4 is over"):
        JobConfig.of(endpoint="/v1/embeddings", provider=tiny.name, max_lines=4)
    src = _write(tmp_path / "in.jsonl", _openai_lines(7))
    job = BatchJob.open(src, output_path=tmp_path / "out.jsonl", config=cfg)
    assert [p.requests for p in job.state.parts] == [3, 3, 1]
    assert job.state.provider == tiny.name


def test_a_job_checks_keyed_lines_and_refuses_a_client_of_another_shape(
    tiny: Dialect, server_url: str, tmp_path: Path
) -> None:
    src = _write(tmp_path / "in.jsonl", [{"key": f"k{i}", "request": {"contents": []}} for i in range(3)])
    with pytest.raises(InputValidationError):  # OpenAI's rules: not request lines
        BatchJob.open(src, output_path=tmp_path / "o1.jsonl", endpoint="/v1/chat/completions")
    job = BatchJob.open(src, output_path=tmp_path / "o2.jsonl", endpoint="/v1/chat/completions",
                        provider=_Keyed.name)
    assert job.state.total == 3
    with BatchClient(settings=ClientSettings(api_key="k", base_url=server_url)) as client, \
            pytest.raises(ConfigurationError, match="sharded for"):
        job.advance(client)


def test_the_cli_checks_and_shards_by_the_providers_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_ops.cli import main

    monkeypatch.delenv("BATCH_OPS_PROVIDER", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    lines = _write(tmp_path / "t.jsonl", [{"custom_id": f"t{i}", "body": {"model": "m", "messages": []}}
                                          for i in range(5)])
    assert main(["validate", str(lines)]) == 1  # OpenAI's rules: no method, no url
    assert main(["--provider", "together", "validate", str(lines)]) == 0
    assert main(["--provider", "together", "shard", str(lines), "--out-dir", str(tmp_path / "p"),
                 "--max-lines", "2"]) == 0
    assert len(list((tmp_path / "p").glob("*.jsonl"))) == 3
    capsys.readouterr()

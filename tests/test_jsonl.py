"""Tests of batch_ops.jsonl: request file validation rules, reading and writing.

Sharding is in test_jsonl_shard.py, result files and the join in test_jsonl_results.py.
"""

from __future__ import annotations

import ast
import doctest
import json
from pathlib import Path
from typing import Any

import pytest

import batch_ops.jsonl as jsonl
from batch_ops.errors import InputValidationError, Problem
from batch_ops.jsonl import (
    FileReport,
    check_file,
    embedding_input_count,
    iter_request_lines,
    request_line,
    validate_file,
    write_requests,
)
from batch_ops.models import BATCH_ENDPOINTS, RequestLine

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def req(custom_id: str, *, url: Any = CHAT, model: Any = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": b}


def emb(custom_id: str, value: Any, *, model: str = "text-embedding-3-small") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMB, "body": {"model": model, "input": value}}


def put(path: Path, lines: list[Any], *, end: str = "\n", newline: str = "\n") -> Path:
    """Write lines (dicts are JSON-encoded, strings written as they are)."""
    text = newline.join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + end
    path.write_bytes(text.encode("utf-8"))
    return path


def found(problems: list[Problem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.rule) for p in problems]


def only(problems: list[Problem], rule: str) -> Problem:
    hits = [p for p in problems if p.rule == rule]
    assert len(hits) == 1, problems
    return hits[0]


# --- a valid file -----------------------------------------------------------------------
def test_valid_file_reports_lines_bytes_endpoint_and_model(tmp_path: Path) -> None:
    path = put(tmp_path / "ok.jsonl", [req(f"q-{i}") for i in range(4)])
    report, problems = check_file(path)
    assert problems == []
    assert report == FileReport(
        path=str(path),
        lines=4,
        bytes=path.stat().st_size,
        endpoint=CHAT,
        model="gpt-4o-mini",
        embedding_inputs=0,
        truncated=False,
    )
    assert validate_file(path, endpoint=CHAT) == report


def test_missing_final_newline_is_fine(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), req("b")], end="")
    report, problems = check_file(path)
    assert problems == [] and report.lines == 2


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    body = "\r\n".join(json.dumps(req(c)) for c in ("a", "b", "c")) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    report, problems = check_file(path)
    assert problems == []
    assert (report.lines, report.bytes, report.endpoint) == (3, path.stat().st_size, CHAT)


def test_path_may_be_str_or_pathlike(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a")])
    assert check_file(str(path))[0].path == str(path)
    assert check_file(path)[0].path == str(path)


# --- invalid_json_line ------------------------------------------------------------------
def test_broken_json_is_named_by_line(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), '{"custom_id": "b", "method": "POST",', req("c")])
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_json_line")]
    assert "column" in problems[0].message
    assert "single line" in problems[0].fix


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "array"), ('"hello"', "string"), ("null", "null"), ("42", "number"), ("true", "boolean")],
)
def test_json_that_is_not_an_object_is_invalid(tmp_path: Path, text: str, kind: str) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), text])
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_json_line")]
    assert f"JSON {kind}, not an object" in problems[0].message


def test_nan_and_infinity_are_not_json(tmp_path: Path) -> None:
    line = json.dumps(req("b")).replace('"hi"', "NaN")
    path = put(tmp_path / "r.jsonl", [req("a"), line, '{"custom_id": Infinity}'])
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_json_line"), (3, "invalid_json_line")]
    assert "NaN" in problems[0].message


def test_invalid_utf8_is_an_invalid_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = json.dumps(req("a")).encode()
    path.write_bytes(good + b"\n" + b'{"custom_id": "\xff"}\n')
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_json_line")]
    assert "UTF-8" in problems[0].message and "UTF-8" in problems[0].fix


def test_empty_line_in_the_middle_is_invalid(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), "", req("b"), "   \t"])
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_json_line"), (4, "invalid_json_line")]
    assert problems[0].message == "the line is empty"
    assert problems[1].message == "the line holds only whitespace"
    assert "delete the empty line" in problems[0].fix


def test_one_final_newline_is_fine_but_a_second_is_an_empty_line(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), req("b")], end="\n\n")
    report, problems = check_file(path)
    assert report.lines == 3
    assert found(problems) == [(3, "invalid_json_line")]


# --- custom_id --------------------------------------------------------------------------
def test_duplicate_custom_id_names_both_lines(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("q-1"), req("q-2"), req("q-7"), req("q-7"), req("q-1")])
    _, problems = check_file(path)
    assert found(problems) == [(4, "duplicate_custom_id"), (5, "duplicate_custom_id")]
    assert problems[0].fix == "make every custom_id unique; 'q-7' first appears on line 3"
    assert problems[1].message == "custom_id 'q-1' repeats line 1"


@pytest.mark.parametrize("value", [None, "", 7, ["a"]])
def test_missing_or_bad_custom_id(tmp_path: Path, value: Any) -> None:
    bad = req("x")
    if value is None:
        del bad["custom_id"]
    else:
        bad["custom_id"] = value
    path = put(tmp_path / "r.jsonl", [req("a"), bad])
    _, problems = check_file(path)
    assert found(problems) == [(2, "missing_custom_id")]
    assert "unique, non-empty string" in problems[0].fix


# --- method, body -----------------------------------------------------------------------
@pytest.mark.parametrize("method", [None, "GET", "post"])
def test_method_must_be_post(tmp_path: Path, method: Any) -> None:
    bad = req("b")
    if method is None:
        del bad["method"]
    else:
        bad["method"] = method
    path = put(tmp_path / "r.jsonl", [req("a"), bad])
    _, problems = check_file(path)
    assert found(problems) == [(2, "invalid_method")]
    assert '"method": "POST"' in problems[0].fix


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_body_must_be_an_object(tmp_path: Path, body: Any) -> None:
    bad = req("b")
    if body is None:
        del bad["body"]
    else:
        bad["body"] = body
    path = put(tmp_path / "r.jsonl", [req("a"), bad])
    _, problems = check_file(path)
    assert found(problems) == [(2, "missing_body")]
    assert '"body"' in problems[0].fix


def test_several_problems_on_one_line_are_all_reported(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), {"url": CHAT}])
    _, problems = check_file(path)
    assert found(problems) == [(2, "missing_custom_id"), (2, "invalid_method"), (2, "missing_body")]


# --- url / endpoint ---------------------------------------------------------------------
def test_url_mismatch_against_the_given_endpoint(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), req("b", url="/v1/responses")])
    _, problems = check_file(path, endpoint="/v1/responses")
    assert found(problems) == [(1, "url_mismatch")]
    assert "differs from the batch endpoint '/v1/responses'" in problems[0].message
    assert "'/v1/responses' on every line" in problems[0].fix


def test_url_mismatch_against_the_first_line_when_no_endpoint(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a", url=EMB), req("b", url=EMB), req("c", url="/v1/responses")])
    report, problems = check_file(path)
    assert report.endpoint == EMB
    assert found(problems) == [(3, "url_mismatch")]
    assert "on line 1" in problems[0].message


def test_missing_url_is_a_url_mismatch(tmp_path: Path) -> None:
    bad = req("b")
    del bad["url"]
    path = put(tmp_path / "r.jsonl", [req("a"), bad])
    _, problems = check_file(path)
    assert found(problems) == [(2, "url_mismatch")]
    assert problems[0].message == "url is missing"
    assert CHAT in problems[0].fix


def test_unknown_endpoint_given(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a")])
    _, problems = check_file(path, endpoint="/v1/chat/completion")
    assert found(problems) == [(None, "unknown_endpoint"), (1, "url_mismatch")]
    assert problems[0].param == "endpoint"
    assert "did you mean '/v1/chat/completions'?" in problems[0].fix
    # Never advise copying an invalid endpoint onto every line.
    assert "'/v1/chat/completion' on every line" not in problems[1].fix


def test_unknown_url_on_the_first_line_is_reported_once(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req(c, url="/v1/chat") for c in "abc"])
    report, problems = check_file(path)
    assert found(problems) == [(1, "unknown_endpoint")]
    assert all(e in problems[0].fix for e in BATCH_ENDPOINTS)
    assert report.endpoint == "/v1/chat"


@pytest.mark.parametrize("endpoint", BATCH_ENDPOINTS)
def test_every_batch_endpoint_is_known(tmp_path: Path, endpoint: str) -> None:
    path = put(tmp_path / "r.jsonl", [req("a", url=endpoint)])
    assert check_file(path, endpoint=endpoint)[1] == []


# --- model ------------------------------------------------------------------------------
def test_model_mismatch_names_the_first_line(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), req("b"), req("c", model="gpt-4o")])
    report, problems = check_file(path)
    assert report.model == "gpt-4o-mini"
    assert found(problems) == [(3, "model_mismatch")]
    assert problems[0].message == "body.model 'gpt-4o' differs from 'gpt-4o-mini' on line 1"
    assert (
        problems[0].fix
        == "use one model per file: set body.model to 'gpt-4o-mini' on every line, or write one file per model"
    )


def test_model_missing_everywhere_is_fine_missing_once_is_a_mismatch(tmp_path: Path) -> None:
    lines = [{"custom_id": c, "method": "POST", "url": "/v1/moderations", "body": {"input": "x"}} for c in "ab"]
    assert check_file(put(tmp_path / "a.jsonl", lines))[1] == []
    lines.append({"custom_id": "c", "method": "POST", "url": "/v1/moderations", "body": {"model": "m", "input": "x"}})
    _, problems = check_file(put(tmp_path / "b.jsonl", lines))
    assert found(problems) == [(3, "model_mismatch")]
    assert "line 1, which has no model" in problems[0].message
    assert "set the same body.model on every line" in problems[0].fix


# --- empty file -------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"\n", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    _, problems = check_file(path)
    assert found(problems) == [(None, "empty_file")]
    assert "at least one request" in problems[0].fix


# --- limits -----------------------------------------------------------------------------
def test_too_many_tasks_is_reported_once_at_the_first_line_over(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req(f"q-{i}") for i in range(6)])
    report, problems = check_file(path, max_lines=4)
    assert report.lines == 6
    assert found(problems) == [(5, "too_many_tasks")]
    assert "at most 4 lines" in problems[0].fix and "shard_file" in problems[0].fix


def test_exactly_max_lines_is_fine(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req(f"q-{i}") for i in range(4)])
    assert check_file(path, max_lines=4)[1] == []


def test_file_too_large_names_the_line_that_crosses_the_limit(tmp_path: Path) -> None:
    lines = [req(f"q-{i}") for i in range(5)]
    path = put(tmp_path / "r.jsonl", lines)
    line_size = len(json.dumps(lines[0])) + 1
    _, problems = check_file(path, max_bytes=3 * line_size)
    assert found(problems) == [(4, "file_too_large")]
    assert "shard_file" in problems[0].fix
    assert check_file(path, max_bytes=path.stat().st_size)[1] == []


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("one text", 1),
        (["a", "b", "c"], 3),
        ([1, 2, 3, 4], 1),  # one pre-tokenized input
        ([[1, 2], [3], [4, 5, 6]], 3),
        ([], 0),
        (None, 0),
    ],
)
def test_embedding_input_count(value: Any, count: int) -> None:
    assert embedding_input_count(value) == count


def test_embedding_inputs_are_summed_and_the_limit_named(tmp_path: Path) -> None:
    lines = [emb("a", "x"), emb("b", ["x", "y"]), emb("c", [1, 2, 3]), emb("d", [[1], [2], [3]]), emb("e", "z")]
    path = put(tmp_path / "e.jsonl", lines)
    report, problems = check_file(path)
    assert problems == [] and report.embedding_inputs == 1 + 2 + 1 + 3 + 1
    report, problems = check_file(path, max_embedding_inputs=6)
    assert found(problems) == [(4, "too_many_embedding_inputs")]
    assert "brings the total to 7" in problems[0].message
    assert report.embedding_inputs == 8


def test_embedding_inputs_not_counted_for_other_endpoints(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a", input=["x"] * 10)])
    report, problems = check_file(path, max_embedding_inputs=1)
    assert problems == [] and report.embedding_inputs == 0


# --- capping ----------------------------------------------------------------------------
def test_problems_are_capped_and_the_report_says_truncated(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a")] + ["not json"] * 30 + [req("b")])
    report, problems = check_file(path, max_problems=5)
    assert found(problems) == [(n, "invalid_json_line") for n in range(2, 7)]
    assert report.truncated
    # The report still tells the true size of the file.
    assert (report.lines, report.bytes) == (32, path.stat().st_size)
    with pytest.raises(InputValidationError) as info:
        validate_file(path, max_problems=5)
    assert info.value.truncated and len(info.value.problems) == 5
    assert "stopped after the first problems" in str(info.value)


def test_exactly_max_problems_is_not_truncated(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("a")] + ["not json"] * 5)
    report, problems = check_file(path, max_problems=5)
    assert len(problems) == 5 and not report.truncated


# --- validate_file ----------------------------------------------------------------------
def test_validate_file_error_names_file_line_rule_and_fix(tmp_path: Path) -> None:
    path = put(tmp_path / "r.jsonl", [req("q-1"), req("q-2"), req("q-1")])
    with pytest.raises(InputValidationError) as info:
        validate_file(path)
    err = info.value
    assert err.source == str(path)
    assert found(err.problems) == [(3, "duplicate_custom_id")]
    text = str(err)
    assert str(path) in text
    assert "line 3: duplicate_custom_id" in text
    assert "fix: make every custom_id unique; 'q-1' first appears on line 1" in text


def test_validate_file_is_a_valueerror_and_missing_file_is_oserror(tmp_path: Path) -> None:
    assert issubclass(InputValidationError, ValueError)
    with pytest.raises(FileNotFoundError):
        validate_file(tmp_path / "nope.jsonl")


# --- iter_request_lines -----------------------------------------------------------------
def test_iter_request_lines_yields_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(req("a")) + "\r\n\r\n" + json.dumps(req("b"))).encode())
    got = list(iter_request_lines(path))
    assert [(n, o["custom_id"]) for n, o in got] == [(1, "a"), (3, "b")]


@pytest.mark.parametrize("bad", ["{nope", "[1]"])
def test_iter_request_lines_raises_on_a_bad_line(tmp_path: Path, bad: str) -> None:
    path = put(tmp_path / "r.jsonl", [req("a"), bad])
    with pytest.raises(InputValidationError) as info:
        list(iter_request_lines(path))
    assert found(info.value.problems) == [(2, "invalid_json_line")]
    assert info.value.source == str(path)


# --- request_line -----------------------------------------------------------------------
def test_request_line_builds_a_valid_line() -> None:
    line = request_line("q-1", {"model": "m", "input": "hi"}, endpoint=EMB)
    assert line == {"custom_id": "q-1", "method": "POST", "url": EMB, "body": {"model": "m", "input": "hi"}}
    RequestLine.model_validate(line)


def test_request_line_rejects_bad_endpoint_and_empty_id() -> None:
    with pytest.raises(InputValidationError) as info:
        request_line("", {}, endpoint="/v1/chat")
    assert [p.rule for p in info.value.problems] == ["missing_custom_id", "unknown_endpoint"]


# --- write_requests ---------------------------------------------------------------------
def test_write_requests_normalises_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    items: list[Any] = [
        RequestLine(custom_id="a", url=CHAT, body={"model": "m", "messages": []}),
        {"body": {"model": "m", "messages": []}, "custom_id": "b"},  # method and url filled in
        request_line("c", {"model": "m", "messages": [{"role": "user", "content": "café ☕"}]}, endpoint=CHAT),
    ]
    report = write_requests(iter(items), path, endpoint=CHAT)
    assert (report.lines, report.bytes, report.model, report.endpoint) == (3, path.stat().st_size, "m", CHAT)
    assert validate_file(path, endpoint=CHAT) == report
    rows = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    assert [list(r) for r in rows] == [["custom_id", "method", "url", "body"]] * 3
    assert rows[1] == {"custom_id": "b", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}
    assert "café ☕" in path.read_text("utf-8")  # written as UTF-8, not \\u escapes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_requests_keeps_extra_fields_and_accepts_mapping_bodies(tmp_path: Path) -> None:
    from types import MappingProxyType

    path = tmp_path / "out.jsonl"
    write_requests([{"custom_id": "a", "url": EMB, "body": MappingProxyType({"model": "m", "input": "x"})}], path)
    assert json.loads(path.read_text())["body"] == {"model": "m", "input": "x"}


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_write_requests_leaves_no_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(InputValidationError) as info:
        write_requests([req("a"), req("b"), req("a")], path)
    assert found(info.value.problems) == [(3, "duplicate_custom_id")]
    assert info.value.source == str(path)
    assert _names(tmp_path) == []  # neither the file nor a temp file


def test_write_requests_failure_leaves_an_existing_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old contents\n")
    with pytest.raises(InputValidationError):
        write_requests([req("a"), req("b", model="other")], path)
    assert path.read_text() == "old contents\n"
    assert _names(tmp_path) == ["out.jsonl"]


def test_write_requests_replaces_an_existing_file_when_valid(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old contents\n")
    write_requests([req("a")], path)
    assert json.loads(path.read_text())["custom_id"] == "a"


def test_write_requests_rejects_unserialisable_and_non_mapping_items(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    items: list[Any] = [req("a"), req("b", temperature=float("nan")), req("c", extra={1, 2}), "not a request"]
    with pytest.raises(InputValidationError) as info:
        write_requests(items, path)
    assert found(info.value.problems) == [(2, "invalid_json_line"), (3, "invalid_json_line"), (4, "invalid_json_line")]
    assert "cannot be written as JSON" in info.value.problems[0].message
    assert "str, not a RequestLine or a mapping" in info.value.problems[2].message
    assert _names(tmp_path) == []


def test_write_requests_checks_limits_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(InputValidationError) as info:
        write_requests((req(f"q-{i}") for i in range(5)), path, max_lines=3)
    assert found(info.value.problems) == [(4, "too_many_tasks")]
    with pytest.raises(InputValidationError) as info:
        write_requests([], path)
    assert found(info.value.problems) == [(None, "empty_file")]
    with pytest.raises(InputValidationError) as info:
        write_requests([emb("a", ["x"] * 3), emb("b", ["y"] * 3)], path, max_embedding_inputs=5)
    assert found(info.value.problems) == [(2, "too_many_embedding_inputs")]
    assert _names(tmp_path) == []


def test_write_requests_cleans_up_when_the_iterable_raises(tmp_path: Path) -> None:
    def gen():
        yield req("a")
        raise RuntimeError("upstream broke")

    with pytest.raises(RuntimeError, match="upstream broke"):
        write_requests(gen(), tmp_path / "out.jsonl")
    assert _names(tmp_path) == []


def test_write_requests_without_endpoint_needs_urls(tmp_path: Path) -> None:
    with pytest.raises(InputValidationError) as info:
        write_requests([{"custom_id": "a", "body": {"model": "m"}}], tmp_path / "out.jsonl")
    assert found(info.value.problems) == [(1, "url_mismatch")]


def test_write_then_check_agree_on_every_rule(tmp_path: Path) -> None:
    """The same bad requests give the same findings whether written or checked (write fills only method/url)."""
    items = [
        req("a"),
        req("a"),
        req("c", model="x"),
        req("d", url="/v1/responses"),
        {"custom_id": "e", "method": "GET", "url": CHAT},
    ]
    on_disk = put(tmp_path / "bad.jsonl", items)
    _, from_check = check_file(on_disk)
    with pytest.raises(InputValidationError) as info:
        write_requests(items, tmp_path / "w.jsonl")
    assert found(info.value.problems) == found(from_check)
    assert [p.fix for p in info.value.problems] == [p.fix for p in from_check]


# --- module hygiene ---------------------------------------------------------------------
def test_docstring_examples_run() -> None:
    result = doctest.testmod(jsonl, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_jsonl_imports_only_stdlib_pydantic_and_core_contract() -> None:
    tree = ast.parse(Path(jsonl.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    third_party = {m for m in imported if m.split(".")[0] not in _stdlib()}
    assert third_party <= {"pydantic", "batch_ops.errors", "batch_ops.models", "batch_ops._files"}, third_party


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


def test_public_names() -> None:
    for name in jsonl.__all__:
        assert getattr(jsonl, name) is not None
    assert {"check_file", "validate_file", "write_requests", "shard_file", "filter_requests"} <= set(jsonl.__all__)

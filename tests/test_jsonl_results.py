"""Tests of reading output/error files and joining them to the input (batch_ops.jsonl)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from batch_ops.errors import InputValidationError, ResultFileError
from batch_ops.jsonl import request_line, write_requests
from batch_ops.results import iter_result_lines, join_results

CHAT = "/v1/chat/completions"


def ok(custom_id: str, answer: Any = None, *, rid: str | None = None) -> dict[str, Any]:
    return {
        "id": rid or f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{custom_id}", "body": {"answer": answer or custom_id}},
        "error": None,
    }


def http_error(custom_id: str, status: int = 429) -> dict[str, Any]:
    return {
        "id": f"batch_req_e_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "body": {"error": {"code": "rate_limit_exceeded", "message": "slow"}}},
        "error": None,
    }


def expired(custom_id: str) -> dict[str, Any]:
    return {"id": None, "custom_id": custom_id, "response": None, "error": {"code": "batch_expired", "message": "x"}}


def put(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    write_requests([request_line(f"q-{i}", {"model": "m", "messages": []}, endpoint=CHAT) for i in range(6)], path)
    return path


def join(input_file: Path, out: Path | None, err: Path | None) -> list[tuple[str, bool, str | None]]:
    return [
        (r.custom_id, r.ok, r.error_code)
        for r in join_results(input_path=input_file, output_path=out, error_path=err)  # type: ignore[arg-type]
    ]


# --- iter_result_lines ------------------------------------------------------------------
def test_iter_result_lines_parses_in_file_order_and_skips_blank_lines(tmp_path: Path) -> None:
    path = put(tmp_path / "out.jsonl", [ok("b"), "", ok("a"), "  ", http_error("c"), expired("d")])
    rows = list(iter_result_lines(path))
    assert [(r.custom_id, r.ok, r.error_code) for r in rows] == [
        ("b", True, None),
        ("a", True, None),
        ("c", False, "rate_limit_exceeded"),
        ("d", False, "batch_expired"),
    ]
    assert rows[0].body == {"answer": "b"} and rows[0].id == "batch_req_b"


def test_iter_result_lines_accepts_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ok("a")).encode() + b"\r\n" + json.dumps(ok("b")).encode() + b"\r\n")
    assert [r.custom_id for r in iter_result_lines(path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("{not json", "not a valid result line"),
        ('{"response": {"status_code": 200}}', "custom_id"),
        ('{"custom_id": "x", "response": {"status_code": "two hundred"}}', "response.status_code"),
        ("[1, 2]", "not a valid result line"),
    ],
)
def test_iter_result_lines_names_file_and_line_of_a_bad_line(tmp_path: Path, bad: str, words: str) -> None:
    path = put(tmp_path / "out.jsonl", [ok("a"), "", bad])
    with pytest.raises(ResultFileError) as info:
        list(iter_result_lines(path))
    err = info.value
    assert (err.path, err.line) == (str(path), 3)
    assert str(err).startswith(f"{path}, line 3: ")
    assert words in str(err)
    assert isinstance(err, ValueError)


# --- join_results -----------------------------------------------------------------------
def test_join_yields_input_order_from_shuffled_files(tmp_path: Path, input_file: Path) -> None:
    out = put(tmp_path / "out.jsonl", [ok("q-4"), ok("q-0"), ok("q-5"), ok("q-2")])
    err = put(tmp_path / "err.jsonl", [http_error("q-3"), expired("q-1")])
    results = list(join_results(input_path=input_file, output_path=out, error_path=err))
    assert [(r.custom_id, r.ok, r.error_code) for r in results] == [
        ("q-0", True, None),
        ("q-1", False, "batch_expired"),
        ("q-2", True, None),
        ("q-3", False, "rate_limit_exceeded"),
        ("q-4", True, None),
        ("q-5", True, None),
    ]
    assert results[4].body == {"answer": "q-4"}


def test_missing_results_are_yielded_not_dropped(tmp_path: Path, input_file: Path) -> None:
    out = put(tmp_path / "out.jsonl", [ok("q-3"), ok("q-0")])
    results = list(join_results(input_path=input_file, output_path=out, error_path=None))
    assert [(r.custom_id, r.error_code) for r in results] == [
        ("q-0", None),
        ("q-1", "missing_result"),
        ("q-2", "missing_result"),
        ("q-3", None),
        ("q-4", "missing_result"),
        ("q-5", "missing_result"),
    ]
    missing = results[1]
    assert missing.response is None and not missing.ok
    assert missing.error is not None and "'q-1'" in (missing.error.message or "")
    assert "input line 2" in (missing.error.message or "")


def test_no_result_files_at_all(input_file: Path) -> None:
    assert {code for _, _, code in join(input_file, None, None)} == {"missing_result"}


def test_empty_string_paths_mean_absent(input_file: Path, tmp_path: Path) -> None:
    out = put(tmp_path / "out.jsonl", [ok(f"q-{i}") for i in range(6)])
    results = list(join_results(input_path=input_file, output_path=str(out), error_path=""))
    assert all(r.ok for r in results) and len(results) == 6


def test_only_an_error_file(tmp_path: Path, input_file: Path) -> None:
    err = put(tmp_path / "err.jsonl", [http_error(f"q-{i}", 500) for i in range(6)])
    assert join(input_file, None, err) == [(f"q-{i}", False, "rate_limit_exceeded") for i in range(6)]


def test_in_both_files_the_success_wins_once(tmp_path: Path, input_file: Path, caplog: Any) -> None:
    # q-1 failed (error file) and succeeded on a retry (output file); q-3 is twice in the output.
    out = put(tmp_path / "out.jsonl", [ok(f"q-{i}") for i in (0, 1, 2, 4, 5)] + [ok("q-3", "first"), ok("q-3", "2nd")])
    err = put(tmp_path / "err.jsonl", [http_error("q-1"), http_error("q-3")])
    with caplog.at_level(logging.WARNING, logger="batch_ops.jsonl"):
        results = list(join_results(input_path=input_file, output_path=out, error_path=err))
    assert [r.custom_id for r in results] == [f"q-{i}" for i in range(6)]  # once each
    assert all(r.ok for r in results)
    assert results[3].body == {"answer": "first"}  # ties keep the first line seen
    assert "repeat a custom_id" in caplog.text and "'q-3'" in caplog.text


def test_a_failure_in_the_output_file_loses_to_a_success_in_the_error_file(tmp_path: Path, input_file: Path) -> None:
    out = put(tmp_path / "out.jsonl", [http_error("q-0")] + [ok(f"q-{i}") for i in range(1, 6)])
    err = put(tmp_path / "err.jsonl", [ok("q-0", "recovered")])
    results = list(join_results(input_path=input_file, output_path=out, error_path=err))
    assert results[0].ok and results[0].body == {"answer": "recovered"}


def test_two_failures_prefer_the_output_file(tmp_path: Path, input_file: Path) -> None:
    err = put(tmp_path / "err.jsonl", [expired("q-0")])
    out = put(tmp_path / "out.jsonl", [http_error("q-0", 400)] + [ok(f"q-{i}") for i in range(1, 6)])
    results = list(join_results(input_path=input_file, output_path=out, error_path=err))
    assert results[0].error_code == "rate_limit_exceeded"


def test_results_not_in_the_input_are_not_yielded_but_logged(tmp_path: Path, input_file: Path, caplog: Any) -> None:
    out = put(tmp_path / "out.jsonl", [ok(f"q-{i}") for i in range(6)] + [ok("stranger")])
    with caplog.at_level(logging.WARNING, logger="batch_ops.jsonl"):
        results = list(join_results(input_path=input_file, output_path=out, error_path=None))
    assert len(results) == 6
    assert "1 result(s) have a custom_id that is not in" in caplog.text


def test_join_reads_lines_whole_with_multibyte_text_crlf_and_bom(tmp_path: Path, input_file: Path) -> None:
    out = tmp_path / "out.jsonl"
    rows = [ok(f"q-{i}", "東京 café ☕ " * (i + 1)) for i in (5, 3, 1, 0, 2, 4)]
    out.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\r\n" for r in rows))
    results = list(join_results(input_path=input_file, output_path=out, error_path=None))
    assert [r.body["answer"] for r in results] == ["東京 café ☕ " * (i + 1) for i in range(6)]


def test_join_bad_result_line_names_file_and_line(tmp_path: Path, input_file: Path) -> None:
    out = put(tmp_path / "out.jsonl", [ok("q-0"), '{"no_custom_id": 1}'])
    with pytest.raises(ResultFileError) as info:
        list(join_results(input_path=input_file, output_path=out, error_path=None))
    assert (info.value.path, info.value.line) == (str(out), 2)


def test_join_bad_result_body_found_on_the_seek_names_its_line(tmp_path: Path, input_file: Path) -> None:
    out = put(tmp_path / "out.jsonl", [ok("q-0"), '{"custom_id": "q-1", "response": {"status_code": "x"}}'])
    rows = join_results(input_path=input_file, output_path=out, error_path=None)
    assert next(rows).ok
    with pytest.raises(ResultFileError) as info:
        next(rows)
    assert (info.value.path, info.value.line) == (str(out), 2)


def test_join_input_without_custom_id_is_an_input_error(tmp_path: Path) -> None:
    inp = put(tmp_path / "in.jsonl", [{"method": "POST"}])
    with pytest.raises(InputValidationError) as info:
        list(join_results(input_path=inp, output_path=None, error_path=None))
    assert [(p.line, p.rule) for p in info.value.problems] == [(1, "missing_custom_id")]


def test_join_is_lazy(tmp_path: Path, input_file: Path) -> None:
    """join_results is an iterator (results stream one at a time), not a list built up front."""
    out = put(tmp_path / "out.jsonl", [ok(f"q-{i}") for i in range(6)])
    rows = join_results(input_path=input_file, output_path=out, error_path=None)
    assert next(rows).custom_id == "q-0"
    assert next(rows).custom_id == "q-1"

"""A team's own eval set: JSONL or CSV, local or on object storage, line-numbered errors, templates, epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batch_ops.errors import InputValidationError
from batch_ops.evals import DEFAULT_EVAL_SET, PromptTemplate, load_eval_set, read_eval_set
from batch_ops.evals.dataset import parse_custom_id
from batch_ops.jsonl import write_requests
from batch_ops.jsonl.neutral import translate

from .conftest import S3_BUCKET

ROWS = [
    {"id": "cap-1", "input": "Capital of Peru?", "expected": "Lima", "category": "geo", "difficulty": "easy"},
    {"id": "cap-2", "input": "Capital of Chad?", "expected": "N'Djamena", "metadata": {"category": "geo",
                                                                                       "source": "atlas"}},
    {"id": "open-1", "input": "Write a haiku about rain.", "metadata": {"category": "writing"}},
]


def test_jsonl_set_with_metadata_and_optional_expected(tmp_path: Path) -> None:
    path = tmp_path / "team.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    s = read_eval_set(path)
    assert s.name == "team" and s.source == str(path) and len(s.items) == 3
    assert [i.category for i in s.items] == ["geo", "geo", "writing"]
    assert s.items[0].metadata == {"category": "geo", "difficulty": "easy"}
    assert s.items[1].metadata["source"] == "atlas" and s.items[2].expected is None
    assert s.hash == read_eval_set(path).hash  # content, not time
    path.write_text(path.read_text().replace("Lima", "Lima, Peru"))
    assert read_eval_set(path).hash != s.hash


def test_csv_set_columns_become_metadata_and_quoted_cells_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "team.csv"
    path.write_text('id,input,expected,category,source\n'
                    'q1,"Two lines,\nwith a comma",42,math,book\n'
                    'q2,Plain,7,math,\n')
    s = read_eval_set(path)
    assert s.items[0].input == "Two lines,\nwith a comma"
    assert s.items[0].metadata == {"source": "book", "category": "math"}
    assert s.items[1].metadata == {"category": "math"}  # an empty cell is absent, not ""
    path.write_text('id,input,expected\nq1,"Two lines,\nstill q1",1\nq1,again,2\nq3,too,many,cells\n')
    with pytest.raises(InputValidationError) as err:
        read_eval_set(path)
    assert [(p.line, p.rule) for p in err.value.problems] == [(4, "duplicate_id"), (5, "wrong_column_count")]
    path.write_text("name,answer\nx,y\n")
    with pytest.raises(InputValidationError, match=r"line 1: missing_column: .*'input'"):
        read_eval_set(path)


def test_jsonl_errors_name_every_bad_line_like_request_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "input": "ok"}\n'
                    '{"id": "b", "input": "cut off"\n'
                    '["not", "an", "object"]\n'
                    '{"id": "a", "input": "again"}\n'
                    '{"id": "c"}\n'
                    '{"id": "d", "input": "x", "metadata": "tags"}\n')
    with pytest.raises(InputValidationError) as err:
        read_eval_set(path)
    found = [(p.line, p.rule) for p in err.value.problems]
    assert found == [(2, "invalid_json_line"), (3, "not_an_object"), (4, "duplicate_id"), (5, "missing_input"),
                     (6, "invalid_item")]
    text = str(err.value)
    assert text.startswith(f"{path}: 5 problems:") and "(fix: make every id unique)" in text
    # Many bad lines: the first 20 and a word that there are more.
    path.write_text("not json\n" * 50)
    with pytest.raises(InputValidationError) as many:
        read_eval_set(path)
    assert len(many.value.problems) == 20 and many.value.truncated
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputValidationError, match="empty_eval_set"):
        read_eval_set(empty)


def test_template_fields_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "team.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    s = read_eval_set(path, template=PromptTemplate(user="[{difficulty}] {input}", system="Answer briefly."))
    with pytest.raises(InputValidationError) as err:
        s.requests("gpt-4o-mini")
    assert [(p.line, p.rule) for p in err.value.problems] == [(2, "template_field_missing"),
                                                              (3, "template_field_missing")]
    assert "item 'cap-2' has no difficulty" in str(err.value)
    ok = read_eval_set(path, template="Q ({category}): {input} {{literal}}")
    req = ok.requests("m", max_tokens=32)[0]
    assert req.messages == [{"role": "user", "content": "Q (geo): Capital of Peru? {literal}"}]
    assert req.system == "You are a precise assistant. Answer with the answer only, no explanation."


def test_epochs_requests_translate_for_every_provider(tmp_path: Path) -> None:
    s = read_eval_set(template="{input}")
    reqs = s.requests("claude-x", epochs=3, temperature=0.7, max_tokens=64)
    assert len(reqs) == 3 * len(s.items)
    assert [r.custom_id for r in reqs[:3]] == ["arith-000__e1", "arith-000__e2", "arith-000__e3"]
    assert parse_custom_id(reqs[2].custom_id) == ("arith-000", 3)
    assert translate(reqs[0], "anthropic").line["params"]["temperature"] == 0.7
    assert translate(reqs[0], "gemini").line["key"] == "arith-000__e1"
    report = write_requests(reqs, tmp_path / "req.jsonl", endpoint="/v1/chat/completions")
    assert report.lines == len(reqs)
    with pytest.raises(InputValidationError, match="invalid_epochs"):
        s.requests("m", epochs=0)


def test_the_shipped_set_stays_the_default() -> None:
    s = read_eval_set()
    assert s.name == "nightly_eval" and s.source == str(DEFAULT_EVAL_SET) and len(s.items) == 210
    assert [i.id for i in load_eval_set()] == [i.id for i in s.items]
    assert {i.scorer for i in s.items} == {"exact", "contains", "numeric"}
    assert s.items[0].input == s.items[0].question


def test_eval_set_on_object_storage(s3: Any, tmp_path: Path) -> None:
    local = tmp_path / "team.csv"
    local.write_text("id,input,expected,category\nq1,2+2?,4,math\nq2,3+3?,6,math\n")
    s3.put(str(local), f"{S3_BUCKET}/evals/team.csv")
    s = read_eval_set(f"s3://{S3_BUCKET}/evals/team.csv")
    assert s.name == "team" and [i.expected for i in s.items] == ["4", "6"]
    assert s.hash == read_eval_set(local).hash
    s3.pipe(f"{S3_BUCKET}/evals/bad.jsonl", b'{"id": "q1", "input": "x"}\n{"id": "q1", "input": "y"}\n')
    with pytest.raises(InputValidationError, match=r"s3://batch-ops-test/evals/bad.jsonl: 1 problem:\n  line 2: "
                                                   "duplicate_id"):
        read_eval_set(f"s3://{S3_BUCKET}/evals/bad.jsonl")

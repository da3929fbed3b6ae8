"""Tests of batch_ops.jsonl.shard_file: parts are valid, within every limit, and add up to the input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from batch_ops.errors import InputValidationError
from batch_ops.jsonl import check_file, shard_file, validate_file, write_requests

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"


def req(custom_id: str, *, size: int = 10, model: str = "m") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": [{"role": "user", "content": "x" * size}]},
    }


def emb(custom_id: str, value: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMB, "body": {"model": "e", "input": value}}


def put(path: Path, lines: list[Any], *, end: str = "\n") -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + end, encoding="utf-8")
    return path


def assert_valid_parts(
    parts: list[Path],
    source: Path,
    *,
    max_lines: int = 50_000,
    max_bytes: int = 200 * 1024 * 1024,
    max_embedding_inputs: int = 50_000,
) -> None:
    """Each part validates under the limits, and the parts concatenate back to the source."""
    for part in parts:
        validate_file(part, max_lines=max_lines, max_bytes=max_bytes, max_embedding_inputs=max_embedding_inputs)
    assert b"".join(p.read_bytes() for p in parts) == source.read_bytes()


def test_split_by_line_count(tmp_path: Path) -> None:
    src = put(tmp_path / "big.jsonl", [req(f"q-{i}") for i in range(10)])
    parts = shard_file(src, tmp_path / "parts", max_lines=3)
    assert [p.name for p in parts] == ["big-001.jsonl", "big-002.jsonl", "big-003.jsonl", "big-004.jsonl"]
    assert [check_file(p)[0].lines for p in parts] == [3, 3, 3, 1]
    assert_valid_parts(parts, src, max_lines=3)


def test_split_by_bytes_with_uneven_lines(tmp_path: Path) -> None:
    sizes = [10, 300, 50, 250, 5, 400, 20, 20, 20, 380]
    src = put(tmp_path / "big.jsonl", [req(f"q-{i}", size=s) for i, s in enumerate(sizes)])
    limit = 600
    parts = shard_file(src, tmp_path / "parts", max_bytes=limit)
    assert len(parts) > 1
    assert all(p.stat().st_size <= limit for p in parts)
    assert_valid_parts(parts, src, max_bytes=limit)
    # Greedy: no part could have taken the next part's first line.
    for a, b in itertools.pairwise(parts):
        first_of_b = len(b.read_bytes().splitlines(keepends=True)[0])
        assert a.stat().st_size + first_of_b > limit


def test_split_by_embedding_inputs(tmp_path: Path) -> None:
    values: list[Any] = [["a"] * 4, "b", [1, 2, 3], [[1], [2], [3]], ["c"] * 5, "d"]  # 4, 1, 1, 3, 5, 1 inputs
    src = put(tmp_path / "emb.jsonl", [emb(f"e-{i}", v) for i, v in enumerate(values)])
    parts = shard_file(src, tmp_path / "parts", max_embedding_inputs=6)
    assert [check_file(p)[0].embedding_inputs for p in parts] == [6, 3, 6]
    assert_valid_parts(parts, src, max_embedding_inputs=6)


def test_split_by_every_limit_at_once(tmp_path: Path) -> None:
    src = put(tmp_path / "big.jsonl", [req(f"q-{i}", size=(i * 37) % 200) for i in range(60)])
    parts = shard_file(src, tmp_path / "parts", max_lines=7, max_bytes=900)
    assert len(parts) > 60 // 7
    assert_valid_parts(parts, src, max_lines=7, max_bytes=900)


def test_file_within_limits_gives_one_part(tmp_path: Path) -> None:
    src = put(tmp_path / "small.jsonl", [req("a"), req("b")])
    parts = shard_file(src, tmp_path / "parts")
    assert [p.name for p in parts] == ["small-001.jsonl"]
    assert parts[0].read_bytes() == src.read_bytes()


def test_prefix_and_out_dir_creation(tmp_path: Path) -> None:
    src = put(tmp_path / "in.jsonl", [req(f"q-{i}") for i in range(3)])
    parts = shard_file(src, tmp_path / "a" / "b", max_lines=2, prefix="nightly")
    assert [p.relative_to(tmp_path).as_posix() for p in parts] == ["a/b/nightly-001.jsonl", "a/b/nightly-002.jsonl"]


def test_name_width_grows_past_999_parts(tmp_path: Path) -> None:
    src = tmp_path / "many.jsonl"
    write_requests((req(f"q-{i}", size=0) for i in range(1001)), src)
    parts = shard_file(src, tmp_path / "parts", max_lines=1)
    assert parts[0].name == "many-0001.jsonl" and parts[-1].name == "many-1001.jsonl"
    assert sorted(parts) == parts


def test_missing_final_newline_and_crlf_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "crlf.jsonl"
    src.write_bytes(b"\r\n".join(json.dumps(req(f"q-{i}")).encode() for i in range(5)))
    parts = shard_file(src, tmp_path / "parts", max_lines=2)
    assert_valid_parts(parts, src, max_lines=2)


def test_bom_is_dropped(tmp_path: Path) -> None:
    src = tmp_path / "bom.jsonl"
    body = "".join(json.dumps(req(f"q-{i}")) + "\n" for i in range(3)).encode()
    src.write_bytes(b"\xef\xbb\xbf" + body)
    parts = shard_file(src, tmp_path / "parts", max_lines=2)
    assert b"".join(p.read_bytes() for p in parts) == body


def test_invalid_input_raises_and_leaves_no_parts(tmp_path: Path) -> None:
    lines = [req(f"q-{i}") for i in range(6)] + [req("q-1"), req("q-9", model="other")]
    src = put(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "parts"
    with pytest.raises(InputValidationError) as info:
        shard_file(src, out, max_lines=2)
    assert [(p.line, p.rule) for p in info.value.problems] == [(7, "duplicate_custom_id"), (8, "model_mismatch")]
    assert info.value.source == str(src)
    assert list(out.iterdir()) == []


def test_custom_ids_must_be_unique_across_parts(tmp_path: Path) -> None:
    src = put(tmp_path / "bad.jsonl", [req("a"), req("b"), req("c"), req("a")])
    with pytest.raises(InputValidationError) as info:
        shard_file(src, tmp_path / "parts", max_lines=2)
    assert [(p.line, p.rule) for p in info.value.problems] == [(4, "duplicate_custom_id")]


def test_one_line_over_the_byte_limit_cannot_be_sharded(tmp_path: Path) -> None:
    src = put(tmp_path / "big.jsonl", [req("a"), req("b", size=5000), req("c")])
    with pytest.raises(InputValidationError) as info:
        shard_file(src, tmp_path / "parts", max_bytes=1000)
    [problem] = info.value.problems
    assert (problem.line, problem.rule) == (2, "file_too_large")
    assert "this one line" in problem.message
    assert list((tmp_path / "parts").iterdir()) == []


def test_one_request_over_the_embedding_limit_cannot_be_sharded(tmp_path: Path) -> None:
    src = put(tmp_path / "emb.jsonl", [emb("a", "x"), emb("b", ["y"] * 8)])
    with pytest.raises(InputValidationError) as info:
        shard_file(src, tmp_path / "parts", max_embedding_inputs=5)
    assert [(p.line, p.rule) for p in info.value.problems] == [(2, "too_many_embedding_inputs")]


def test_endpoint_is_checked(tmp_path: Path) -> None:
    src = put(tmp_path / "r.jsonl", [req("a")])
    with pytest.raises(InputValidationError) as info:
        shard_file(src, tmp_path / "parts", endpoint=EMB)
    assert [(p.line, p.rule) for p in info.value.problems] == [(1, "url_mismatch")]


def test_empty_input_raises(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_bytes(b"")
    with pytest.raises(InputValidationError) as info:
        shard_file(src, tmp_path / "parts")
    assert [p.rule for p in info.value.problems] == ["empty_file"]

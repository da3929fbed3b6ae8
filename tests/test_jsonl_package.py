"""The request-file package ``batch_ops.jsonl``: its modules, its one options object and its one line reader.

``batch_ops/jsonl.py`` held rules, validation, reading, writing and sharding in 1,200 lines, four
entry points repeated one signature and its setup, and the byte-order-mark line loop was written
in jsonl, results and fingerprint (issue 23). These tests hold the split: what each module may
import, that every module documents itself with an example that runs, that the options of the
four entry points are one list, and how the one reader reads.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import io
import pkgutil
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import batch_ops.jsonl as jsonl
from batch_ops.errors import InputValidationError
from batch_ops.identity.fingerprint import fingerprint_file
from batch_ops.jsonl import Line, RuleOptions, Rules, iter_lines, shard_file

MODULES = sorted(m.name for m in pkgutil.iter_modules(jsonl.__path__))
ENTRY_POINTS = (jsonl.check_file, jsonl.validate_file, jsonl.write_requests, jsonl.shard_file)
BOM = b"\xef\xbb\xbf"


def test_the_package_holds_rules_read_validate_write_and_shard() -> None:
    assert MODULES == ["neutral", "read", "rules", "shard", "validate", "write"]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports_only_stdlib_pydantic_the_core_contract_and_its_siblings(name: str) -> None:
    module = importlib.import_module(f"batch_ops.jsonl.{name}")
    tree = ast.parse(Path(str(module.__file__)).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    stdlib = frozenset(sys.stdlib_module_names) | {"__future__"}
    outside = {m for m in imported if m.split(".")[0] not in stdlib and not m.startswith("batch_ops.jsonl.")}
    assert outside <= {"pydantic", "batch_ops.errors", "batch_ops.models", "batch_ops._files"}, outside


@pytest.mark.parametrize("name", ["__init__", *MODULES])
def test_every_module_says_what_it_holds_with_an_example_that_runs(name: str) -> None:
    module = jsonl if name == "__init__" else importlib.import_module(f"batch_ops.jsonl.{name}")
    docstring = inspect.getdoc(module) or ""
    assert docstring.splitlines()[0].strip() and "\nExamples:\n" in docstring, name
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def test_the_options_of_the_entry_points_are_the_fields_of_rules() -> None:
    options = {name: getattr(kind, "__forward_arg__", kind) for name, kind in RuleOptions.__annotations__.items()}
    assert options == {f.name: f.type for f in fields(Rules)}
    for entry in ENTRY_POINTS:
        parameters = inspect.signature(entry).parameters.values()
        spread = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        assert [p.annotation for p in spread] == ["Unpack[RuleOptions]"], entry.__name__
        assert not {p.name for p in parameters} & set(options), entry.__name__  # no option spelled out again


def test_an_unknown_option_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="max_line"):
        jsonl.check_file(tmp_path / "none.jsonl", max_line=3)  # type: ignore[call-arg]


def test_shard_file_takes_the_azure_spelling_like_the_other_entry_points(tmp_path: Path) -> None:
    line = '{"custom_id": "q-%d", "method": "POST", "url": "/chat/completions", "body": {"model": "deployment"}}\n'
    src = tmp_path / "azure.jsonl"
    src.write_text("".join(line % i for i in range(3)))
    assert jsonl.validate_file(src, azure=True).lines == 3
    parts = shard_file(src, tmp_path / "parts", max_lines=2, azure=True)
    assert b"".join(p.read_bytes() for p in parts) == src.read_bytes()


# --- the one line reader --------------------------------------------------------------------------
def test_lines_are_numbered_with_their_offsets_and_a_first_bom_dropped() -> None:
    data = BOM + b'{"a": 1}\r\n\n{"b": 2}'
    lines = list(iter_lines(io.BytesIO(data)))
    assert lines == [Line(1, 3, 13, b'{"a": 1}\r\n'), Line(2, 13, 1, b"\n"), Line(3, 14, 8, b'{"b": 2}')]
    assert [data[line.offset: line.offset + len(line.data or b"")] for line in lines] == [x.data for x in lines]
    assert sum(line.size for line in lines) == len(data)


def test_a_bom_is_dropped_only_at_the_start_of_the_file() -> None:
    f = io.BytesIO(b"x\n" + BOM + b"y\n")
    f.seek(2)  # a reader resuming mid-file: these bytes are data
    assert [line.data for line in iter_lines(f)] == [BOM + b"y\n"]


def test_reading_stops_at_a_line_over_the_limit() -> None:
    lines = list(iter_lines(io.BytesIO(b"ab\n" + b"x" * 100 + b"\ncd\n"), limit=10))
    assert lines == [Line(1, 0, 3, b"ab\n"), Line(2, 3, 0, None)]


def test_a_long_line_goes_to_long_lines_a_piece_at_a_time_and_reading_goes_on(tmp_path: Path) -> None:
    mib = 1 << 20
    long = BOM + b"x" * (3 * mib + 5) + b"\n"
    path = tmp_path / "long.jsonl"
    path.write_bytes(long + b"ab\n" + b"y" * (2 * mib) + b"\n" + b"cd")
    seen: list[list[int]] = []
    joined: list[bytes] = []

    def take(pieces: Any) -> None:
        chunks = list(pieces)
        seen.append([len(c) for c in chunks])
        joined.append(b"".join(chunks))

    with path.open("rb") as f:
        lines = list(iter_lines(f, limit=mib, long_lines=take))
    assert [(line.number, line.data) for line in lines] == [(2, b"ab\n"), (4, b"cd")]
    assert lines[0].offset == len(long) and lines[1].offset == len(long) + 3 + 2 * mib + 1
    assert joined == [long[3:], b"y" * (2 * mib) + b"\n"]  # the first line without its BOM
    assert max(max(s) for s in seen) <= mib


def test_what_long_lines_leaves_unread_is_skipped() -> None:
    f = io.BytesIO(b"x" * 50 + b"\nok\n")
    assert [line.data for line in iter_lines(f, limit=10, long_lines=lambda pieces: next(pieces))] == [b"ok\n"]


def test_long_lines_needs_a_file_it_can_read_again() -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        list(iter_lines(Pipe(b"a\n"), long_lines=lambda pieces: None))


def test_iter_request_lines_names_a_line_over_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"custom_id": "a"}\n' + b'{"custom_id": "' + b"b" * 100 + b'"}\n')
    with pytest.raises(InputValidationError) as caught:
        list(jsonl.iter_request_lines(path, max_line_bytes=50))
    assert [(p.line, p.rule) for p in caught.value.problems] == [(2, "line_too_large")]


@pytest.mark.parametrize("room", [0, 1, -5])
def test_a_bom_never_changes_a_fingerprint_even_on_a_line_at_the_limit(tmp_path: Path, room: int) -> None:
    # The fingerprint's own loop read the first line with the BOM counted against the limit and
    # dropped it afterwards: a first line at the limit, or over it, was hashed as two requests.
    first = b'{"custom_id": "' + b"a" * 40 + b'"}'
    body = first + b'\n{"custom_id": "b"}\n'
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_bytes(body)
    marked.write_bytes(BOM + body)
    limit = len(first) + room  # room: bytes the line leaves under the limit (-5: over it, hashed by its bytes)
    assert fingerprint_file(marked, line_limit=limit) == fingerprint_file(plain, line_limit=limit)
    assert fingerprint_file(marked, line_limit=limit).requests == 2

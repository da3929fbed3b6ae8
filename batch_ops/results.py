"""Result files: stream-parse output and error files, and join them to the requests.

A batch answers each request with one line, in its output file (a response) or its error file
(an error). Lines come in no particular order; these functions give back one result per
request, in the input's order, reading line by line: memory holds an index of
``custom_id`` -> (file, byte offset), never the files.

Every file is read through :func:`batch_ops.jsonl.iter_lines`, the one line reader of request and
result files (a byte-order mark dropped, lines numbered): no line longer than
:data:`MAX_RESULT_LINE_BYTES` is ever held in memory; such a line is a :class:`ResultFileError`
naming it.

A request may have been carried by several attempts of one key (see :mod:`batch_ops.chain`):
:func:`join_chain_results` joins the output and error files of every attempt, the latest
success winning.

Examples:
    >>> import os, tempfile
    >>> from batch_ops.jsonl import request_line, write_requests
    >>> d = tempfile.mkdtemp()
    >>> inp, out0, out1 = (os.path.join(d, n) for n in ("in.jsonl", "out0.jsonl", "out1.jsonl"))
    >>> _ = write_requests([request_line(c, {"model": "m"}, endpoint="/v1/responses") for c in "ab"], inp)
    >>> _ = open(out0, "w").write('{"custom_id": "a", "response": {"status_code": 200, "body": 1}}\\n'
    ...                           '{"custom_id": "b", "response": {"status_code": 500, "body": {}}}\\n')
    >>> _ = open(out1, "w").write('{"custom_id": "b", "response": {"status_code": 200, "body": 2}}\\n')
    >>> [(r.custom_id, r.body) for r in join_chain_results(input_path=inp, attempts=[(out0, None), (out1, None)])]
    [('a', 1), ('b', 2)]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from batch_ops._files import atomic_file
from batch_ops.errors import BatchOpsError, InputValidationError, Problem, ResultFileError
from batch_ops.jsonl import iter_lines, iter_request_lines
from batch_ops.models import ResultError, ResultLine

__all__ = ["DEFAULT_MAX_RECORDS", "MAX_RESULT_LINE_BYTES", "iter_result_lines", "join_chain_results", "join_results",
           "result_records", "rewrite_results", "successful_ids"]

_log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: The longest result line read (200 MB). An answer can be far bigger than its request: one
#: embeddings request of 2,048 inputs answered with 3,072 floats each is ~130 MB of JSON, the
#: largest answer the API documents. A longer line is refused rather than held in memory.
MAX_RESULT_LINE_BYTES = 200 * 1024 * 1024


#: At most this many results are handed on whole (an XCom, a task result): a larger batch's results
#: belong in a file (``download_batch_file``, ``client.results`` streamed), not in the metadata database.
DEFAULT_MAX_RECORDS = 10_000


def result_records(lines: Iterable[ResultLine], *, limit: int = DEFAULT_MAX_RECORDS, raw: bool = True,
                   what: str = "the batch") -> list[dict[str, Any]]:
    """Results as users read them, one plain dict each (:meth:`ResultLine.record
    <batch_ops.models.ResultLine.record>`: ``custom_id``, ``ok``, ``text``, ``body``, ``usage``, ``error``,
    ``raw``), the same whatever the provider: what the Airflow hook and the Prefect results task hand on.

    Raises:
        BatchOpsError: More than ``limit`` results (reading stops there: memory stays bounded).

    Examples:
        >>> lines = [ResultLine(custom_id="a", response={"status_code": 200, "body": {"choices": [
        ...     {"message": {"content": "4"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}})]
        >>> [(r["custom_id"], r["text"], r["usage"]["total_tokens"]) for r in result_records(lines)]
        [('a', '4', 4)]
    """
    records: list[dict[str, Any]] = []
    for line in lines:
        if len(records) >= limit:
            raise BatchOpsError(f"{what} has more than {limit:,} results, more than are handed on whole (an XCom, a "
                                "task result); fix: read them streamed (client.results) or download the output file, "
                                "or raise max_results")
        records.append(line.record(raw=raw))
    return records


def _too_large(path: str, line: int) -> ResultFileError:
    return ResultFileError(f"the line is longer than {MAX_RESULT_LINE_BYTES:,} bytes (200 MB), more than any answer "
                           "the API gives: this is not a batch result file (download it again)", path=path, line=line)


def _lines(f: IO[bytes], name: str) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, offset, line)`` for each line of the result file ``f`` (``name``), through the one reader."""
    for n, offset, _size, raw in iter_lines(f, limit=MAX_RESULT_LINE_BYTES):
        if raw is None:
            raise _too_large(name, n)
        yield n, offset, raw


def _parse_result(raw: bytes, *, path: str, line: int) -> ResultLine:
    try:
        return ResultLine.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.error_count() else {"msg": str(exc), "loc": ()}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        detail = f"{loc}: {first['msg']}" if loc else str(first["msg"])
        raise ResultFileError(f"not a valid result line ({detail})", path=path, line=line) from exc


def iter_result_lines(path: PathLike) -> Iterator[ResultLine]:
    """Stream-parse an output or error file into :class:`~batch_ops.models.ResultLine` objects.

    Blank lines are skipped; results come in file order (which is not the input's order; see
    :func:`join_results`).

    Raises:
        ResultFileError: A line is not a result object; the error names the file and line.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "out.jsonl")
        >>> _ = open(path, "w").write('{"custom_id": "a", "response": {"status_code": 200, "body": {}}}\\n\\n'
        ...                           '{"custom_id": "b", "error": {"code": "batch_expired", "message": "x"}}\\n')
        >>> [(r.custom_id, r.ok, r.error_code) for r in iter_result_lines(path)]
        [('a', True, None), ('b', False, 'batch_expired')]
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        for n, _offset, raw in _lines(f, name):
            if raw.strip():
                yield _parse_result(raw, path=name, line=n)


def _objects(f: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a result file, one per non-blank line; anything else is a :class:`ResultFileError`."""
    for n, _offset, raw in _lines(f, name):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ResultFileError(f"not a JSON line ({exc})", path=name, line=n) from None
        if not isinstance(obj, dict):
            raise ResultFileError("not a JSON object", path=name, line=n)
        yield obj


def rewrite_results(path: PathLike, convert: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> int:
    """Rewrite a result file in place, each line through ``convert`` (a dialect's
    :meth:`~batch_ops.dialects.Dialect.result_line`: a provider's own line into OpenAI's shape);
    returns the lines written. Streamed, and atomic: a crash leaves the file as it was.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "out.jsonl")
        >>> _ = open(path, "w").write('{"key": "a", "answer": 1}\\n')
        >>> rewrite_results(path, lambda o: {"custom_id": o["key"], "response": {"status_code": 200,
        ...                                  "body": o["answer"]}, "raw": o})
        1
        >>> [(r.custom_id, r.body) for r in iter_result_lines(path)]
        [('a', 1)]
    """
    name = os.fspath(path)
    written = 0
    with open(name, "rb") as f, atomic_file(name) as out:
        for obj in _objects(f, name):
            out.write(json.dumps(convert(obj), separators=(",", ":")).encode() + b"\n")
            written += 1
    return written


def split_results(
    path: PathLike, convert: Callable[[Mapping[str, Any]], Mapping[str, Any]], output: PathLike, error: PathLike
) -> tuple[int, int]:
    """Rewrite one file that holds successes and failures together (Anthropic's results) into an output
    file (successes) and an error file (the rest), each line through ``convert`` (a dialect's
    :meth:`~batch_ops.dialects.Dialect.result_line`); returns ``(successes, failures)``. Streamed; each
    file appears only whole, and only when it has a line.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> src = os.path.join(d, "all.jsonl")
        >>> _ = open(src, "w").write('{"id": "a", "ok": true}\\n{"id": "b", "ok": false}\\n')
        >>> conv = lambda o: {"custom_id": o["id"], "response": {"status_code": 200 if o["ok"] else 500}}
        >>> split_results(src, conv, os.path.join(d, "out.jsonl"), os.path.join(d, "err.jsonl"))
        (1, 1)
    """
    name = os.fspath(path)
    counts = [0, 0]
    with open(name, "rb") as f, atomic_file(output) as out, atomic_file(error) as err:
        for obj in _objects(f, name):
            line = dict(convert(obj))
            ok = _result_ok(line)
            (out if ok else err).write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            counts[0 if ok else 1] += 1
    for target, count in ((output, counts[0]), (error, counts[1])):
        if not count:
            os.unlink(target)
    return counts[0], counts[1]


def result_ids_file(paths: Sequence[PathLike | None], dest: Path, *, id_field: str = "custom_id") -> Path:
    """Write ``{id_field: …}`` once for each request named in the result files ``paths`` to ``dest``, in the
    order first seen (the requests of a chain whose input cannot be read back — an API without a file
    store, or one that never hands an upload back — known from its results); returns ``dest``."""
    seen: set[str] = set()
    with atomic_file(dest) as out:
        for path in paths:
            if path is None:
                continue
            for _offset, _n, custom_id, _ok in _scan(os.fspath(path)):
                if custom_id not in seen:
                    seen.add(custom_id)
                    out.write(json.dumps({id_field: custom_id}).encode() + b"\n")
    return dest


def _result_ok(obj: dict[str, Any]) -> bool:
    if obj.get("error") is not None:
        return False
    response = obj.get("response")
    if not isinstance(response, dict):
        return False
    status = response.get("status_code")
    return isinstance(status, int) and 200 <= status < 300


def _scan(name: str) -> Iterator[tuple[int, int, str, bool]]:
    """``(byte offset, line number, custom_id, succeeded)`` for each line of a result file."""
    with open(name, "rb") as f:
        for n, offset, raw in _lines(f, name):
            try:
                obj = json.loads(raw)
            except ValueError as exc:
                if not raw.strip():
                    continue
                raise ResultFileError(f"not valid JSON ({exc})", path=name, line=n) from exc
            custom_id = obj.get("custom_id") if type(obj) is dict else None
            if not isinstance(custom_id, str):
                raise ResultFileError("not a result object with a string custom_id", path=name, line=n)
            yield offset, n, custom_id, _result_ok(obj)


def successful_ids(paths: Sequence[PathLike | None]) -> set[str]:
    """The ``custom_id`` of every successful line in these output (or error) files.

    This is what a new attempt must not carry again: a request with a success anywhere in its
    chain is never paid for twice.
    """
    done: set[str] = set()
    for path in paths:
        if path:
            done.update(custom_id for _o, _n, custom_id, ok in _scan(os.fspath(path)) if ok)
    return done


# An index entry: (file number, byte offset, line number, rank); the highest rank wins.
# rank = (succeeded, attempt, from the output file): the latest success, then the latest failure,
# the output file before the error file, and the first line seen among equals.
_Rank = tuple[bool, int, bool]
_Entry = tuple[int, int, int, _Rank]
# A result file: (path, which batch it belongs to, the batch's attempt number, is it an output file).
_File = tuple[str | None, int, int, bool]


def _index(files: Sequence[_File]) -> tuple[dict[str, _Entry], int, list[str]]:
    """Index result files; count the lines that repeat a custom_id within one batch's files."""
    index: dict[str, _Entry] = {}
    seen_in: dict[str, int] = {}
    duplicates = 0
    examples: list[str] = []
    for which, (name, batch, attempt, is_output) in enumerate(files):
        if not name:
            continue
        for offset, n, custom_id, ok in _scan(name):
            entry = (which, offset, n, (ok, attempt, is_output))
            prev = index.get(custom_id)
            if prev is None:
                index[custom_id] = entry
                seen_in[custom_id] = batch
                continue
            if seen_in.get(custom_id) == batch:
                duplicates += 1
                if len(examples) < 5:
                    examples.append(custom_id)
            seen_in[custom_id] = batch
            if entry[3] > prev[3]:
                index[custom_id] = entry
    return index, duplicates, examples


def _join(input_path: PathLike, files: list[_File], id_field: str = "custom_id") -> Iterator[ResultLine]:
    index, duplicates, examples = _index(files)
    if duplicates:
        _log.warning(
            "%d result line(s) repeat a custom_id already seen (e.g. %s); one result per custom_id is kept, "
            "a successful one first",
            duplicates,
            ", ".join(repr(x) for x in examples),
        )
    used: set[str] = set()
    src = os.fspath(input_path)
    names = [f[0] for f in files]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(open(name, "rb")) if name else None for name in names]
        for n, request in iter_request_lines(src):
            # The request's id, in its own shape's field (Gemini's ``key``); results carry it as ``custom_id``
            # (a dialect that rewrites result lines writes it there).
            custom_id = request.get(id_field)
            if not isinstance(custom_id, str):
                raise InputValidationError(
                    [
                        Problem(
                            rule="missing_custom_id",
                            message=f"{id_field} is {custom_id!r}, not a string",
                            fix=f"results can only be joined to requests that have a {id_field}",
                            line=n,
                            param=id_field,
                        )
                    ],
                    source=src,
                )
            entry = index.get(custom_id)
            if entry is None:
                yield ResultLine(
                    custom_id=custom_id,
                    response=None,
                    error=ResultError(
                        code="missing_result",
                        message=f"no result for custom_id {custom_id!r} (input line {n}) in the output or error file",
                    ),
                )
                continue
            used.add(custom_id)
            which, offset, line, _rank = entry
            handle = handles[which]
            assert handle is not None
            handle.seek(offset)
            # Measured by the scan that found it: no longer than the limit.
            yield _parse_result(handle.readline(MAX_RESULT_LINE_BYTES + 1), path=names[which] or "", line=line)
    extra = len(index) - len(used)
    if extra:
        _log.warning("%d result(s) have a custom_id that is not in %s; they were not yielded", extra, src)


def join_results(
    *,
    input_path: PathLike,
    output_path: PathLike | None,
    error_path: PathLike | None,
    id_field: str = "custom_id",
) -> Iterator[ResultLine]:
    """Yield one result per input request, in input order, joined by ``custom_id``.

    One streaming pass over the output and error files builds an index ``custom_id`` ->
    (file, byte offset); then each input request's result is read by seeking to it. Memory
    holds the index, never the files.

    - A request found in neither file yields a result with ``error.code == "missing_result"``.
    - A ``custom_id`` present twice (in both files, or twice in one) yields once: the
      successful line wins, then the output file's, then the first; a warning is logged.
    - Results whose ``custom_id`` is not in the input are not yielded; a warning is logged.

    Args:
        input_path: The request file the batch ran.
        output_path: The downloaded output file, or ``None`` (e.g. every request failed).
        error_path: The downloaded error file, or ``None`` (a clean batch has none).
        id_field: The field naming each request in the input (the dialect's ``line_shape.id_field``:
            ``custom_id``, Gemini's ``key``); result lines always name it ``custom_id``.

    Raises:
        ResultFileError: A line of the output or error file is not a result.
        InputValidationError: A line of the input file is not a JSON object with a custom_id.

    Examples:
        >>> import os, tempfile
        >>> from batch_ops.jsonl import request_line, write_requests
        >>> d = tempfile.mkdtemp()
        >>> inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        >>> _ = write_requests([request_line(c, {"model": "m"}, endpoint="/v1/responses") for c in "abc"], inp)
        >>> _ = open(out, "w").write('{"custom_id": "c", "response": {"status_code": 200, "body": 3}}\\n'
        ...                          '{"custom_id": "a", "response": {"status_code": 200, "body": 1}}\\n')
        >>> [(r.custom_id, r.body, r.error_code) for r in join_results(input_path=inp, output_path=out,
        ...                                                             error_path=None)]
        [('a', 1, None), ('b', None, 'missing_result'), ('c', 3, None)]
    """
    return join_chain_results(input_path=input_path, attempts=[(output_path, error_path)], id_field=id_field)


def join_chain_results(
    *,
    input_path: PathLike,
    attempts: Sequence[tuple[PathLike | None, PathLike | None] | tuple[PathLike | None, PathLike | None, int]],
    id_field: str = "custom_id",
) -> Iterator[ResultLine]:
    """Like :func:`join_results`, over the ``(output, error)`` files of several batches, oldest first.

    Each request yields once: its latest success, else its latest failure, else
    ``missing_result``. A third item in a tuple gives the batch's attempt number (two batches of
    one attempt, a duplicate and the batch that counts, rank alike); by default each pair is the
    next attempt. A line repeated within one batch's files is logged as a duplicate; the same
    request in two batches is the chain working as meant.
    """
    files: list[_File] = []
    for batch, item in enumerate(attempts):
        out, err = item[0], item[1]
        attempt = item[2] if len(item) > 2 else batch  # type: ignore[misc]
        files.append((os.fspath(out) if out else None, batch, attempt, True))
        files.append((os.fspath(err) if err else None, batch, attempt, False))
    return _join(input_path, files, id_field)

"""Write, validate, shard and filter batch request files (result files: :mod:`batch_ops.results`).

A batch input file holds one JSON request object per line. Every function here reads and
writes line by line as bytes, so memory stays flat however large the file is (the one
exception is the set of ``custom_id`` values, needed to find duplicates and to join results).

Validation reports each finding as a :class:`~batch_ops.errors.Problem` whose ``rule`` is the
OpenAI API's own error code where one exists (``invalid_json_line``, ``duplicate_custom_id``,
``url_mismatch``, ``model_mismatch``, ``empty_file``, ``too_many_tasks``) and a client-side
code otherwise (``missing_custom_id``, ``invalid_method``, ``missing_body``,
``unknown_endpoint``, ``file_too_large``, ``line_too_large``, ``too_many_embedding_inputs``).

Every reader here goes through :func:`read_lines`, which never holds more than one line of at most
:data:`MAX_LINE_BYTES` (the most one request may carry): a longer line is refused, naming its
number, without reading it into memory.

Line rules, decided to match the JSON Lines format the API reads: a single newline at the end
of the file is a line terminator and fine; any empty or whitespace-only line (in the middle
*or* after the final newline) is an ``invalid_json_line``. A UTF-8 byte-order mark before the
first line and CRLF line endings are accepted.

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> path = os.path.join(d, "requests.jsonl")
    >>> report = write_requests(
    ...     [request_line(f"q-{i}", {"model": "gpt-4o-mini", "messages": []}, endpoint="/v1/chat/completions")
    ...      for i in range(3)], path)
    >>> report.lines, report.endpoint, report.model
    (3, '/v1/chat/completions', 'gpt-4o-mini')
    >>> validate_file(path, endpoint="/v1/embeddings")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.InputValidationError: .../requests.jsonl: 3 problems:
      line 1: url_mismatch: url '/v1/chat/completions' differs from the batch endpoint '/v1/embeddings' ...
    ...
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import secrets
import socket
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from batch_ops._files import atomic_file, atomic_write
from batch_ops.errors import InputValidationError, Problem
from batch_ops.models import BATCH_ENDPOINTS, RequestLine, azure_endpoint, canonical_endpoint

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_EMBEDDING_INPUTS",
    "DEFAULT_MAX_LINES",
    "DEFAULT_MAX_PROBLEMS",
    "MAX_LINE_BYTES",
    "FileReport",
    "check_file",
    "embedding_input_count",
    "filter_requests",
    "iter_request_lines",
    "read_lines",
    "request_file",
    "request_line",
    "shard_file",
    "validate_file",
    "write_requests",
]

_log = logging.getLogger(__name__)

#: At most this many requests per input file (the API's limit).
DEFAULT_MAX_LINES = 50_000
#: At most this many bytes per input file (200 MB, the API's limit).
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
#: At most this many bytes in one request line (50 MB). OpenAI documents no separate limit for a batch
#: line, but a line is one request, and one request may carry at most 50 MB ("total payload size per
#: request" of image and file inputs); a longer line is refused while reading, before it sits in memory.
MAX_LINE_BYTES = 50 * 1024 * 1024
#: At most this many embedding inputs across all requests of a ``/v1/embeddings`` batch.
DEFAULT_MAX_EMBEDDING_INPUTS = 50_000
#: Validation stops collecting findings after this many.
DEFAULT_MAX_PROBLEMS = 20

_EMBEDDINGS = "/v1/embeddings"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_EXAMPLE_LINE = '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}'


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; the API's parser rejects them.
    raise ValueError(f"{name} is not valid JSON")


class _Decoder(json.JSONDecoder):
    """``json.JSONDecoder(parse_constant=_reject_constant)`` that pickles by re-creating itself.

    Its C scanner cannot be pickled, and Prefect pickles batch_ops by value (see batch_ops.locks).
    """

    def __init__(self) -> None:
        super().__init__(parse_constant=_reject_constant)

    def __reduce__(self) -> tuple[type[_Decoder], tuple[()]]:
        return (type(self), ())


# One decoder built once: json.loads(..., parse_constant=...) would build a new decoder per call.
_DECODER = _Decoder()
# Compact separators and raw UTF-8 keep written files small; NaN is refused as above.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class FileReport:
    """What validation learned about a request file.

    Attributes:
        path: The file, as given.
        lines: Lines in the file (a final newline does not start another line).
        bytes: Size of the file in bytes.
        endpoint: The batch endpoint: the one asked for, else the first line's ``url``.
        model: ``body.model`` of the first request (``None`` when absent).
        embedding_inputs: Embedding inputs summed over ``/v1/embeddings`` requests.
        truncated: True when validation stopped early after ``max_problems`` findings.

    Examples:
        >>> FileReport(path="r.jsonl", lines=2, bytes=180, endpoint="/v1/embeddings",
        ...            model="text-embedding-3-small", embedding_inputs=5).truncated
        False
    """

    path: str
    lines: int
    bytes: int
    endpoint: str | None
    model: str | None
    embedding_inputs: int
    truncated: bool = False


def embedding_input_count(value: Any) -> int:
    """Count the embedding inputs in one request's ``body.input``, as the API's limit counts them.

    A string is one input; a list of integers is one pre-tokenized input; any other list
    (strings, or lists of integers) counts each element.

    Examples:
        >>> embedding_input_count("hi"), embedding_input_count([1, 2, 3]), embedding_input_count(["a", "b"])
        (1, 1, 2)
        >>> embedding_input_count([[1, 2], [3]]), embedding_input_count(None)
        (2, 0)
    """
    if isinstance(value, str):
        return 1
    if isinstance(value, (list, tuple)):
        if not value:
            return 0
        first = value[0]
        # Only the first element is looked at: the API's input types are homogeneous, and a
        # token list can be long.
        if isinstance(first, int) and not isinstance(first, bool):
            return 1
        return len(value)
    return 0


def _describe(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


class _Checker:
    """The validation rules, fed one line at a time; shared by check, write and shard.

    Why a class: the three entry points read lines differently (bytes from a file, objects
    from an iterable) but must agree exactly on the rules and the wording of the fixes.
    """

    def __init__(
        self,
        *,
        endpoint: str | None,
        max_lines: int | None,
        max_bytes: int,
        max_embedding_inputs: int,
        max_problems: int,
        per_line_limits: bool = False,
        azure: bool = False,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        # Azure OpenAI spells endpoints without /v1 (``/chat/completions``): compare what they mean.
        self.azure = azure
        if azure:
            endpoint = canonical_endpoint(endpoint)
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self.max_inputs = max_embedding_inputs
        self.max_problems = max(1, max_problems)
        # shard_file checks the size limits per line (a part can hold any one valid line),
        # not over the whole file.
        self.per_line_limits = per_line_limits
        self.problems: list[Problem] = []
        self.truncated = False
        self.lines = 0
        self.bytes = 0
        self.nonblank = 0
        self.inputs = 0
        self.line_inputs = 0
        self.seen: dict[str, int] = {}
        self.ref_url: str | None = endpoint
        self.ref_set = endpoint is not None
        self.ref_line = 0
        self.model: Any = None
        self.model_line = 0
        self._over_lines = False
        self._over_bytes = False
        self._over_line = False
        self._over_inputs = False
        if endpoint is not None and endpoint not in BATCH_ENDPOINTS:
            self.add(
                Problem(
                    rule="unknown_endpoint",
                    message=f"endpoint {endpoint!r} is not a Batch API endpoint",
                    fix=_endpoint_fix(endpoint),
                    param="endpoint",
                )
            )

    # -- bookkeeping -------------------------------------------------------------------
    def add(self, problem: Problem) -> None:
        if self.truncated:
            return
        if len(self.problems) >= self.max_problems:
            # One finding more than we keep: say so, and let callers stop reading.
            self.truncated = True
            return
        self.problems.append(problem)

    # -- per line ----------------------------------------------------------------------
    def feed_bytes(self, n: int, raw: bytes) -> dict[str, Any] | None:
        """Check one raw line (with its line ending); return the parsed object if it is one."""
        size = len(raw)
        if n == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        try:
            obj = _DECODER.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._count(n, size, blank=not raw.strip())
            self._invalid_json(n, raw, exc)
            self.line_inputs = 0
            return None
        if type(obj) is not dict:
            self._count(n, size, blank=False)
            self.add(
                Problem(
                    rule="invalid_json_line",
                    message=f"the line is a JSON {_describe(obj)}, not an object",
                    fix=f"make every line one JSON request object, e.g. {_EXAMPLE_LINE}",
                    line=n,
                )
            )
            self.line_inputs = 0
            return None
        self.check_obj(n, obj, size)
        return obj

    def _count(self, n: int, size: int, *, blank: bool) -> None:
        self.lines = n
        if not blank:
            self.nonblank += 1
        self.bytes += size
        self._check_size(n, size)

    def _invalid_json(self, n: int, raw: bytes, exc: BaseException) -> None:
        if not raw.strip():
            message = "the line is empty" if not raw.strip(b"\r\n") else "the line holds only whitespace"
            fix = "delete the empty line: every line must be one JSON request (one newline at the very end is fine)"
        elif isinstance(exc, UnicodeDecodeError):
            message = f"the line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            fix = "save the file as UTF-8"
        elif isinstance(exc, json.JSONDecodeError):
            message = f"the line is not valid JSON: {exc.msg} at column {exc.colno}"
            fix = (
                "write each request as one complete JSON object on a single line (no pretty-printing, "
                "no trailing commas, newlines inside strings escaped as \\n)"
            )
        elif isinstance(exc, RecursionError):
            message = "the line is nested too deeply to parse"
            fix = "flatten the request body"
        else:
            message = f"the line is not valid JSON: {exc}"
            fix = "write finite numbers only (NaN and Infinity are not JSON); serialise with allow_nan=False"
        self.add(Problem(rule="invalid_json_line", message=message, fix=fix, line=n))

    def check_obj(self, n: int, obj: dict[str, Any], size: int) -> None:
        """Check one parsed request object that occupies ``size`` bytes on disk."""
        self.lines = n
        self.nonblank += 1
        self.bytes += size
        add = self.add

        custom_id = obj.get("custom_id")
        if type(custom_id) is str and custom_id:
            first = self.seen.setdefault(custom_id, n)
            if first != n:
                add(
                    Problem(
                        rule="duplicate_custom_id",
                        message=f"custom_id {custom_id!r} repeats line {first}",
                        fix=f"make every custom_id unique; {custom_id!r} first appears on line {first}",
                        line=n,
                        param="custom_id",
                    )
                )
        else:
            what = "is missing" if custom_id is None else f"is {custom_id!r}, not a non-empty string"
            add(
                Problem(
                    rule="missing_custom_id",
                    message=f"custom_id {what}",
                    fix='give every line a unique, non-empty string "custom_id" (e.g. "req-1"): results are '
                    "matched to requests by it",
                    line=n,
                    param="custom_id",
                )
            )

        method = obj.get("method")
        if method != "POST":
            what = "is missing" if method is None else f"is {method!r}"
            add(
                Problem(
                    rule="invalid_method",
                    message=f"method {what}",
                    fix='set "method": "POST" on every line (the only method the Batch API accepts)',
                    line=n,
                    param="method",
                )
            )

        url = obj.get("url")
        if self.azure:
            url = canonical_endpoint(url)
        if url != self.ref_url or not self.ref_set:
            self._check_url(n, url)

        body = obj.get("body")
        if type(body) is dict:
            model = body.get("model")
            if not self.model_line:
                self.model, self.model_line = model, n
            elif model != self.model:
                self._model_mismatch(n, model)
            if url == _EMBEDDINGS:
                self.line_inputs = count = embedding_input_count(body.get("input"))
                self.inputs += count
                self._check_inputs(n, count)
            else:
                self.line_inputs = 0
        else:
            self.line_inputs = 0
            what = "is missing" if body is None else f"is a JSON {_describe(body)}, not an object"
            add(
                Problem(
                    rule="missing_body",
                    message=f"body {what}",
                    fix='put the request parameters in a JSON object under "body", e.g. '
                    '"body": {"model": "gpt-4o-mini", "messages": [...]}',
                    line=n,
                    param="body",
                )
            )
        self._check_size(n, size)

    def _check_url(self, n: int, url: Any) -> None:
        if not isinstance(url, str):
            what = "is missing" if url is None else f"is {url!r}, not a string"
            target = repr(self.ref_url) if self.ref_url else "the batch endpoint, e.g. '/v1/chat/completions'"
            self.add(
                Problem(
                    rule="url_mismatch",
                    message=f"url {what}",
                    fix=f'set "url" to {target} on every line',
                    line=n,
                    param="url",
                )
            )
            return
        if not self.ref_set:
            # No endpoint was given: the first line's url is the one every line must share.
            self.ref_url, self.ref_set, self.ref_line = url, True, n
            if url not in BATCH_ENDPOINTS:
                self.add(
                    Problem(
                        rule="unknown_endpoint",
                        message=f"url {url!r} is not a Batch API endpoint",
                        fix=_endpoint_fix(url),
                        line=n,
                        param="url",
                    )
                )
            return
        if self.ref_line:
            message = f"url {url!r} differs from {self.ref_url!r} on line {self.ref_line}"
        else:
            message = f"url {url!r} differs from the batch endpoint {self.ref_url!r}"
        if self.ref_url in BATCH_ENDPOINTS:
            fix = f'one endpoint per file: set "url": {self.ref_url!r} on every line, or split the file by url'
        else:
            # Do not tell the user to copy an invalid endpoint onto every line.
            fix = f"choose a valid batch endpoint first (this line says {url!r}), then use it on every line"
        self.add(
            Problem(
                rule="url_mismatch",
                message=message,
                fix=fix,
                line=n,
                param="url",
            )
        )

    def _model_mismatch(self, n: int, model: Any) -> None:
        if self.model is None:
            message = f"body.model {model!r} differs from line {self.model_line}, which has no model"
            target = "the same body.model"
        else:
            message = f"body.model {model!r} differs from {self.model!r} on line {self.model_line}"
            target = f"body.model to {self.model!r}"
        self.add(
            Problem(
                rule="model_mismatch",
                message=message,
                fix=f"use one model per file: set {target} on every line, or write one file per model",
                line=n,
                param="body.model",
            )
        )

    def _check_size(self, n: int, size: int) -> None:
        if size > self.max_line_bytes and not self._over_line:
            # Only a request built in memory gets here (write_requests): read lines stop at read_lines.
            self._over_line = True
            self.add(_line_too_large(n, self.max_line_bytes))
        if self.per_line_limits:
            if size > self.max_bytes and not self._over_bytes:
                self._over_bytes = True
                self.add(
                    Problem(
                        rule="file_too_large",
                        message=f"this one line is {size:,} bytes, over the {_size(self.max_bytes)} file limit",
                        fix="make the request smaller (e.g. send images by URL rather than inline base64)",
                        line=n,
                    )
                )
            return
        if self.max_lines is not None and n > self.max_lines and not self._over_lines:
            self._over_lines = True
            self.add(
                Problem(
                    rule="too_many_tasks",
                    message=f"the file has more than {self.max_lines:,} requests (line {n:,} is over the limit)",
                    fix=f"split the file into parts of at most {self.max_lines:,} lines with "
                    "batch_ops.jsonl.shard_file() and submit one batch per part",
                    line=n,
                )
            )
        if self.bytes > self.max_bytes and not self._over_bytes:
            self._over_bytes = True
            self.add(
                Problem(
                    rule="file_too_large",
                    message=f"the file passes the {_size(self.max_bytes)} limit at line {n:,} "
                    f"({self.bytes:,} bytes so far)",
                    fix="split the file with batch_ops.jsonl.shard_file() and submit one batch per part",
                    line=n,
                )
            )

    def _check_inputs(self, n: int, count: int) -> None:
        if self.per_line_limits:
            over = count > self.max_inputs
            message = f"this one request has {count:,} embedding inputs, over the limit of {self.max_inputs:,}"
            fix = f"send at most {self.max_inputs:,} inputs per request"
        else:
            over = self.inputs > self.max_inputs
            message = (
                f"the file holds more than {self.max_inputs:,} embedding inputs "
                f"(line {n:,} brings the total to {self.inputs:,})"
            )
            fix = "split the file with batch_ops.jsonl.shard_file() and submit one batch per part"
        if over and not self._over_inputs:
            self._over_inputs = True
            self.add(Problem(rule="too_many_embedding_inputs", message=message, fix=fix, line=n, param="body.input"))

    def too_large(self, n: int) -> None:
        """Line ``n`` is over :attr:`max_line_bytes`; the reader stopped there (nothing more is checked)."""
        self.lines = n
        self.nonblank += 1  # something was there: the file is not empty, it is unreadable from here
        self._over_line = True
        self.add(_line_too_large(n, self.max_line_bytes))

    # -- end of file -------------------------------------------------------------------
    def finish(self) -> None:
        if self.nonblank == 0 and not self.truncated:
            # A file of nothing (or only blank lines) is one finding, not one per blank line.
            self.problems = [p for p in self.problems if p.rule != "invalid_json_line"]
            self.problems.append(
                Problem(
                    rule="empty_file",
                    message="the file holds no requests",
                    fix=f"write at least one request line, e.g. {_EXAMPLE_LINE}",
                )
            )

    def report(self, path: str) -> FileReport:
        return FileReport(
            path=path,
            lines=self.lines,
            bytes=self.bytes,
            endpoint=self.ref_url,
            model=self.model if isinstance(self.model, str) else None,
            embedding_inputs=self.inputs,
            truncated=self.truncated,
        )


def _endpoint_fix(value: str) -> str:
    close = difflib.get_close_matches(value, BATCH_ENDPOINTS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}use one of {', '.join(BATCH_ENDPOINTS)}"


def _size(n: int) -> str:
    mb = n / (1024 * 1024)
    return f"{n:,}-byte ({mb:g} MB)" if mb >= 1 else f"{n:,}-byte"


def _finish_reading(f: IO[bytes], checker: _Checker) -> None:
    # After truncation, still count lines and bytes (cheaply, without parsing, a piece at a time:
    # never a whole line) so the report tells the true size of the file.
    newlines, last = 0, b"\n"
    while chunk := f.read(_CHUNK):
        newlines += chunk.count(b"\n")
        checker.bytes += len(chunk)
        last = chunk[-1:]
    checker.lines += newlines + (last != b"\n")


def _not_regular(name: str) -> Problem | None:
    """A problem when ``name`` is a device, a pipe or a directory: nothing to read whole."""
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return None  # open() will say what is wrong
    if stat.S_ISREG(mode):
        return None
    kind = "a directory" if stat.S_ISDIR(mode) else "a device or a pipe, not a regular file"
    return Problem(rule="not_a_regular_file", message=f"{name} is {kind}",
                   fix="pass the path of a JSONL request file on disk", param="path")


def read_lines(f: IO[bytes], *, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Each line of ``f`` (line ending included), never holding more than ``limit`` bytes of one.

    The one line reader of every path that reads request or result files (validate, submit, shard,
    a job, results, the local server): a line of more than ``limit`` bytes comes back as ``None``,
    and reading stops there. An over-long line is measured before it is read (``f`` is seekable:
    callers open regular files), so refusing it costs 1 MiB of memory, however long it is: one
    700 MB line without a newline never sits in memory (it used to cost a job 1.5 GB).

    Examples:
        >>> import io
        >>> list(read_lines(io.BytesIO(b"ab\\ncdef\\ngh"), limit=4))
        [b'ab\\n', None]
        >>> list(read_lines(io.BytesIO(b"ab\\ngh"), limit=4))
        [b'ab\\n', b'gh']
    """
    seekable = f.seekable()
    while True:
        raw = f.readline(min(_CHUNK, limit + 1))
        if not raw:
            return
        if raw.endswith(b"\n") or len(raw) < min(_CHUNK, limit + 1):
            if len(raw) > limit:
                yield None
                return
            yield raw  # the usual case: a line shorter than a piece, read once
            continue
        if not seekable:
            rest = f.readline(limit + 1 - len(raw))
            raw += rest
            if len(raw) > limit:
                yield None
                return
            yield raw
            continue
        # A long line: find its end a piece at a time (dropping the pieces), then read it whole.
        start, size = f.tell() - len(raw), len(raw)
        while size <= limit:
            piece = f.readline(min(_CHUNK, limit + 1 - size))
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        if size > limit:
            yield None
            return
        f.seek(start)
        yield f.read(size)


def _line_too_large(n: int, limit: int) -> Problem:
    return Problem(rule="line_too_large", line=n,
                   message=f"the line is longer than {limit:,} bytes ({limit / 2**20:g} MB), the most one batch "
                   "request may carry: OpenAI takes at most 50 MB per request (reading stopped there)",
                   fix="make the request smaller: send images and files by URL or by file id (uploaded with "
                   "purpose user_data) rather than inline base64, or split it into several requests")


def _crossing_line(f: IO[bytes], limit: int) -> int:
    """The number of the line that carries the file past ``limit`` bytes, reading at most that far."""
    line, read = 1, 0
    while read <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - read))
        if not chunk:
            break
        line += chunk.count(b"\n", 0, max(0, min(len(chunk), limit - read)))
        read += len(chunk)
    return line


# ---------------------------------------------------------------------------------------
# Validate
# ---------------------------------------------------------------------------------------
def check_file(
    path: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    azure: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> tuple[FileReport, list[Problem]]:
    """Check a request file against the Batch API's input rules; never raises on a bad file.

    Reads the file once, line by line as bytes. Findings are capped at ``max_problems``;
    ``report.truncated`` says there were more.

    Args:
        path: The JSONL request file.
        endpoint: The batch endpoint every ``url`` must equal; ``None`` takes the first line's.
        max_lines: Most requests allowed (``too_many_tasks``).
        max_bytes: Largest file size allowed (``file_too_large``).
        max_embedding_inputs: Most embedding inputs allowed in a ``/v1/embeddings`` file.
        max_problems: Stop collecting findings after this many.
        azure: accept Azure OpenAI's spelling of endpoints and urls (``/chat/completions``).
        max_line_bytes: Longest line allowed (``line_too_large``); reading stops at a longer one, so
            memory holds at most one line of this size.

    Returns:
        The report and the findings (empty when the file is valid).

    Raises:
        OSError: The file cannot be read.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
        >>> line = '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": %s}}'
        >>> _ = open(path, "w").write(line % '"x"' + "\\n" + line % "[1, 2]")
        >>> report, problems = check_file(path)
        >>> report.lines, report.embedding_inputs, [(p.line, p.rule) for p in problems]
        (2, 2, [(2, 'duplicate_custom_id')])
        >>> problems[0].fix
        "make every custom_id unique; 'a' first appears on line 1"
    """
    name = os.fspath(path)
    checker = _Checker(
        endpoint=endpoint,
        max_lines=max_lines,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
        max_problems=max_problems,
        azure=azure,
        max_line_bytes=max_line_bytes,
    )
    not_regular = _not_regular(name)
    if not_regular is not None:
        checker.add(not_regular)
        return checker.report(name), checker.problems
    size = os.path.getsize(name)
    if size > max_bytes:
        # Known from the file's metadata: a 3 GB file is not read whole to say so. Only the bytes up
        # to the limit are scanned, to name the line where a split must happen.
        with open(name, "rb") as f:
            line = _crossing_line(f, max_bytes)
        checker.bytes = size
        checker.add(Problem(rule="file_too_large", line=line,
                            message=f"the file is {size:,} bytes, over the {_size(max_bytes)} limit from line {line:,}",
                            fix="split the file with batch_ops.jsonl.shard_file() (or run it as a job: "
                                "batch-ops job) and submit one batch per part"))
        return checker.report(name), checker.problems
    feed = checker.feed_bytes
    with open(name, "rb") as f:
        n = 0
        for raw in read_lines(f, limit=max_line_bytes):
            n += 1
            if raw is None:
                checker.too_large(n)
                checker.bytes = size
                break
            feed(n, raw)
            if checker.truncated:
                _finish_reading(f, checker)
                break
    checker.finish()
    return checker.report(name), checker.problems


def request_file(path: str | os.PathLike[str]) -> Path:
    """The request file at ``path``; raises ``InputValidationError`` (``file_not_found``) when there is none.

    :func:`validate_file` reports a missing file as the ``OSError`` it is. Callers that promise a
    ``BatchOpsError`` naming the problem and the fix for every bad input (``submit``, the Prefect
    upload task, and so the Airflow operator) check the path with this first.

    Examples:
        >>> request_file("/nowhere/requests.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: /nowhere/requests.jsonl: 1 problem:
          path: file_not_found: there is no file at /nowhere/requests.jsonl (fix: check the path...)
    """
    found = Path(path)
    not_regular = _not_regular(os.fspath(found)) if found.exists() and not found.is_dir() else None
    if not_regular is not None:
        raise InputValidationError([not_regular], source=str(found))
    if not found.is_file():
        what = "a directory, not a request file" if found.is_dir() else "no file"
        raise InputValidationError(
            [Problem(rule="file_not_found", message=f"there is {what} at {found}",
                     fix="check the path: it must name a JSONL request file on this machine "
                     f"({socket.gethostname()}); a templated path is rendered when the task runs. A file "
                     "another task wrote on another worker is not here when workers share no disk "
                     "(Celery, Kubernetes, work pools): write and pass an object storage URL instead "
                     "(s3://bucket/requests.jsonl, an ObjectStoragePath; see docs/deploy.md)", param="path")],
            source=str(found),
        )
    return found


def validate_file(
    path: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    azure: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> FileReport:
    """Check a request file and raise if anything is wrong; see :func:`check_file`.

    Raises:
        InputValidationError: With every finding (capped), each naming the line, rule and fix.
        OSError: The file cannot be read.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
        >>> _ = open(path, "w").write('{"custom_id": "a", "method": "GET", "url": "/v1/responses", "body": {}}\\n')
        >>> validate_file(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: .../in.jsonl: 1 problem:
          line 1: invalid_method: method is 'GET' (fix: set "method": "POST" on every line ...)
    """
    report, problems = check_file(
        path,
        endpoint=endpoint,
        max_lines=max_lines,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
        max_problems=max_problems,
        azure=azure,
        max_line_bytes=max_line_bytes,
    )
    if problems:
        raise InputValidationError(problems, source=os.fspath(path), truncated=report.truncated)
    return report


# ---------------------------------------------------------------------------------------
# Read requests
# ---------------------------------------------------------------------------------------
def iter_request_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, request_object)`` for each request of an input file, streaming.

    Meant for files that already passed :func:`validate_file` (the local server reads
    requests with it): blank lines are skipped rather than reported, and nothing but the
    JSON shape is checked.

    Raises:
        InputValidationError: A line is not a JSON object (``invalid_json_line``), or is longer than
            ``max_line_bytes`` (``line_too_large``).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
        >>> _ = open(path, "wb").write(b'\\xef\\xbb\\xbf{"custom_id": "a"}\\r\\n\\r\\n{"custom_id": "b"}')
        >>> list(iter_request_lines(path))
        [(1, {'custom_id': 'a'}), (3, {'custom_id': 'b'})]
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        n = 0
        for raw in read_lines(f, limit=max_line_bytes):
            n += 1
            if raw is None:
                raise InputValidationError([_line_too_large(n, max_line_bytes)], source=name)
            if n == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            try:
                obj = _DECODER.decode(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                if not raw.strip():
                    continue
                checker = _Checker(endpoint=None, max_lines=None, max_bytes=0, max_embedding_inputs=0, max_problems=1)
                checker._invalid_json(n, raw, exc)
                raise InputValidationError(checker.problems, source=name) from exc
            if type(obj) is not dict:
                raise InputValidationError(
                    [
                        Problem(
                            rule="invalid_json_line",
                            message=f"the line is a JSON {_describe(obj)}, not an object",
                            fix=f"make every line one JSON request object, e.g. {_EXAMPLE_LINE}",
                            line=n,
                        )
                    ],
                    source=name,
                )
            yield n, obj


# ---------------------------------------------------------------------------------------
# Write
# ---------------------------------------------------------------------------------------
def request_line(custom_id: str, body: Mapping[str, Any], *, endpoint: str) -> dict[str, Any]:
    """Build one request line (a dict ready for :func:`write_requests` or ``json.dumps``).

    Raises:
        InputValidationError: ``custom_id`` is empty or ``endpoint`` is not a batch endpoint.

    Examples:
        >>> request_line("q-1", {"model": "text-embedding-3-small", "input": "hi"}, endpoint="/v1/embeddings")
        {'custom_id': 'q-1', 'method': 'POST', 'url': '/v1/embeddings', 'body': {'model': 'text-embedding-3-small', \
'input': 'hi'}}
    """
    problems: list[Problem] = []
    if not isinstance(custom_id, str) or not custom_id:
        problems.append(
            Problem(
                rule="missing_custom_id",
                message=f"custom_id is {custom_id!r}, not a non-empty string",
                fix="pass a unique, non-empty string custom_id",
                param="custom_id",
            )
        )
    if endpoint not in BATCH_ENDPOINTS:
        problems.append(
            Problem(
                rule="unknown_endpoint",
                message=f"endpoint {endpoint!r} is not a Batch API endpoint",
                fix=_endpoint_fix(endpoint),
                param="endpoint",
            )
        )
    if problems:
        raise InputValidationError(problems)
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": dict(body)}


_FIRST_KEYS = ("custom_id", "method", "url", "body")


def _normalise(item: Any, endpoint: str | None) -> dict[str, Any] | None:
    if isinstance(item, RequestLine):
        raw = item.model_dump()
    elif isinstance(item, Mapping):
        raw = dict(item)
    else:
        return None
    raw.setdefault("method", "POST")
    if endpoint is not None:
        raw.setdefault("url", endpoint)
    body = raw.get("body")
    if isinstance(body, Mapping) and not isinstance(body, dict):
        raw["body"] = dict(body)
    # The usual key order, whatever order the caller built the dict in: easier to read.
    obj = {k: raw[k] for k in _FIRST_KEYS if k in raw}
    obj.update(raw)
    return obj


def _temp_path(target: Path) -> Path:
    # Same directory as the target so the final os.replace is an atomic rename, never a copy.
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def write_requests(
    requests: Iterable[RequestLine | Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    azure: bool = False,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> FileReport:
    """Write requests to a JSONL file, validating on the way; the file appears only if valid.

    Each item (a :class:`~batch_ops.models.RequestLine` or a mapping) gets ``method`` "POST"
    and ``url`` = ``endpoint`` when missing, and is checked by the same rules as
    :func:`check_file`. Lines stream to a temporary file in the target's directory, renamed
    over ``path`` only when every line is valid: a failed write leaves no file behind (and
    an existing file at ``path`` untouched).

    Args:
        requests: The requests, consumed once (a generator is fine: memory stays flat).
        path: The file to write.
        endpoint: The batch endpoint; fills missing ``url`` values and must equal every one.
        max_lines: Most requests allowed.
        max_bytes: Largest file allowed.
        max_embedding_inputs: Most embedding inputs allowed in a ``/v1/embeddings`` file.
        max_problems: Stop after this many findings.
        azure: Azure OpenAI's spelling: missing ``url`` values are written as Azure documents them
            (``/chat/completions``), and either spelling is accepted.
        max_line_bytes: Longest request line allowed (``line_too_large``).

    Returns:
        The report of the written file.

    Raises:
        InputValidationError: Any request broke a rule (nothing is written).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "emb.jsonl")
        >>> write_requests(({"custom_id": f"e-{i}", "body": {"model": "m", "input": ["a", "b"]}}
        ...                 for i in range(3)), path, endpoint="/v1/embeddings").embedding_inputs
        6
        >>> open(path).readline()
        '{"custom_id":"e-0","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":["a","b"]}}\\n'
    """
    target = Path(path)
    checker = _Checker(
        endpoint=endpoint,
        max_lines=max_lines,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
        max_problems=max_problems,
        azure=azure,
        max_line_bytes=max_line_bytes,
    )
    # Written through a temporary file (fsynced: it is about to be uploaded, maybe by another
    # process) and renamed; a problem anywhere leaves nothing behind.
    with atomic_file(target) as out:
        n = 0
        for item in requests:
            n += 1
            obj = _normalise(item, azure_endpoint(endpoint) if azure and endpoint else endpoint)
            data = b""
            if obj is None:
                reason = f"item {n} is a {type(item).__name__}, not a RequestLine or a mapping"
            else:
                try:
                    data = _ENCODER.encode(obj).encode("utf-8") + b"\n"
                    reason = ""
                except (TypeError, ValueError, RecursionError) as exc:
                    reason = f"the request cannot be written as JSON: {exc}"
            if obj is None or reason:
                checker.lines = n
                checker.add(
                    Problem(
                        rule="invalid_json_line",
                        message=reason,
                        fix="pass RequestLine objects or dicts of JSON values (str, int, float, bool, None, "
                        "list, dict; no NaN)",
                        line=n,
                    )
                )
            else:
                assert obj is not None
                checker.check_obj(n, obj, len(data))
                if not checker.problems:
                    # Once anything is wrong the file will be thrown away: stop writing, keep checking.
                    out.write(data)
            if checker.truncated:
                break
        checker.finish()
        if checker.problems:
            raise InputValidationError(checker.problems, source=str(target), truncated=checker.truncated)
    return checker.report(str(target))


# ---------------------------------------------------------------------------------------
# Shard
# ---------------------------------------------------------------------------------------
def shard_file(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_lines: int = DEFAULT_MAX_LINES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS,
    endpoint: str | None = None,
    prefix: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> list[Path]:
    """Validate a request file and split it into parts that each fit every limit.

    Lines are copied whole, byte for byte and in order (a UTF-8 byte-order mark is dropped),
    so the parts concatenated give the input back. A file already within the limits gives
    one part. The per-line rules apply to the whole file (custom_ids are unique across all
    parts, and every part has the same url and model), so results of the parts can be
    joined together. Reads and writes stream; parts appear only when the whole input is valid.

    Args:
        path: The request file.
        out_dir: Directory for the parts (created if needed).
        max_lines: Most requests per part.
        max_bytes: Largest part in bytes.
        max_embedding_inputs: Most embedding inputs per part (``/v1/embeddings``).
        endpoint: The batch endpoint every ``url`` must equal; ``None`` takes the first line's.
        prefix: Part names are ``{prefix}-001.jsonl``, ...; defaults to the input's stem.
        max_line_bytes: Longest line allowed (``line_too_large``): memory holds at most one such line.

    Returns:
        The parts, in order.

    Raises:
        InputValidationError: A line breaks a rule, or one line alone is over a limit.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> src = os.path.join(d, "big.jsonl")
        >>> _ = write_requests([request_line(f"q-{i}", {"model": "m"}, endpoint="/v1/responses")
        ...                     for i in range(5)], src)
        >>> [p.name for p in shard_file(src, os.path.join(d, "parts"), max_lines=2)]
        ['big-001.jsonl', 'big-002.jsonl', 'big-003.jsonl']
    """
    src = os.fspath(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = prefix if prefix is not None else Path(src).stem
    checker = _Checker(
        endpoint=endpoint,
        max_lines=None,
        max_bytes=max_bytes,
        max_embedding_inputs=max_embedding_inputs,
        max_problems=DEFAULT_MAX_PROBLEMS,
        per_line_limits=True,
        max_line_bytes=max_line_bytes,
    )
    temps: list[Path] = []
    part: IO[bytes] | None = None
    part_lines = part_bytes = part_inputs = 0
    try:
        not_regular = _not_regular(src)
        if not_regular is not None:
            raise InputValidationError([not_regular], source=src)
        with open(src, "rb") as f:
            n = 0
            for raw in read_lines(f, limit=max_line_bytes):
                n += 1
                if raw is None:
                    checker.too_large(n)
                    break
                checker.feed_bytes(n, raw)
                if checker.truncated:
                    break
                if checker.problems:
                    continue
                if n == 1 and raw.startswith(_BOM):
                    raw = raw[3:]
                size, inputs = len(raw), checker.line_inputs
                if (
                    part is None
                    or part_lines + 1 > max_lines
                    or part_bytes + size > max_bytes
                    or part_inputs + inputs > max_embedding_inputs
                ):
                    if part is not None:
                        part.close()
                    tmp = out / f".{stem}-{len(temps) + 1}.{secrets.token_hex(4)}.tmp"
                    temps.append(tmp)
                    part = open(tmp, "xb", buffering=1 << 20)  # closed on rollover or in the handler below
                    part_lines = part_bytes = part_inputs = 0
                part.write(raw)
                part_lines += 1
                part_bytes += size
                part_inputs += inputs
        if part is not None:
            part.close()
            part = None
        checker.finish()
        if checker.problems:
            raise InputValidationError(checker.problems, source=src, truncated=checker.truncated)
        width = max(3, len(str(len(temps))))
        parts = [out / f"{stem}-{i:0{width}d}.jsonl" for i in range(1, len(temps) + 1)]
        for final in parts:
            _check_part(final)  # every name first: no part is written unless all can be
        for tmp, final in zip(temps, parts, strict=True):
            os.replace(tmp, final)
        return parts
    except BaseException:
        if part is not None:
            part.close()
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _check_part(final: Path) -> None:
    """A part replaces a regular file of that name, or none; never a link, a FIFO, a device or a folder.

    A part is read back to be uploaded, so it must be a file here: what else sits at its name is the
    user's, and renaming over it would destroy it (a FIFO) or leave the link's target stale.
    """
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(final).st_mode
        if not stat.S_ISREG(mode):
            what = "a link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise InputValidationError(
                [Problem(rule="invalid_output", param="out_dir", message=f"{final} is {what}: a part cannot go there",
                         fix="remove it, or choose another output folder for the parts")], source=str(final))


def filter_requests(
    path: str | os.PathLike[str], *, exclude: set[str], dest: str | os.PathLike[str]
) -> int:
    """Copy the request lines of ``path`` whose ``custom_id`` is not in ``exclude`` to ``dest``.

    Lines are copied byte for byte (a request carried to a new attempt is the request the first
    attempt was validated with). Returns how many lines ``dest`` holds; ``dest`` is written
    whole or not at all.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> src, dst = os.path.join(d, "in.jsonl"), os.path.join(d, "rest.jsonl")
        >>> _ = write_requests([request_line(c, {"model": "m"}, endpoint="/v1/responses") for c in "abc"], src)
        >>> filter_requests(src, exclude={"a", "c"}, dest=dst), [r["custom_id"] for _, r in iter_request_lines(dst)]
        (1, ['b'])
    """
    kept = 0

    def lines() -> Iterator[bytes]:
        nonlocal kept
        with open(os.fspath(path), "rb") as f:
            for n, raw in enumerate(read_lines(f), start=1):
                if raw is None:  # the file passed validation, so only a file changed since gets here
                    raise InputValidationError([_line_too_large(n, MAX_LINE_BYTES)], source=os.fspath(path))
                line = raw[3:] if n == 1 and raw.startswith(_BOM) else raw
                if not line.strip():
                    continue
                obj = _DECODER.decode(line.decode("utf-8"))
                if isinstance(obj, dict) and obj.get("custom_id") in exclude:
                    continue
                kept += 1
                yield line if line.endswith(b"\n") else line + b"\n"

    atomic_write(dest, lines())
    return kept

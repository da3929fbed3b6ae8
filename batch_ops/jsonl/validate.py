"""Checking a request file against the rules: the checker, fed one line at a time, and the file-level checks.

:class:`Checker` holds every rule of :mod:`batch_ops.jsonl.rules` that spans lines (unique
``custom_id`` values, one ``url`` and one model per file, the size and input limits) and is fed
one line at a time, whether the line comes from a file on disk (:func:`check_file`, and
:func:`~batch_ops.jsonl.shard_file`) or from an object about to be written
(:func:`~batch_ops.jsonl.write_requests`): all three agree on the rules and on the words of each
fix. :func:`check_file` reads a file once, through :func:`~batch_ops.jsonl.read.iter_lines`, and
returns what it found; :func:`validate_file` raises it; :func:`request_file` refuses a path that
names no request file before anything else is done.

Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "requests.jsonl")
    >>> line = '{"custom_id": "q-%d", "method": "POST", "url": "/v1/responses", "body": {"model": "m"}}\\n'
    >>> _ = open(path, "w").write(line % 1 + line % 1)
    >>> report, problems = check_file(path)
    >>> report.lines, [str(p) for p in problems]  # doctest: +ELLIPSIS
    (2, ["line 2: duplicate_custom_id: custom_id 'q-1' repeats line 1 (fix: make every custom_id unique; ...)"])
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from batch_ops.errors import InputValidationError, Problem
from batch_ops.jsonl.read import CHUNK, iter_lines
from batch_ops.jsonl.rules import (
    DECODER,
    EXAMPLE_LINE,
    FileReport,
    LineShape,
    RuleOptions,
    Rules,
    describe,
    embedding_input_count,
    invalid_json,
    line_too_large,
    not_an_object,
    not_regular,
    size_text,
    unknown_endpoint,
)
from batch_ops.models import BATCH_ENDPOINTS, canonical_endpoint

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["Checker", "check_file", "request_file", "validate_file"]

_EMBEDDINGS = "/v1/embeddings"


class Checker:
    """The validation rules, fed one line at a time; shared by check, write and shard.

    Why a class: the three entry points read lines differently (bytes from a file, objects
    from an iterable) but must agree exactly on the rules and the wording of the fixes.

    Examples:
        >>> checker = Checker(Rules(endpoint="/v1/responses"))
        >>> checker.feed(1, b'{"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": {}}', 80)
        >>> checker.feed(2, b"[]", 2)
        >>> checker.finish(); [(p.line, p.rule) for p in checker.problems]
        [(2, 'invalid_json_line')]
    """

    def __init__(self, rules: Rules, *, per_line_limits: bool = False) -> None:
        endpoint = rules.endpoint
        # Azure OpenAI spells endpoints without /v1 (``/chat/completions``): compare what they mean.
        self.azure = rules.azure
        if rules.azure:
            endpoint = canonical_endpoint(endpoint)
        self.max_lines = rules.max_lines
        self.max_bytes = rules.max_bytes
        self.max_line_bytes = rules.max_line_bytes
        self.max_inputs = rules.max_embedding_inputs
        self.max_problems = max(1, rules.max_problems)
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
        self.shape: LineShape = rules.shape
        if endpoint is not None and endpoint not in BATCH_ENDPOINTS and rules.shape.method_url:
            self.add(unknown_endpoint(endpoint, param="endpoint"))

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
    def feed(self, n: int, raw: bytes, size: int) -> None:
        """Check line ``n``: ``raw`` as :func:`~batch_ops.jsonl.read.iter_lines` gives it, ``size`` bytes on disk."""
        try:
            obj = DECODER.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._count(n, size, blank=not raw.strip())
            self.add(invalid_json(n, raw, exc))
            self.line_inputs = 0
            return
        if type(obj) is not dict:
            self._count(n, size, blank=False)
            self.add(not_an_object(n, obj))
            self.line_inputs = 0
            return
        self.check_obj(n, obj, size)

    def _count(self, n: int, size: int, *, blank: bool) -> None:
        self.lines = n
        if not blank:
            self.nonblank += 1
        self.bytes += size
        self._check_size(n, size)

    def check_obj(self, n: int, obj: dict[str, Any], size: int) -> None:
        """Check one parsed request object that occupies ``size`` bytes on disk."""
        if not self.shape.method_url:
            self._check_shaped(n, obj, size)
            return
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
            what = "is missing" if body is None else f"is a JSON {describe(body)}, not an object"
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

    def _check_shaped(self, n: int, obj: dict[str, Any], size: int) -> None:
        """A line of a batch API without ``method``/``url`` (Anthropic's ``{custom_id, params}``): its id
        (present, unique, of the shape's pattern) and its body (an object naming a model)."""
        shape = self.shape
        self.lines = n
        self.nonblank += 1
        self.bytes += size
        self.line_inputs = 0
        ident, body = obj.get(shape.id_field), obj.get(shape.body_field)
        example = f"a line looks like {shape.example}"
        if type(ident) is not str or not ident:
            self.add(Problem(rule="missing_custom_id", line=n, param=shape.id_field,
                             message=f"{shape.id_field} is missing or not a non-empty string",
                             fix=f"give every line a unique {shape.id_field}; {example}"))
        elif (first := self.seen.setdefault(ident, n)) != n:
            self.add(Problem(rule="duplicate_custom_id", line=n, param=shape.id_field,
                             message=f"{shape.id_field} {ident!r} repeats line {first}",
                             fix=f"make every {shape.id_field} unique; {ident!r} first appears on line {first}"))
        elif shape.id_pattern and re.fullmatch(shape.id_pattern, ident) is None:
            self.add(Problem(rule="invalid_custom_id", line=n, param=shape.id_field,
                             message=f"{shape.id_field} {ident!r} does not match {shape.id_pattern}",
                             fix=f"use only the characters and length {shape.id_pattern} allows; {example}"))
        if type(body) is not dict:
            self.add(Problem(rule="missing_body", line=n, param=shape.body_field,
                             message=f"{shape.body_field} is missing or not an object",
                             fix=f"put the request in a JSON object under {shape.body_field!r}; {example}"))
        elif shape.model_in_body and (type(body.get("model")) is not str or not body.get("model")):
            self.add(Problem(rule="missing_model", line=n, param=f"{shape.body_field}.model",
                             message=f"{shape.body_field}.model is missing", fix=f"name the model; {example}"))
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
                self.add(unknown_endpoint(url, param="url", line=n))
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
            self.add(line_too_large(n, self.max_line_bytes))
        if self.per_line_limits:
            if size > self.max_bytes and not self._over_bytes:
                self._over_bytes = True
                self.add(
                    Problem(
                        rule="file_too_large",
                        message=f"this one line is {size:,} bytes, over the {size_text(self.max_bytes)} file limit",
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
                    message=f"the file passes the {size_text(self.max_bytes)} limit at line {n:,} "
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
        self.add(line_too_large(n, self.max_line_bytes))

    # -- end of file -------------------------------------------------------------------
    def finish(self) -> None:
        if self.nonblank == 0 and not self.truncated:
            # A file of nothing (or only blank lines) is one finding, not one per blank line.
            self.problems = [p for p in self.problems if p.rule != "invalid_json_line"]
            self.problems.append(
                Problem(
                    rule="empty_file",
                    message="the file holds no requests",
                    fix=f"write at least one request line, e.g. {EXAMPLE_LINE}",
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


def _finish_reading(f: IO[bytes], checker: Checker) -> None:
    # After truncation, still count lines and bytes (cheaply, without parsing, a piece at a time:
    # never a whole line) so the report tells the true size of the file.
    newlines, last = 0, b"\n"
    while chunk := f.read(CHUNK):
        newlines += chunk.count(b"\n")
        checker.bytes += len(chunk)
        last = chunk[-1:]
    checker.lines += newlines + (last != b"\n")


def _crossing_line(f: IO[bytes], limit: int) -> int:
    """The number of the line that carries the file past ``limit`` bytes, reading at most that far."""
    line, read = 1, 0
    while read <= limit:
        chunk = f.read(min(CHUNK, limit + 1 - read))
        if not chunk:
            break
        line += chunk.count(b"\n", 0, max(0, min(len(chunk), limit - read)))
        read += len(chunk)
    return line


def check_file(path: str | os.PathLike[str], **options: Unpack[RuleOptions]) -> tuple[FileReport, list[Problem]]:
    """Check a request file against the Batch API's input rules; never raises on a bad file.

    Reads the file once, line by line as bytes. Findings are capped at ``max_problems``;
    ``report.truncated`` says there were more.

    Args:
        path: The JSONL request file.
        **options: The endpoint and the limits (:class:`~batch_ops.jsonl.rules.Rules`): ``endpoint``
            (every ``url`` must equal it; ``None`` takes the first line's), ``max_lines``, ``max_bytes``,
            ``max_embedding_inputs``, ``max_problems``, ``azure``, ``max_line_bytes``.

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
    rules = Rules(**options)
    name = os.fspath(path)
    checker = Checker(rules)
    odd = not_regular(name)
    if odd is not None:
        checker.add(odd)
        return checker.report(name), checker.problems
    size = os.path.getsize(name)
    if size > rules.max_bytes:
        # Known from the file's metadata: a 3 GB file is not read whole to say so. Only the bytes up
        # to the limit are scanned, to name the line where a split must happen.
        with open(name, "rb") as f:
            line = _crossing_line(f, rules.max_bytes)
        checker.bytes = size
        checker.add(Problem(rule="file_too_large", line=line,
                            message=f"the file is {size:,} bytes, over the {size_text(rules.max_bytes)} limit "
                                    f"from line {line:,}",
                            fix="split the file with batch_ops.jsonl.shard_file() (or run it as a job: "
                                "batch-ops job) and submit one batch per part"))
        return checker.report(name), checker.problems
    feed = checker.feed
    with open(name, "rb") as f:
        for n, _offset, line_size, raw in iter_lines(f, limit=rules.max_line_bytes):
            if raw is None:
                checker.too_large(n)
                checker.bytes = size
                break
            feed(n, raw, line_size)
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
    odd = not_regular(os.fspath(found)) if found.exists() and not found.is_dir() else None
    if odd is not None:
        raise InputValidationError([odd], source=str(found))
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


def validate_file(path: str | os.PathLike[str], **options: Unpack[RuleOptions]) -> FileReport:
    """Check a request file and raise if anything is wrong; the same options as :func:`check_file`.

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
    report, problems = check_file(path, **options)
    if problems:
        raise InputValidationError(problems, source=os.fspath(path), truncated=report.truncated)
    return report

"""Writing request files: one request line, a whole file validated on the way, and the requests a retry still needs.

:func:`request_line` builds one request; :func:`write_requests` writes requests (dicts or
:class:`~batch_ops.models.RequestLine` objects, from any iterable) to a file that appears only when
every line passed the rules (:class:`~batch_ops.jsonl.validate.Checker`, the same as for a file
on disk); :func:`filter_requests` copies the lines of a file whose ``custom_id`` is not excluded,
byte for byte, for the next attempt of a batch. All three stream: memory holds one line (and the
``custom_id`` values seen, to find duplicates).

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> path, rest = os.path.join(d, "requests.jsonl"), os.path.join(d, "rest.jsonl")
    >>> write_requests((request_line(f"q-{i}", {"model": "m", "input": "hi"}, endpoint="/v1/responses")
    ...                 for i in range(3)), path).lines
    3
    >>> filter_requests(path, exclude={"q-0", "q-2"}, dest=rest), open(rest).read()
    (1, '{"custom_id":"q-1","method":"POST","url":"/v1/responses","body":{"model":"m","input":"hi"}}\\n')
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_ops._files import atomic_file, atomic_write
from batch_ops.errors import InputValidationError, Problem
from batch_ops.jsonl.neutral import ChatRequest, is_neutral, translate
from batch_ops.jsonl.read import iter_lines, iter_request_lines
from batch_ops.jsonl.rules import (
    DECODER,
    ENCODER,
    MAX_LINE_BYTES,
    FileReport,
    LineShape,
    RuleOptions,
    Rules,
    line_too_large,
    unknown_endpoint,
)
from batch_ops.jsonl.validate import Checker
from batch_ops.models import BATCH_ENDPOINTS, RequestLine, azure_endpoint

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["filter_requests", "holds_neutral_requests", "request_line", "translate_file", "write_requests"]


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
        problems.append(unknown_endpoint(endpoint, param="endpoint"))
    if problems:
        raise InputValidationError(problems)
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": dict(body)}


def _normalise(item: Any, endpoint: str | None, shape: LineShape) -> dict[str, Any] | None:
    if isinstance(item, RequestLine):
        raw = item.model_dump()
    elif isinstance(item, Mapping):
        raw = dict(item)
    else:
        return None
    if shape.method_url:
        # Only lines that carry them get the defaults: another batch API's line has no method or url.
        raw.setdefault("method", "POST")
        if endpoint is not None:
            raw.setdefault("url", endpoint)
    body = raw.get(shape.body_field)
    if isinstance(body, Mapping) and not isinstance(body, dict):
        raw[shape.body_field] = dict(body)
    # The usual key order, whatever order the caller built the dict in: easier to read.
    first = (shape.id_field, "method", "url", shape.body_field) if shape.method_url else (shape.id_field,
                                                                                        shape.body_field)
    obj = {k: raw[k] for k in first if k in raw}
    obj.update(raw)
    return obj


def _translate(item: Any, n: int, endpoint: str | None, shape: LineShape, checker: Checker,
               model: str | None = None) -> dict[str, Any] | None:
    """Request ``n``, a neutral chat request, as ``shape``'s native line (``model`` for one that names
    none); its findings go to ``checker``."""
    try:
        done = translate(item, shape.name, id_field=shape.id_field, body_field=shape.body_field,
                         method_url=shape.method_url, endpoint=endpoint, model=model)
    except InputValidationError as exc:
        checker.lines = n
        for problem in exc.problems:
            checker.add(replace(problem, line=n))
        return None
    if not shape.model_in_body:
        checker.batch_model(n, done.model)  # the batch's model: every line must want the same one
    return done.line


def write_requests(
    requests: Iterable[RequestLine | ChatRequest | Mapping[str, Any]],
    path: str | os.PathLike[str],
    **options: Unpack[RuleOptions],
) -> FileReport:
    """Write requests to a JSONL file, validating on the way; the file appears only if valid.

    Each item is a native line (a :class:`~batch_ops.models.RequestLine` or a mapping), which gets
    ``method`` "POST" and ``url`` = ``endpoint`` when missing (if the line shape has them), or a
    provider-neutral chat request (a :class:`~batch_ops.jsonl.neutral.ChatRequest`, or a mapping with
    top-level ``messages``), translated for the line shape's provider (``shape.name``); every line
    is checked by the same rules as :func:`~batch_ops.jsonl.check_file`. Lines stream to a temporary
    file in the target's directory, renamed over ``path`` only when every line is valid: a failed
    write leaves no file behind (and an existing file at ``path`` untouched).

    Args:
        requests: The requests, consumed once (a generator is fine: memory stays flat).
        path: The file to write.
        **options: The endpoint and the limits, as for :func:`~batch_ops.jsonl.check_file`
            (:class:`~batch_ops.jsonl.rules.Rules`). ``endpoint`` also fills missing ``url`` values (in
            Azure OpenAI's spelling, ``/chat/completions``, with ``azure``).

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
    rules = Rules(**options)
    target = Path(path)
    checker = Checker(rules)
    endpoint = azure_endpoint(rules.endpoint) if rules.azure and rules.endpoint else rules.endpoint
    # Written through a temporary file (fsynced: it is about to be uploaded, maybe by another
    # process) and renamed; a problem anywhere leaves nothing behind.
    with atomic_file(target) as out:
        n = 0
        for item in requests:
            n += 1
            if is_neutral(item):
                translated = _translate(item, n, endpoint, rules.shape, checker, rules.model)
                if translated is None:
                    if checker.truncated:
                        break
                    continue
                item = translated
            obj = _normalise(item, endpoint, rules.shape)
            data = b""
            if obj is None:
                reason = f"item {n} is a {type(item).__name__}, not a RequestLine or a mapping"
            else:
                try:
                    data = ENCODER.encode(obj).encode("utf-8") + b"\n"
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


def holds_neutral_requests(path: str | os.PathLike[str]) -> bool:
    """Whether the request file at ``path`` holds provider-neutral chat requests (its first request is one),
    to be translated with :func:`translate_file`, rather than native lines. Reads one line.

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "evals.jsonl")
        >>> _ = open(path, "w").write('{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\\n')
        >>> holds_neutral_requests(path)
        True
    """
    try:
        for _n, request in iter_request_lines(path):
            return is_neutral(request)
    except InputValidationError:
        return False  # not a request file at all: the checker says why, line by line
    return False


def translate_file(
    path: str | os.PathLike[str], dest: str | os.PathLike[str], **options: Unpack[RuleOptions]
) -> FileReport:
    """Write the requests of ``path`` (neutral chat requests, or native lines: each passes as it is) to
    ``dest`` in the line shape of ``options`` (its provider's), validated as by :func:`write_requests`.
    Streamed: memory holds one request.

    Raises:
        InputValidationError: A request cannot be said in this shape, or a line breaks a rule.
    """
    return write_requests((request for _n, request in iter_request_lines(path)), dest, **options)


def filter_requests(
    path: str | os.PathLike[str], *, exclude: set[str], dest: str | os.PathLike[str], id_field: str = "custom_id"
) -> int:
    """Copy the request lines of ``path`` whose ``custom_id`` is not in ``exclude`` to ``dest``.

    Lines are copied byte for byte (a request carried to a new attempt is the request the first
    attempt was validated with). Returns how many lines ``dest`` holds; ``dest`` is written
    whole or not at all. ``id_field`` is the field that names a request in this file
    (:attr:`LineShape.id_field <batch_ops.jsonl.rules.LineShape.id_field>`: Gemini's ``key``).

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> src, dst = os.path.join(d, "in.jsonl"), os.path.join(d, "rest.jsonl")
        >>> _ = write_requests([request_line(c, {"model": "m"}, endpoint="/v1/responses") for c in "abc"], src)
        >>> from batch_ops.jsonl import iter_request_lines
        >>> filter_requests(src, exclude={"a", "c"}, dest=dst), [r["custom_id"] for _, r in iter_request_lines(dst)]
        (1, ['b'])
    """
    kept = 0

    def lines() -> Iterator[bytes]:
        nonlocal kept
        with open(os.fspath(path), "rb") as f:
            for n, _offset, _size, line in iter_lines(f):
                if line is None:  # the file passed validation, so only a file changed since gets here
                    raise InputValidationError([line_too_large(n, MAX_LINE_BYTES)], source=os.fspath(path))
                if not line.strip():
                    continue
                obj = DECODER.decode(line.decode("utf-8"))
                if isinstance(obj, dict) and obj.get(id_field) in exclude:
                    continue
                kept += 1
                yield line if line.endswith(b"\n") else line + b"\n"

    atomic_write(dest, lines())
    return kept

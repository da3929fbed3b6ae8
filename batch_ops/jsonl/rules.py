"""What a request file must be: the limits, the options of a check, the report, and how each finding is worded.

The Batch API's limits are the defaults of :class:`Rules`, the one set of options that
:func:`~batch_ops.jsonl.check_file`, :func:`~batch_ops.jsonl.validate_file`,
:func:`~batch_ops.jsonl.write_requests` and :func:`~batch_ops.jsonl.shard_file` take as keyword
arguments (:class:`RuleOptions`). Every finding is a :class:`~batch_ops.errors.Problem` worded here
or by the checker (:mod:`batch_ops.jsonl.validate`), so a file checked on disk, written from dicts
or read back says the same thing. Its ``rule`` is the OpenAI API's own error code where one exists
(``invalid_json_line``, ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``,
``empty_file``, ``too_many_tasks``) and a client-side code otherwise (``missing_custom_id``,
``invalid_method``, ``missing_body``, ``unknown_endpoint``, ``file_too_large``, ``line_too_large``,
``too_many_embedding_inputs``, ``not_a_regular_file``; and, for batch APIs whose lines are shaped
otherwise (:class:`LineShape`), ``invalid_custom_id``, ``missing_model``, ``unexpected_field``).

Line rules, decided to match the JSON Lines format the API reads: a single newline at the end
of the file is a line terminator and fine; any empty or whitespace-only line (in the middle
*or* after the final newline) is an ``invalid_json_line``. A UTF-8 byte-order mark before the
first line and CRLF line endings are accepted. NaN and Infinity are not JSON, whatever Python's
``json`` accepts.

Examples:
    >>> rules = Rules(endpoint="/v1/embeddings")
    >>> rules.max_lines, rules.max_bytes // 2**20, rules.max_line_bytes // 2**20
    (50000, 200, 50)
    >>> line_too_large(7, MAX_LINE_BYTES).message  # doctest: +ELLIPSIS
    'the line is longer than 52,428,800 bytes (50 MB), the most one batch request may carry: ...'
    >>> endpoint_fix("/v1/chat/completion")
    "did you mean '/v1/chat/completions'? use one of /v1/responses, /v1/chat/completions, ..."
"""

from __future__ import annotations

import difflib
import json
import os
import stat
from dataclasses import dataclass
from typing import Any, TypedDict

from batch_ops.errors import Problem
from batch_ops.models import BATCH_ENDPOINTS

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_EMBEDDING_INPUTS",
    "DEFAULT_MAX_LINES",
    "DEFAULT_MAX_PROBLEMS",
    "MAX_LINE_BYTES",
    "OPENAI_LINES",
    "FileReport",
    "LineShape",
    "RuleOptions",
    "Rules",
    "embedding_input_count",
]

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

#: A request line as the fixes show it.
EXAMPLE_LINE = '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}'


@dataclass(frozen=True, kw_only=True)
class LineShape:
    """How one batch API shapes a request line: a dialect's data (``Dialect.line_shape``), read by the checker.

    Attributes:
        name: The request vocabulary (``"openai"``, ``"anthropic"``, ``"gemini"``): which translation
            of a neutral request applies.
        id_field: The field that names a request and joins its result (``custom_id``; Gemini: ``key``).
        id_pattern: A regular expression every id must match in full, or None (any non-empty string);
            an id that does not is an ``invalid_custom_id``.
        body_field: The field holding the request itself (``body``; Anthropic: ``params``; Gemini: ``request``).
        method_url: Each line carries ``method`` and ``url`` (OpenAI's files); else they are not part of a
            line, and a line that has them is an ``unexpected_field``.
        model_in_body: The body names its ``model``; ``one_model``: every line the same one
            (``model_mismatch``), else each line must name its own (``missing_model``).
        example: A line of this shape, as the fixes show it.

    Examples:
        >>> OPENAI_LINES.id_field, OPENAI_LINES.body_field, OPENAI_LINES.method_url
        ('custom_id', 'body', True)
        >>> from batch_ops.jsonl.validate import Checker
        >>> keyed = LineShape(name="gemini", id_field="key", body_field="request", method_url=False,
        ...                   model_in_body=False, example='{"key": "req-1", "request": {"contents": [...]}}')
        >>> checker = Checker(Rules(shape=keyed))
        >>> checker.feed(1, b'{"key": "a", "request": {"contents": []}}', 40)
        >>> checker.feed(2, b'{"custom_id": "b", "body": {}}', 30)
        >>> [(p.line, p.rule, p.message) for p in checker.problems]
        [(2, 'missing_custom_id', 'key is missing'), (2, 'missing_body', 'request is missing')]
    """

    name: str = "openai"
    id_field: str = "custom_id"
    id_pattern: str | None = None
    body_field: str = "body"
    method_url: bool = True
    model_in_body: bool = True
    one_model: bool = True
    example: str = EXAMPLE_LINE


#: OpenAI's request line (``custom_id``, ``method``, ``url``, ``body`` with one ``model`` per file).
OPENAI_LINES = LineShape()


@dataclass(frozen=True, kw_only=True)
class Rules:
    """What a request file is checked against: its endpoint, the limits, and how many findings to keep.

    The entry points take these as keyword arguments (typed by :class:`RuleOptions`); what is not
    given is the Batch API's own limit.

    Attributes:
        endpoint: The batch endpoint every ``url`` must equal; ``None`` takes the first line's.
        max_lines: Most requests allowed (``too_many_tasks``); :func:`~batch_ops.jsonl.shard_file`: per part.
        max_bytes: Largest file allowed, in bytes (``file_too_large``); ``shard_file``: per part.
        max_embedding_inputs: Most embedding inputs in a ``/v1/embeddings`` file; ``shard_file``: per part.
        max_problems: Stop collecting findings after this many (the report says ``truncated``).
        azure: Accept Azure OpenAI's spelling of endpoints and urls (``/chat/completions``);
            ``write_requests`` fills missing ``url`` values in that spelling.
        max_line_bytes: Longest line allowed (``line_too_large``); reading stops at a longer one, so
            memory holds at most one line of this size.
        shape: How a line is shaped (the provider's :class:`LineShape`; OpenAI's by default).
        model: The model of provider-neutral chat requests that name none (a connection's model).

    Examples:
        >>> Rules(max_lines=10)  # doctest: +ELLIPSIS
        Rules(endpoint=None, max_lines=10, max_bytes=209715200, max_embedding_inputs=50000, max_problems=20, ...)
    """

    endpoint: str | None = None
    max_lines: int = DEFAULT_MAX_LINES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_embedding_inputs: int = DEFAULT_MAX_EMBEDDING_INPUTS
    max_problems: int = DEFAULT_MAX_PROBLEMS
    azure: bool = False
    max_line_bytes: int = MAX_LINE_BYTES
    shape: LineShape = OPENAI_LINES
    model: str | None = None


class RuleOptions(TypedDict, total=False):
    """The keyword arguments of ``check_file``, ``validate_file``, ``write_requests`` and ``shard_file``.

    One per field of :class:`Rules` (a test holds the two together), each optional.
    """

    endpoint: str | None
    max_lines: int
    max_bytes: int
    max_embedding_inputs: int
    max_problems: int
    azure: bool
    max_line_bytes: int
    shape: LineShape
    model: str | None


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


# ---------------------------------------------------------------------------------------
# JSON as the API reads it
# ---------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON; the API's parser rejects them.
    raise ValueError(f"{name} is not valid JSON")


class _Decoder(json.JSONDecoder):
    """``json.JSONDecoder(parse_constant=_reject_constant)`` that pickles by re-creating itself.

    Its C scanner cannot be pickled, and Prefect pickles batch_ops by value (see batch_ops.process_state).
    """

    def __init__(self) -> None:
        super().__init__(parse_constant=_reject_constant)

    def __reduce__(self) -> tuple[type[_Decoder], tuple[()]]:
        return (type(self), ())


#: Decodes one line (``DECODER.decode(text)``); built once: ``json.loads(..., parse_constant=...)``
#: would build a new decoder per call.
DECODER = _Decoder()
#: Encodes one request: compact separators and raw UTF-8 keep written files small; NaN is refused as above.
ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------
# Findings worded once
# ---------------------------------------------------------------------------------------
def describe(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages.

    Examples:
        >>> describe([]), describe(None), describe(1.5)
        ('array', 'null', 'number')
    """
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def size_text(n: int) -> str:
    """A limit in bytes, for messages.

    Examples:
        >>> size_text(DEFAULT_MAX_BYTES), size_text(1000)
        ('209,715,200-byte (200 MB)', '1,000-byte')
    """
    mb = n / (1024 * 1024)
    return f"{n:,}-byte ({mb:g} MB)" if mb >= 1 else f"{n:,}-byte"


def endpoint_fix(value: str) -> str:
    """The fix for an endpoint that is not a Batch API endpoint: the closest one, and the list."""
    close = difflib.get_close_matches(value, BATCH_ENDPOINTS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}use one of {', '.join(BATCH_ENDPOINTS)}"


def unknown_endpoint(value: str, *, param: str, line: int | None = None) -> Problem:
    """``unknown_endpoint``: ``value`` (the ``endpoint`` asked for, or a line's ``url``) is no Batch API endpoint."""
    return Problem(rule="unknown_endpoint", message=f"{param} {value!r} is not a Batch API endpoint",
                   fix=endpoint_fix(value), line=line, param=param)


def line_too_large(n: int, limit: int) -> Problem:
    """``line_too_large``: line ``n`` is longer than ``limit`` bytes (and reading stopped there)."""
    return Problem(rule="line_too_large", line=n,
                   message=f"the line is longer than {limit:,} bytes ({limit / 2**20:g} MB), the most one batch "
                   "request may carry: OpenAI takes at most 50 MB per request (reading stopped there)",
                   fix="make the request smaller: send images and files by URL or by file id (uploaded with "
                   "purpose user_data) rather than inline base64, or split it into several requests")


def not_regular(name: str) -> Problem | None:
    """``not_a_regular_file`` when ``name`` is a device, a pipe or a directory (nothing to read whole), else None."""
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return None  # open() will say what is wrong
    if stat.S_ISREG(mode):
        return None
    kind = "a directory" if stat.S_ISDIR(mode) else "a device or a pipe, not a regular file"
    return Problem(rule="not_a_regular_file", message=f"{name} is {kind}",
                   fix="pass the path of a JSONL request file on disk", param="path")


def invalid_json(n: int, raw: bytes, exc: BaseException) -> Problem:
    """``invalid_json_line``: line ``n`` (``raw``, without a byte-order mark) did not parse, for the reason ``exc``."""
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
    return Problem(rule="invalid_json_line", message=message, fix=fix, line=n)


def not_an_object(n: int, value: Any, *, example: str = EXAMPLE_LINE) -> Problem:
    """``invalid_json_line``: line ``n`` parsed, but to ``value``, not a JSON object (``example``: a good line)."""
    return Problem(
        rule="invalid_json_line",
        message=f"the line is a JSON {describe(value)}, not an object",
        fix=f"make every line one JSON request object, e.g. {example}",
        line=n,
    )

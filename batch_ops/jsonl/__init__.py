"""Request files: write, validate, shard, filter and read them (result files: :mod:`batch_ops.results`).

A batch input file holds one JSON request object per line. Everything here reads and writes
line by line as bytes, so memory stays flat however large the file is (the one exception is the
set of ``custom_id`` values, needed to find duplicates and to join results). The package's
modules, each importable on its own, and every public name here:

* :mod:`~batch_ops.jsonl.rules`: the limits (:data:`MAX_LINE_BYTES`, ...), :class:`Rules` (the
  options every entry point takes, typed as :class:`RuleOptions`), :class:`FileReport`, and the
  words of each finding;
* :mod:`~batch_ops.jsonl.read`: the one line reader, :func:`iter_lines` (over :func:`read_lines`),
  and :func:`iter_request_lines`;
* :mod:`~batch_ops.jsonl.validate`: :func:`check_file`, :func:`validate_file`, :func:`request_file`;
* :mod:`~batch_ops.jsonl.write`: :func:`request_line`, :func:`write_requests`, :func:`filter_requests`,
  :func:`holds_neutral_requests`, :func:`translate_file` (neutral chat requests, :mod:`batch_ops.jsonl.neutral`);
* :mod:`~batch_ops.jsonl.shard`: :func:`shard_file`;
* :mod:`~batch_ops.jsonl.neutral`: :class:`ChatRequest`, provider-neutral chat requests, and their
  translation into each provider's line (``translate``).

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> path = os.path.join(d, "requests.jsonl")
    >>> report = write_requests(
    ...     [request_line(f"q-{i}", {"model": "gpt-4o-mini", "messages": []}, endpoint="/v1/chat/completions")
    ...      for i in range(3)], path)
    >>> report.lines, report.endpoint, report.model
    (3, '/v1/chat/completions', 'gpt-4o-mini')
    >>> check_file(path, max_lines=2)[1][0].rule
    'too_many_tasks'
    >>> [p.name for p in shard_file(path, os.path.join(d, "parts"), max_lines=2)]
    ['requests-001.jsonl', 'requests-002.jsonl']
    >>> filter_requests(path, exclude={"q-0"}, dest=os.path.join(d, "rest.jsonl"))
    2
    >>> [request["custom_id"] for _, request in iter_request_lines(os.path.join(d, "rest.jsonl"))]
    ['q-1', 'q-2']
    >>> with open(path, "rb") as f:
    ...     [(line.number, line.size) for line in iter_lines(f)]
    [(1, 110), (2, 110), (3, 110)]
    >>> validate_file(path, endpoint="/v1/embeddings")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    batch_ops.errors.InputValidationError: .../requests.jsonl: 3 problems:
      line 1: url_mismatch: url '/v1/chat/completions' differs from the batch endpoint '/v1/embeddings' ...
    ...
"""

from __future__ import annotations

# The modules, bound whole and their names picked below, so that this file reads as the table of
# contents of the package (and imports nothing but its own modules).
from . import neutral, read, rules, shard, validate, write

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_EMBEDDING_INPUTS",
    "DEFAULT_MAX_LINES",
    "DEFAULT_MAX_PROBLEMS",
    "MAX_LINE_BYTES",
    "OPENAI_LINES",
    "ChatRequest",
    "FileReport",
    "Line",
    "LineShape",
    "RuleOptions",
    "Rules",
    "check_file",
    "embedding_input_count",
    "filter_requests",
    "holds_neutral_requests",
    "iter_lines",
    "iter_request_lines",
    "read_lines",
    "request_file",
    "request_line",
    "shard_file",
    "translate_file",
    "validate_file",
    "write_requests",
]

# rules: the limits, the options, the report
DEFAULT_MAX_BYTES = rules.DEFAULT_MAX_BYTES
DEFAULT_MAX_EMBEDDING_INPUTS = rules.DEFAULT_MAX_EMBEDDING_INPUTS
DEFAULT_MAX_LINES = rules.DEFAULT_MAX_LINES
DEFAULT_MAX_PROBLEMS = rules.DEFAULT_MAX_PROBLEMS
MAX_LINE_BYTES = rules.MAX_LINE_BYTES
FileReport = rules.FileReport
LineShape = rules.LineShape
OPENAI_LINES = rules.OPENAI_LINES
RuleOptions = rules.RuleOptions
Rules = rules.Rules
embedding_input_count = rules.embedding_input_count
# neutral: provider-neutral chat requests
ChatRequest = neutral.ChatRequest
# read: the one line reader
Line = read.Line
iter_lines = read.iter_lines
iter_request_lines = read.iter_request_lines
read_lines = read.read_lines
# validate
check_file = validate.check_file
request_file = validate.request_file
validate_file = validate.validate_file
# write
filter_requests = write.filter_requests
holds_neutral_requests = write.holds_neutral_requests
translate_file = write.translate_file
request_line = write.request_line
write_requests = write.write_requests
# shard
shard_file = shard.shard_file

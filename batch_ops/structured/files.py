"""File work for structured outputs, streamed line by line: the schema written into a request file, the
invalid answers of a chain found in its output files, and a repair round's input written from them.

Examples:
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> src, dst = os.path.join(d, "in.jsonl"), os.path.join(d, "repair.jsonl")
    >>> _ = open(src, "w").write("".join(json.dumps({"custom_id": c, "body": {"model": "m", "messages": [
    ...     {"role": "user", "content": "q"}]}}) + "\\n" for c in "abc"))
    >>> repair_input(src, dst, {"b": "schema: n: Field required"}, shape="openai", id_field="custom_id",
    ...              body_field="body", feedback=True)
    1
    >>> json.loads(open(dst).read())["body"]["messages"][-1]["content"][:40]
    'Your previous answer was not valid (sche'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch_ops._files import atomic_file
from batch_ops.jsonl import iter_request_lines
from batch_ops.results import iter_result_lines
from batch_ops.structured.native import with_schema
from batch_ops.structured.parse import parse_line
from batch_ops.structured.schema import ResponseSchema

__all__ = ["apply_schema_file", "feedback_text", "invalid_answers", "repair_input"]

PathLike = str | os.PathLike[str]

#: A reason longer than this is cut in a repair prompt.
_FEEDBACK_CHARS = 600


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def apply_schema_file(path: PathLike, dest: PathLike, schema: ResponseSchema, *, form: str, body_field: str) -> int:
    """Write ``path``'s request lines to ``dest`` with ``schema`` in ``form``'s words (lines that carry a
    schema of their own pass unchanged); returns the lines written. ``dest`` appears whole or not at all."""
    written = 0
    with atomic_file(dest) as out:
        for _n, line in iter_request_lines(os.fspath(path)):
            out.write(_dump(with_schema(line, schema, form=form, body_field=body_field)))
            written += 1
    return written


def feedback_text(reason: str) -> str:
    """What a repair round tells the model about its invalid answer.

    Examples:
        >>> feedback_text("bad_json: the answer is not JSON")[:36]
        'Your previous answer was not valid ('
    """
    cut = reason if len(reason) <= _FEEDBACK_CHARS else reason[: _FEEDBACK_CHARS - 3] + "..."
    return (f"Your previous answer was not valid ({cut}). Answer again with only the JSON the response schema asks "
            "for, complete and following the schema.")


def _with_feedback(line: dict[str, Any], text: str, *, shape: str, body_field: str) -> dict[str, Any]:
    """The request with a user turn saying what was wrong, in the shape's words."""
    body = line.get(body_field)
    if not isinstance(body, dict):
        return line
    if shape == "gemini":
        contents = body.get("contents")
        if isinstance(contents, list):
            body["contents"] = [*contents, {"role": "user", "parts": [{"text": text}]}]
        return line
    if isinstance(body.get("messages"), list):  # OpenAI chat, Anthropic Messages (same-role turns merge)
        body["messages"] = [*body["messages"], {"role": "user", "content": text}]
    elif isinstance(body.get("input"), list):  # the Responses API
        body["input"] = [*body["input"], {"role": "user", "content": text}]
    elif isinstance(body.get("input"), str):
        body["input"] = body["input"] + "\n\n" + text
    return line


def repair_input(
    full: PathLike, dest: PathLike, invalid: Mapping[str, str], *, shape: str, id_field: str, body_field: str,
    feedback: bool,
) -> int:
    """Write the requests of ``full`` named in ``invalid`` (id → why its answer was invalid) to ``dest``, each
    with the reason as a new user turn when ``feedback``; returns how many (``dest`` whole or not at all)."""
    written = 0
    with atomic_file(dest) as out:
        for _n, line in iter_request_lines(os.fspath(full)):
            why = invalid.get(line.get(id_field))  # type: ignore[arg-type]
            if why is None:
                continue
            if feedback:
                line = _with_feedback(line, feedback_text(why), shape=shape, body_field=body_field)
            out.write(_dump(line))
            written += 1
    return written


def invalid_answers(outputs: Sequence[PathLike | None] | Iterable[PathLike | None],
                    schema: ResponseSchema) -> dict[str, str]:
    """The requests whose latest answer in the output files ``outputs`` (oldest attempt first) is invalid,
    with why (``"<reason>: <message>"``). A later attempt's answer replaces an earlier one's. Memory holds
    the invalid ones' ids, never the files."""
    invalid: dict[str, str] = {}
    for path in outputs:
        if not path or not Path(path).exists():
            continue
        for line in iter_result_lines(path):
            if not line.ok:
                continue
            checked = parse_line(line, schema)
            if checked.invalid is not None:
                invalid[line.custom_id] = f"{checked.invalid.reason}: {checked.invalid.message}"
            else:
                invalid.pop(line.custom_id, None)
    return invalid

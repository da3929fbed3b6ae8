"""What the ``batch-ops`` commands show: rich views for people, plain dicts for ``--json``, CSV rows.

The extraction functions (``result_content``, ``csv_row``, ``ResultTally``, ``report_json``) are
pure, so the same decisions hold whether the output is a terminal, a pipe or a file.

Examples:
    >>> from batch_ops.models import ResultLine
    >>> r = ResultLine.model_validate({"custom_id": "q-1", "response": {"status_code": 200,
    ...     "body": {"choices": [{"message": {"role": "assistant", "content": "4"}}]}}})
    >>> csv_row(r, "/v1/chat/completions")
    ['q-1', 'true', '200', '', '4']
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from batch_ops.cost import Estimate
from batch_ops.errors import Problem
from batch_ops.jsonl import FileReport
from batch_ops.models import Batch, BatchStatus, ResultLine
from batch_ops.orphans import Judgement

__all__ = [
    "estimate_view",
    "CSV_COLUMNS",
    "ResultTally",
    "batch_table",
    "batch_view",
    "csv_row",
    "human_bytes",
    "problem_json",
    "report_json",
    "result_content",
    "result_error_message",
    "status_text",
    "when",
]

CSV_COLUMNS = ("custom_id", "ok", "status_code", "error_code", "content")

_STATUS_STYLES = {
    BatchStatus.COMPLETED: "green",
    BatchStatus.FAILED: "red",
    BatchStatus.EXPIRED: "red",
    BatchStatus.CANCELLING: "yellow",
    BatchStatus.CANCELLED: "yellow",
}

# Timestamps in the order a batch passes through them: the model's ``*_at`` fields in its order
# (a field added there is shown too), the deadline, expires_at, last.
_TIMESTAMPS = tuple(sorted((name for name in Batch.model_fields if name.endswith("_at")),
                           key=lambda name: name == "expires_at"))


def when(ts: int | None) -> str:
    """An epoch timestamp as UTC text; ``-`` when absent.

    Examples:
        >>> when(0), when(None)
        ('1970-01-01 00:00:00 UTC', '-')
    """
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_bytes(n: int) -> str:
    """A byte count for people.

    Examples:
        >>> human_bytes(512), human_bytes(2048), human_bytes(3 * 1024 * 1024)
        ('512 B', '2.0 KiB', '3.0 MiB')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def result_error_message(line: ResultLine) -> str | None:
    """Why a request failed: the top-level error's message, else the response body's ``error``.

    Examples:
        >>> result_error_message(ResultLine.model_validate({"custom_id": "a", "response": {
        ...     "status_code": 400, "body": {"error": {"message": "Missing 'messages'."}}}}))
        "Missing 'messages'."
    """
    return line.error_message


def _embedding_dims(vector: Any) -> int | None:
    if isinstance(vector, list):
        return len(vector)
    if isinstance(vector, str):  # encoding_format="base64": little-endian float32s
        try:
            return len(base64.b64decode(vector, validate=True)) // 4
        except (binascii.Error, ValueError):
            return None
    return None


def _responses_text(body: Mapping[str, Any]) -> str:
    # The SDK's ``output_text`` is a convenience property; the wire body usually lacks it.
    text = body.get("output_text")
    if isinstance(text, str):
        return text
    for item in body.get("output") or ():
        if not isinstance(item, Mapping):
            continue
        for part in item.get("content") or ():
            if isinstance(part, Mapping) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def result_content(line: ResultLine, endpoint: str) -> str:
    """The answer in one cell: chat ``choices[0].message.content``, responses' output text,
    embeddings' dimensions (``3x256`` for several inputs), completions' text, moderations'
    ``flagged``; for a failed request, the error message.

    Examples:
        >>> emb = ResultLine.model_validate({"custom_id": "e", "response": {"status_code": 200,
        ...     "body": {"data": [{"embedding": [0.1, 0.2, 0.3]}]}}})
        >>> result_content(emb, "/v1/embeddings")
        '3'
        >>> resp = ResultLine.model_validate({"custom_id": "r", "response": {"status_code": 200, "body": {
        ...     "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}}})
        >>> result_content(resp, "/v1/responses")
        'hi'
    """
    if not line.ok:
        return result_error_message(line) or ""
    body = line.body
    if not isinstance(body, Mapping):
        return ""
    if endpoint == "/v1/responses":
        return _responses_text(body)
    if endpoint == "/v1/embeddings":
        data = [d for d in body.get("data") or () if isinstance(d, Mapping)]
        if not data:
            return ""
        dims = _embedding_dims(data[0].get("embedding"))
        if dims is None:
            return ""
        return str(dims) if len(data) == 1 else f"{len(data)}x{dims}"
    if endpoint == "/v1/moderations":
        results = body.get("results") or ()
        first = results[0] if results and isinstance(results[0], Mapping) else {}
        return "flagged" if first.get("flagged") else "not flagged"
    # Chat and completions, and every other API's answer (Anthropic's content blocks, Gemini's candidates).
    return line.text or ""


def csv_row(line: ResultLine, endpoint: str) -> list[str]:
    """One CSV row in :data:`CSV_COLUMNS` order.

    Examples:
        >>> gone = ResultLine.model_validate({"custom_id": "b", "error": {"code": "missing_result",
        ...                                   "message": "no result in the output or error file"}})
        >>> csv_row(gone, "/v1/chat/completions")
        ['b', 'false', '', 'missing_result', 'no result in the output or error file']
    """
    status = str(line.response.status_code) if line.response is not None else ""
    return [
        line.custom_id,
        "true" if line.ok else "false",
        status,
        line.error_code or "",
        result_content(line, endpoint),
    ]


@dataclass
class ResultTally:
    """Counts of joined results: how many worked, failed, were missing, by error code.

    Examples:
        >>> t = ResultTally()
        >>> for r in [ResultLine(custom_id="a", response={"status_code": 200}),
        ...           ResultLine(custom_id="b", error={"code": "missing_result"})]:
        ...     t.add(r)
        >>> t.summary()
        '2 results: 1 ok, 1 failed (missing_result: 1)'
    """

    total: int = 0
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, line: ResultLine) -> None:
        self.total += 1
        if line.ok:
            self.ok += 1
        else:
            self.failed += 1
            self.errors[line.error_code or "unknown"] += 1

    @property
    def missing(self) -> int:
        return self.errors.get("missing_result", 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "missing": self.missing,
            "errors": dict(self.errors.most_common()),
        }

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in self.errors.most_common(5))
        more = " ..." if len(self.errors) > 5 else ""
        detail = f" ({codes}{more})" if codes else ""
        noun = "result" if self.total == 1 else "results"
        return f"{self.total} {noun}: {self.ok} ok, {self.failed} failed{detail}"


# ---------------------------------------------------------------------------------------------
# Validation reports
# ---------------------------------------------------------------------------------------------


def problem_json(problem: Problem) -> dict[str, Any]:
    """A validation finding as plain JSON.

    Examples:
        >>> problem_json(Problem(rule="empty_file", message="no requests", fix="add requests"))
        {'line': None, 'rule': 'empty_file', 'message': 'no requests', 'fix': 'add requests', 'param': None}
    """
    return {"line": problem.line, "rule": problem.rule, "message": problem.message, "fix": problem.fix,
            "param": problem.param}


def report_json(report: FileReport, problems: Iterable[Problem]) -> dict[str, Any]:
    """``batch-ops validate --json``: the file's facts and every finding."""
    found = [problem_json(p) for p in problems]
    return {
        "path": report.path,
        "valid": not found,
        "lines": report.lines,
        "bytes": report.bytes,
        "endpoint": report.endpoint,
        "model": report.model,
        "embedding_inputs": report.embedding_inputs,
        "truncated": report.truncated,
        "problems": found,
    }


# ---------------------------------------------------------------------------------------------
# Batches (rich)
# ---------------------------------------------------------------------------------------------


def status_text(status: BatchStatus) -> Text:
    return Text(status.value, style=_STATUS_STYLES.get(status, "cyan"))


def _counts(batch: Batch) -> str:
    c = batch.request_counts
    failed = f", {c.failed} failed" if c.failed else ""
    return f"{c.done}/{c.total} done ({c.completed} completed{failed})"


def _usage(batch: Batch) -> str | None:
    u = batch.usage
    if u is None:
        return None
    return (
        f"{u.total_tokens:,} tokens: input {u.input_tokens:,} (cached {u.input_tokens_details.cached_tokens:,}), "
        f"output {u.output_tokens:,} (reasoning {u.output_tokens_details.reasoning_tokens:,})"
    )


def batch_view(batch: Batch) -> RenderableType:
    """``batch-ops status``: one batch, field by field; fields the API left empty are skipped."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("batch", Text(batch.id))
    grid.add_row("status", status_text(batch.status))
    grid.add_row("endpoint", (batch.endpoint or "-") + (f"  (model {batch.model})" if batch.model else ""))
    grid.add_row("requests", _counts(batch))
    usage = _usage(batch)
    if usage:
        grid.add_row("usage", usage)
    grid.add_row("input file", batch.input_file_id)
    if batch.output_file_id:
        grid.add_row("output file", batch.output_file_id)
    if batch.error_file_id:
        grid.add_row("error file", batch.error_file_id)
    for name in _TIMESTAMPS:
        value = getattr(batch, name)
        if value is not None:
            grid.add_row(name.removesuffix("_at").replace("_", " "), when(value))
    if batch.metadata:
        grid.add_row("metadata", ", ".join(f"{k}={v}" for k, v in batch.metadata.items()))
    parts: list[RenderableType] = [grid]
    if batch.errors is not None and batch.errors.data:
        errors = Table(title="errors", title_justify="left", show_edge=False, pad_edge=False)
        errors.add_column("line", justify="right")
        errors.add_column("code", no_wrap=True)
        errors.add_column("message", overflow="fold")
        for err in batch.errors.data:
            errors.add_row("-" if err.line is None else str(err.line), err.code or "-", err.message or "")
        parts.append(errors)
    return Group(*parts)


def estimate_view(found: Estimate) -> RenderableType:
    """``batch-ops estimate``: one row per model, then the total and the price table's source and date."""
    table = Table(show_edge=False, pad_edge=False)
    for name, justify in (("model", "left"), ("requests", "right"), ("input tokens", "right"), ("counted", "left"),
                          ("output bound", "right"), ("lower USD", "right"), ("upper USD", "right"),
                          ("price", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for m in found.models.values():
        loose = f" ({m.loose} loose)" if m.loose else ""
        table.add_row(m.model, f"{m.requests:,}", f"{m.input_tokens:,}", m.input_kind, f"{m.output_bound:,}{loose}",
                      f"{m.lower:.6f}", f"{m.upper:.6f}", m.rate.describe() if m.rate else "-")
    total = Text(f"total: {found.requests:,} requests, ${found.lower:.6f} .. ${found.upper:.6f} at batch prices "
                 f"({found.table_source}, dated {found.table_date})")
    notes = Text("counted: exact = the model's tokenizer; bound = guaranteed >= the true count. loose: no output "
                 "limit set, bounded by the model's maximum.", style="dim")
    return Group(table, total, notes)


def sweep_table(judgements: Iterable[Judgement]) -> Table:
    """``batch-ops orphans``: one row per unfinished batch, with its owner and the verdict."""
    table = Table(show_edge=False, pad_edge=False)
    for name in ("id", "status", "created", "owner", "owner is", "verdict"):
        table.add_column(name, no_wrap=name != "owner")
    for j in judgements:
        owner = f"{j.owner.system}:{j.owner.id}" if j.owner else "-"
        verdict = j.verdict + (" (cancelled)" if j.cancelled else "")
        style = {"orphan": "bold red", "kept": "green"}.get(j.verdict, "yellow")
        table.add_row(j.batch.id, status_text(j.batch.status), when(j.batch.created_at), owner,
                      j.state.value if j.state else "-", Text(verdict, style=style))
    return table


def batch_table(batches: Iterable[Batch]) -> Table:
    """``batch-ops list``: one row per batch."""
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("endpoint", no_wrap=True)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for b in batches:
        c = b.request_counts
        failed = f" ({c.failed} failed)" if c.failed else ""
        table.add_row(b.id, status_text(b.status), b.endpoint or "-", f"{c.done}/{c.total}{failed}", when(b.created_at))
    return table

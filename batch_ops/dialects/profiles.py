"""OpenAI-shaped batch APIs of other vendors: OpenAI's dialect with each one's quirks as data.

Each is OpenAI's Files and Batches API (``/files``, ``/batches``, output and error files) with its
own base URL and a few differences, written here as class attributes or one small override:

=====================  ==================================================================================
provider               what differs from OpenAI
=====================  ==================================================================================
``groq``               ``completion_window`` from ``24h`` to ``7d``; files up to 100 MB; chat completions only
``together``           uploads with ``purpose="batch-api"``; lines ``{custom_id (<= 64), body}`` without
                       ``method``/``url``; the create answer wraps the job (``{"job": {...}}``), the list
                       is a bare array; upper-case statuses, UUID ids, ISO timestamps, no request counts
                       (``progress`` in percent) and no ``metadata``
``deepinfra``          the base URL only
``novita``             lines without ``method``/``url``; statuses ``PROGRESS`` (and upper-case others);
                       counts as top-level ``total``/``completed``/``failed``
``openai_compatible``  any server that speaks OpenAI's Batch API unchanged; the base URL is required
=====================  ==================================================================================

Facts are from each vendor's documentation and SDK (see docs/providers.md); a provider default base
URL is used when the settings give none (:attr:`Dialect.default_base_url`).

Examples:
    >>> TogetherDialect().upload_purpose, TogetherDialect().line_shape.method_url
    ('batch-api', False)
    >>> "7d" in GroqDialect.limits.completion_windows, GroqDialect.limits.max_file_bytes // 2**20
    (True, 100)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from batch_ops.dialects.base import Limits
from batch_ops.dialects.openai import OpenAIDialect
from batch_ops.effects import Reply, Send
from batch_ops.errors import BatchOpsError
from batch_ops.jsonl.rules import LineShape
from batch_ops.models import Batch, BatchList, BatchStatus

__all__ = ["DeepInfraDialect", "GroqDialect", "NovitaDialect", "OpenAICompatibleDialect", "TOGETHER_LINES",
           "TogetherDialect", "UNMETHODED_LINES"]

#: Groq: "Durations from 24h to 7d are supported" (whole hours or days).
GROQ_WINDOWS: tuple[str, ...] = (*(f"{h}h" for h in range(24, 169)), *(f"{d}d" for d in range(1, 8)))

#: Together's request line: ``custom_id`` (at most 64 characters) and ``body``; no ``method`` or ``url``.
TOGETHER_LINES = LineShape(
    name="openai", id_pattern=r"(?s).{1,64}", method_url=False,
    example='{"custom_id": "req-1", "body": {"model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", '
            '"messages": [{"role": "user", "content": "..."}], "max_tokens": 200}}',
)
#: OpenAI's line without ``method`` and ``url`` (Novita's documented lines).
UNMETHODED_LINES = LineShape(
    name="openai", method_url=False,
    example='{"custom_id": "req-1", "body": {"model": "...", "messages": [{"role": "user", "content": "..."}]}}',
)


class GroqDialect(OpenAIDialect):
    """Groq's Batch API (``https://api.groq.com/openai/v1``): OpenAI's, with longer windows and a 100 MB file."""

    name = "groq"
    title = "Groq Batch API"
    default_base_url = "https://api.groq.com/openai/v1"
    limits = Limits(completion_windows=GROQ_WINDOWS, max_requests=50_000, max_file_bytes=100 * 1024 * 1024,
                    endpoints=("/v1/chat/completions",))


class DeepInfraDialect(OpenAIDialect):
    """DeepInfra's OpenAI-compatible Batch API."""

    name = "deepinfra"
    title = "DeepInfra Batch API"
    default_base_url = "https://api.deepinfra.com/v1/openai"


class OpenAICompatibleDialect(OpenAIDialect):
    """Any server that speaks OpenAI's Batch API unchanged (a gateway, vLLM, another vendor): give its base URL."""

    name = "openai_compatible"
    title = "OpenAI-compatible Batch API"
    default_base_url = None


class NovitaDialect(OpenAIDialect):
    """Novita's Batch API (``https://api.novita.ai/openai/v1``): upper-case statuses with ``PROGRESS``, lines
    without ``method``/``url``, counts at the top of the batch."""

    name = "novita"
    title = "Novita Batch API"
    default_base_url = "https://api.novita.ai/openai/v1"
    line_shape = UNMETHODED_LINES
    limits = Limits(endpoints=("/v1/chat/completions", "/v1/completions"))
    status_aliases: ClassVar[Mapping[str, BatchStatus]] = {"progress": BatchStatus.IN_PROGRESS}

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        return super().parse_batch(_with_counts(reply), send)

    def parse_batch_list(self, reply: Reply, send: Send) -> BatchList:
        try:
            answer = reply.json()
        except ValueError:
            return super().parse_batch_list(reply, send)
        if isinstance(answer, dict) and isinstance(answer.get("data"), list):
            answer = {**answer, "data": [_counted(b) for b in answer["data"]]}
            reply = _replaced(reply, answer)
        return super().parse_batch_list(reply, send)


class TogetherDialect(OpenAIDialect):
    """Together AI's Batch API (``https://api.together.xyz/v1``).

    The wire is OpenAI's paths with Together's objects: a create answers ``{"job": {...}, "warning": ...}``,
    a retrieve the job itself, a list a bare JSON array of jobs (no pages). A job has ``progress`` (percent)
    rather than request counts, and carries no ``metadata``.
    """

    name = "together"
    title = "Together AI Batch API"
    default_base_url = "https://api.together.xyz/v1"
    upload_purpose = "batch-api"
    line_shape = TOGETHER_LINES
    limits = Limits(endpoints=("/v1/chat/completions", "/v1/completions"))

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        return super().parse_batch(_unwrapped(reply, send), send)

    def parse_batch_list(self, reply: Reply, send: Send) -> BatchList:
        try:
            answer = reply.json()
        except ValueError:
            return super().parse_batch_list(reply, send)  # the base parser says what is wrong
        if isinstance(answer, list):
            jobs = [_job(j) for j in answer if isinstance(j, dict)]
            # Newest first, as plans read a list page; one page holds every job.
            jobs.sort(key=lambda j: str(j.get("created_at") or ""), reverse=True)
            answer = {"object": "list", "data": jobs, "has_more": False,
                      "first_id": jobs[0]["id"] if jobs else None, "last_id": jobs[-1]["id"] if jobs else None}
        return super().parse_batch_list(_replaced(reply, answer), send)


# ---------------------------------------------------------------------------------------------
# the small rewrites the overrides share
# ---------------------------------------------------------------------------------------------
def _replaced(reply: Reply, answer: Any) -> Reply:
    return replace(reply, body=json.dumps(answer).encode())


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """A Together job in our batch's words: ``model_id`` is its model; ``progress`` is kept as it is."""
    out = dict(job)
    if "model" not in out and job.get("model_id") is not None:
        out["model"] = job["model_id"]
    return out


def _unwrapped(reply: Reply, send: Send) -> Reply:
    """The job of a create answer (``{"job": {...}}``), or the answer as it is."""
    try:
        answer = reply.json()
    except ValueError:
        return reply
    if isinstance(answer, dict) and isinstance(answer.get("job"), dict):
        return _replaced(reply, _job(answer["job"]))
    if isinstance(answer, dict) and "job" in answer:
        raise BatchOpsError(f"{send.method} {send.path}: the answer's 'job' is not a batch job object")
    return _replaced(reply, _job(answer)) if isinstance(answer, dict) else reply


def _counted(batch: Any) -> Any:
    """Novita's top-level ``total``/``completed``/``failed`` as ``request_counts``."""
    if isinstance(batch, dict) and "request_counts" not in batch and "total" in batch:
        return {**batch, "request_counts": {k: batch.get(k) or 0 for k in ("total", "completed", "failed")}}
    return batch


def _with_counts(reply: Reply) -> Reply:
    try:
        answer = reply.json()
    except ValueError:
        return reply
    counted = _counted(answer)
    return reply if counted is answer else _replaced(reply, counted)

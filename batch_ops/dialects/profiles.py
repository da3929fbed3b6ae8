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
                       (``progress`` in percent) and no ``metadata``: our key rides in the name of the
                       job's uploaded input, read back through the file list
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

import base64
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from batch_ops.dialects.base import Limits
from batch_ops.dialects.openai import OpenAIDialect
from batch_ops.effects import Reply, Send
from batch_ops.errors import BatchOpsError, InputValidationError, Problem
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
    price_provider = "groq"
    default_base_url = "https://api.groq.com/openai/v1"
    limits = Limits(completion_windows=GROQ_WINDOWS, max_requests=50_000, max_file_bytes=100 * 1024 * 1024,
                    endpoints=("/v1/chat/completions",))


class DeepInfraDialect(OpenAIDialect):
    """DeepInfra's OpenAI-compatible Batch API."""

    name = "deepinfra"
    title = "DeepInfra Batch API"
    price_provider = None  # not in genai-prices 0.2.5: overrides
    default_base_url = "https://api.deepinfra.com/v1/openai"


class OpenAICompatibleDialect(OpenAIDialect):
    """Any server that speaks OpenAI's Batch API unchanged (a gateway, vLLM, another vendor): give its base URL."""

    name = "openai_compatible"
    title = "OpenAI-compatible Batch API"
    price_provider = None  # any server: overrides
    default_base_url = None


class NovitaDialect(OpenAIDialect):
    """Novita's Batch API (``https://api.novita.ai/openai/v1``): upper-case statuses with ``PROGRESS``, lines
    without ``method``/``url``, counts at the top of the batch."""

    name = "novita"
    title = "Novita Batch API"
    price_provider = "novita"
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
    price_provider = "together"
    default_base_url = "https://api.together.xyz/v1"
    upload_purpose = "batch-api"
    line_shape = TOGETHER_LINES
    limits = Limits(endpoints=("/v1/chat/completions", "/v1/completions"))
    carries_metadata = False

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        return super().parse_batch(_unwrapped(reply, send), send)

    # -- our key: jobs carry no metadata, so it rides in the name of the job's uploaded input ----------
    def create_body(self, *, input_file_id: str, endpoint: str, completion_window: str,
                    metadata: Mapping[str, str] | None, output_expires_after: Mapping[str, Any] | None,
                    idempotency_key: str) -> dict[str, Any]:
        """OpenAI's checks, then Together's body: no ``metadata`` (a job keeps none; the key is carried by the
        input's file name, so it must fit one)."""
        body = super().create_body(input_file_id=input_file_id, endpoint=endpoint,
                                   completion_window=completion_window, metadata=metadata,
                                   output_expires_after=output_expires_after, idempotency_key=idempotency_key)
        name = self.upload_name(idempotency_key, "0" * 16)
        if len(name) > MAX_NAME:
            raise InputValidationError([Problem(
                rule="invalid_idempotency_key", param="idempotency_key",
                message=f"the key is too long for {self.title}: its jobs keep no metadata, so batch_ops carries the "
                f"key in the input file's name, which would be {len(name)} characters (at most {MAX_NAME})",
                fix=f"use a key of at most about {(MAX_NAME - 60) * 3 // 4} characters")], source="batch parameters")
        body.pop("metadata", None)
        return body

    def upload_name(self, attempt: str, digest: str) -> str:
        """``batch_ops~<attempt key, base64url>~<content hash>.jsonl``: the whole attempt key, readable back.

        Examples:
            >>> name = TogetherDialect().upload_name("af-1@0123456789abcdef.1", "9f86d081884c7d65")
            >>> name, _attempt_of(name)
            ('batch_ops~YWYtMUAwMTIzNDU2Nzg5YWJjZGVmLjE~9f86d081884c7d65.jsonl', 'af-1@0123456789abcdef.1')
        """
        token = base64.urlsafe_b64encode(attempt.encode()).decode().rstrip("=")
        return f"{_NAME_PREFIX}{token}~{digest[:16]}.jsonl"

    def batch_list_companion(self) -> Send:
        return self.list_files(purpose=self.upload_purpose)

    def annotate_batch_list(self, page: BatchList, reply: Reply, send: Send) -> BatchList:
        names = {f.id: f.filename for f in self.parse_file_list(reply, send).data if f.filename}
        jobs = []
        for batch in page.data:
            attempt = _attempt_of(names.get(batch.input_file_id))
            if attempt is not None and not batch.metadata:
                batch = batch.model_copy(update={"metadata": {self.key_metadata: attempt}})
            jobs.append(batch)
        return page.model_copy(update={"data": jobs})

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


#: The longest upload name batch_ops writes for Together (a file name; Together documents no limit).
MAX_NAME = 255
_NAME_PREFIX = "batch_ops~"


def _attempt_of(filename: str | None) -> str | None:
    """The attempt key a Together upload of ours carries in its name, or None (not ours)."""
    if not filename or not filename.startswith(_NAME_PREFIX) or not filename.endswith(".jsonl"):
        return None
    token = filename[len(_NAME_PREFIX):].rsplit("~", 1)[0]
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


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

"""Anthropic's Message Batches API: requests inline, three statuses, one results file, no metadata.

What differs from OpenAI, as data and small overrides:

* credentials in ``x-api-key``; every call carries ``anthropic-version: 2023-06-01`` (pinned: the
  SDK moves its own default, the wire we speak must not move with it);
* **no file store**: the create carries the requests inline (``{"requests": [{custom_id, params}]}``),
  written by the submit to a work file and streamed (:attr:`stores_files` False, :meth:`create_from_file`);
* a request line is ``{"custom_id", "params"}`` (any mix of models; ``custom_id`` 1 to 64 of
  ``[A-Za-z0-9_-]``) — :attr:`line_shape`; 100,000 requests or 256 MB per batch, 24 h, then expired;
* ``processing_status`` ``in_progress`` | ``canceling`` | ``ended``, mapped onto our statuses (see
  :meth:`AnthropicDialect.status_of`); ``request_counts`` stay 0 but ``processing`` until the end;
  RFC 3339 times;
* results in one JSONL at ``results_url`` (any order, successes and failures together), split on
  download into our output (``succeeded``) and error (``errored``, ``canceled``, ``expired``) files,
  each line rewritten into OpenAI's shape with Anthropic's line under ``raw``;
* **no metadata**: nothing on a batch can carry our key (:attr:`carries_key` False); the submit keeps
  a key ledger instead (:mod:`batch_ops.identity.ledger`).

Examples:
    >>> from batch_ops.settings import ClientSettings
    >>> d = AnthropicDialect()
    >>> d.auth_headers(ClientSettings(api_key="k", provider="anthropic"))
    {'x-api-key': 'k'}
    >>> s = d.retrieve_batch("msgbatch_1")
    >>> s.path, dict(s.headers or {})
    ('/messages/batches/msgbatch_1', {'anthropic-version': '2023-06-01'})
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_ops._files import atomic_file
from batch_ops.dialects.base import Dialect, Limits, ResultFile
from batch_ops.effects import Reply, Send, api_path
from batch_ops.errors import APIResponseValidationError, InputValidationError, Problem
from batch_ops.jsonl import MAX_LINE_BYTES, read_lines
from batch_ops.jsonl.rules import LineShape
from batch_ops.models import Batch, BatchList, BatchStatus

if TYPE_CHECKING:
    from batch_ops.settings import ClientSettings

__all__ = ["ANTHROPIC_LINES", "ANTHROPIC_VERSION", "AnthropicDialect"]

#: The API version every call pins (the REST reference's; the 2.17.0 SDK sends a newer one itself).
ANTHROPIC_VERSION = "2023-06-01"
_VERSION = {"anthropic-version": ANTHROPIC_VERSION}

#: Anthropic's request line.
ANTHROPIC_LINES = LineShape(
    name="anthropic", id_field="custom_id", id_pattern=r"[A-Za-z0-9_-]{1,64}", body_field="params",
    method_url=False, model_in_body=True, one_model=False,
    example='{"custom_id": "q-1", "params": {"model": "claude-sonnet-4-5", "max_tokens": 64, '
            '"messages": [{"role": "user", "content": "Hello"}]}}',
)

#: Result types that are failures, and the code our neutral error line gives each.
_FAILURE_CODES = {"canceled": "batch_cancelled", "expired": "batch_expired"}
_ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                 "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                 "rate_limit_error": 429, "timeout_error": 504, "overloaded_error": 529}


def _counts(raw: Any) -> dict[str, int]:
    raw = raw if isinstance(raw, dict) else {}
    return {k: int(raw.get(k) or 0) for k in ("processing", "succeeded", "errored", "canceled", "expired")}


class AnthropicDialect(Dialect):
    """Anthropic Message Batches (``https://api.anthropic.com/v1``) and the local server's ``/v1/messages/batches``."""

    name = "anthropic"
    title = "Anthropic Message Batches"
    price_provider = "anthropic"
    default_base_url = "https://api.anthropic.com/v1"
    key_env = ("ANTHROPIC_API_KEY",)
    #: The SDK's variable names the host (``https://api.anthropic.com``); our base URL ends in ``/v1``.
    base_url_env = (("ANTHROPIC_BASE_URL", "/v1"),)
    limits = Limits(completion_windows=("24h",), expires=True, max_requests=100_000,
                    max_file_bytes=256 * 1024 * 1024)
    line_shape = ANTHROPIC_LINES
    rewrites_results = True
    stores_files = False
    carries_key = False
    carries_metadata = False
    structured_form = "anthropic"

    # -- addressing and credentials -------------------------------------------------------------
    def chat_endpoint(self, model: str | None) -> str:
        return "/v1/messages"

    def auth_headers(self, settings: ClientSettings) -> dict[str, str]:
        return {"x-api-key": settings.require_key()}

    # -- batches ----------------------------------------------------------------------------------
    def create_batch(self, body: Mapping[str, Any]) -> Send:
        return Send("POST", "/messages/batches", json=dict(body), headers=_VERSION)

    def create_from_file(self, body: Path) -> Send:
        """The create, its body (``{"requests": [...]}``, written by :meth:`inline_body`) streamed from disk."""
        return Send("POST", "/messages/batches", stream=body,
                    headers={**_VERSION, "Content-Type": "application/json"})

    def retrieve_batch(self, batch_id: str, *, deadline: float | None = None) -> Send:
        return Send("GET", api_path("/messages/batches/{batch_id}", batch_id=batch_id), deadline=deadline,
                    headers=_VERSION)

    def cancel_batch(self, batch_id: str) -> Send:
        return Send("POST", api_path("/messages/batches/{batch_id}/cancel", batch_id=batch_id), headers=_VERSION)

    def delete_batch(self, batch_id: str) -> Send:
        """Delete an ended batch (and its results)."""
        return Send("DELETE", api_path("/messages/batches/{batch_id}", batch_id=batch_id), headers=_VERSION)

    def list_batches(self, *, limit: int, after: str | None) -> Send:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after_id"] = after
        return Send("GET", "/messages/batches", params=params, headers=_VERSION)

    @staticmethod
    def status_of(obj: Mapping[str, Any]) -> BatchStatus:
        """Our status for a ``MessageBatch`` (the decision, once):

        * ``in_progress`` → ``in_progress``; ``canceling`` → ``cancelling``;
        * ``ended`` with ``cancel_initiated_at`` → ``cancelled`` (what finished before the cancel stays);
        * ``ended`` with any ``expired`` request → ``expired``, as OpenAI's expired batch: the window
          closed first, the successes stay, a retry carries the rest;
        * ``ended`` with nothing ``succeeded`` and some ``errored`` → ``failed``;
        * otherwise ``ended`` → ``completed`` (some requests may have errored: ``request_counts.failed``).

        Examples:
            >>> AnthropicDialect.status_of({"processing_status": "ended", "request_counts": {"expired": 1}}).value
            'expired'
            >>> AnthropicDialect.status_of({"processing_status": "ended", "request_counts": {"errored": 2}}).value
            'failed'
        """
        status = obj.get("processing_status")
        if status == "in_progress":
            return BatchStatus.IN_PROGRESS
        if status == "canceling":
            return BatchStatus.CANCELLING
        if status != "ended":
            return BatchStatus.parse(status)  # unknown: never terminal, the wait goes on
        counts = _counts(obj.get("request_counts"))
        if obj.get("cancel_initiated_at"):
            return BatchStatus.CANCELLED
        if counts["expired"]:
            return BatchStatus.EXPIRED
        if not counts["succeeded"] and counts["errored"]:
            return BatchStatus.FAILED
        return BatchStatus.COMPLETED

    def batch_of(self, obj: Any) -> Batch:
        """A ``MessageBatch`` (parsed JSON) as our :class:`~batch_ops.models.Batch`; raises ``ValueError``
        when it is not one. Anthropic's own fields stay on it (``processing_status``, ``results_url``,
        ``anthropic_request_counts``)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or "processing_status" not in obj:
            raise ValueError("not a message batch (no id or processing_status)")
        counts = _counts(obj.get("request_counts"))
        status = self.status_of(obj)
        ended = obj.get("ended_at")
        stamps = {BatchStatus.COMPLETED: "completed_at", BatchStatus.FAILED: "failed_at",
                  BatchStatus.EXPIRED: "expired_at", BatchStatus.CANCELLED: "cancelled_at"}
        fields: dict[str, Any] = {
            "id": obj["id"], "object": "batch", "endpoint": "/v1/messages", "input_file_id": "",
            "status": status, "created_at": obj.get("created_at"), "expires_at": obj.get("expires_at"),
            "cancelling_at": obj.get("cancel_initiated_at"),
            "request_counts": {"total": sum(counts.values()), "completed": counts["succeeded"],
                               "failed": counts["errored"] + counts["canceled"] + counts["expired"]},
            "processing_status": obj.get("processing_status"), "results_url": obj.get("results_url"),
            "anthropic_request_counts": counts,
        }
        if ended and status in stamps:
            fields[stamps[status]] = ended
        return Batch.model_validate(fields)

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        try:
            return self.batch_of(reply.json())
        except ValueError as exc:
            raise _not(reply, send, "a message batch", str(exc)) from None

    def parse_batch_list(self, reply: Reply, send: Send) -> BatchList:
        try:
            page = reply.json()
            if not isinstance(page, dict) or not isinstance(page.get("data"), list):
                raise ValueError("no data list")
            data = [self.batch_of(b) for b in page["data"]]
        except ValueError as exc:
            raise _not(reply, send, "a list of message batches", str(exc)) from None
        return BatchList(data=data, first_id=page.get("first_id"), last_id=page.get("last_id"),
                         has_more=bool(page.get("has_more")))

    def create_body(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
        output_expires_after: Mapping[str, Any] | None,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """The parameters checked as Anthropic takes them; the body itself is the requests
        (:meth:`inline_body`). ``metadata`` cannot travel (Anthropic has none): the key ledger keeps it.

        Examples:
            >>> try:
            ...     AnthropicDialect().create_body(input_file_id="", endpoint="/v1/chat/completions",
            ...         completion_window="24h", metadata=None, output_expires_after=None, idempotency_key="k")
            ... except InputValidationError as exc:
            ...     print(exc.problems[0].fix)
            pass endpoint='/v1/messages' and lines of {custom_id, params}
        """
        problems = []
        if endpoint not in ("/v1/messages", "/messages"):
            problems.append(Problem(rule="invalid_batch_parameter", param="endpoint",
                                    message=f"{self.title} run /v1/messages requests, not {endpoint!r}",
                                    fix="pass endpoint='/v1/messages' and lines of {custom_id, params}"))
        if completion_window not in self.limits.completion_windows:
            problems.append(Problem(rule="invalid_batch_parameter", param="completion_window",
                                    message=f"{self.title} process a batch within 24 h, not {completion_window!r}",
                                    fix="pass completion_window='24h'"))
        if output_expires_after is not None:
            problems.append(Problem(rule="invalid_batch_parameter", param="output_expires_after",
                                    message=f"{self.title} keep results 29 days; their expiry cannot be set",
                                    fix="leave output_expires_after out"))
        if problems:
            raise InputValidationError(problems, source="batch parameters")
        return {}

    def inline_body(self, requests: Path, dest: Path) -> int:
        """Write the create body for a validated request file (see :func:`write_create_body`)."""
        return write_create_body(requests, dest)

    # -- results ----------------------------------------------------------------------------------
    def result_files(self, batch: Batch) -> tuple[ResultFile, ...]:
        """One file, successes and failures together (split on download): the batch's ``results_url``."""
        url = (batch.model_extra or {}).get("results_url")
        return (ResultFile("results", url),) if isinstance(url, str) and url else ()

    def download_file(self, file_id: str, sink: Path) -> Send:
        """``file_id`` is a ``results_url`` (absolute: the driver sends the key only to the API's own origin)."""
        if file_id.startswith(("http://", "https://")):
            return Send("GET", file_id, url=file_id, sink=sink, headers=_VERSION)
        return Send("GET", api_path("/messages/batches/{batch_id}/results", batch_id=file_id), sink=sink,
                    headers=_VERSION)

    def result_line(self, line: Mapping[str, Any]) -> Mapping[str, Any]:
        """An Anthropic result line in OpenAI's line shape, the line itself under ``raw``.

        Examples:
            >>> d = AnthropicDialect()
            >>> ok = d.result_line({"custom_id": "a", "result": {"type": "succeeded", "message": {"id": "m"}}})
            >>> ok["response"]["status_code"], ok["error"]
            (200, None)
            >>> d.result_line({"custom_id": "b", "result": {"type": "canceled"}})["error"]["code"]
            'batch_cancelled'
            >>> bad = d.result_line({"custom_id": "c", "result": {"type": "errored", "error": {"type": "error",
            ...     "error": {"type": "invalid_request_error", "message": "no"}}}})
            >>> bad["response"]["status_code"], bad["response"]["body"]["error"]["type"]
            (400, 'invalid_request_error')
        """
        result = line.get("result")
        result = result if isinstance(result, Mapping) else {}
        kind = result.get("type")
        out: dict[str, Any] = {"custom_id": line.get("custom_id"), "response": None, "error": None, "raw": dict(line)}
        if kind == "succeeded":
            out["response"] = {"status_code": 200, "body": result.get("message")}
        elif kind == "errored":
            outer = result.get("error")
            inner = outer.get("error") if isinstance(outer, Mapping) else None
            inner = dict(inner) if isinstance(inner, Mapping) else {"type": "api_error", "message": "errored"}
            out["response"] = {"status_code": _ERROR_STATUS.get(str(inner.get("type")), 500),
                               "request_id": outer.get("request_id") if isinstance(outer, Mapping) else None,
                               "body": {"error": inner}}
        else:
            code = _FAILURE_CODES.get(str(kind), str(kind or "unknown_result"))
            out["error"] = {"code": code, "message": f"The request was {kind or 'not answered'} (Anthropic result "
                            f"type {kind!r})."}
        return out


def _not(reply: Reply, send: Send, what: str, reason: str) -> APIResponseValidationError:
    """The error for a 2xx answer that is not ``what`` (worded as :func:`~batch_ops.effects.parse` words it)."""
    snippet = reply.body[:80].decode("utf-8", "replace").replace("\n", " ")
    where = reply.url or send.url or send.path
    return APIResponseValidationError(
        f"{send.method} {where} answered {reply.status} with a body that is not {what}: {reason}; it began "
        f"{snippet!r}. A proxy or gateway may stand between you and the API.",
        status_code=reply.status, method=send.method, url=where, reason=reason)


def write_create_body(requests: Path, dest: Path) -> int:
    """Write the create body ``{"requests": [<line>, ...]}`` from a validated request file, line by line
    (memory holds one line); the number of requests.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "in.jsonl").write_text('{"custom_id": "a", "params": {}}\\n\\n{"custom_id": "b", "params": {}}\\n')
        >>> write_create_body(d / "in.jsonl", d / "body.json"), (d / "body.json").read_text()
        (2, '{"requests":[{"custom_id": "a", "params": {}},{"custom_id": "b", "params": {}}]}')
    """
    count = 0
    with requests.open("rb") as src, atomic_file(dest) as out:
        out.write(b'{"requests":[')
        for raw in read_lines(src, limit=MAX_LINE_BYTES):
            if raw is None:
                raise InputValidationError([Problem(rule="line_too_large", line=count + 1, message="a request line is "
                                           f"over {MAX_LINE_BYTES:,} bytes", fix="shorten the request")],
                                           source=str(requests))
            line = raw.strip()
            if not line:
                continue
            if count:
                out.write(b",")
            out.write(line)
            count += 1
        out.write(b"]}")
    return count

"""Gemini API Batch Mode (the Developer API, ``generativelanguage.googleapis.com``).

What differs from OpenAI, as data and small overrides:

* **credentials** in an ``x-goog-api-key`` header; the base URL names the API version
  (``https://generativelanguage.googleapis.com/v1beta``, :attr:`GeminiDialect.default_base_url`).
* **the upload** is Google's resumable protocol, two requests: ``start`` (``X-Goog-Upload-*``
  headers, the file's display name) at ``/upload/v1beta/files`` on the same host — the path is
  written relative to the base URL (``../upload/v1beta/files``), so the host and scheme are the
  base URL's — then the bytes, streamed, with ``upload, finalize`` to the ``X-Goog-Upload-URL``
  the first answer gave. Files are ``files/{id}``; only *generated* files can be downloaded.
* **the model is per batch, in the URL** (``POST /models/{model}:batchGenerateContent``): request
  lines name none. The batch's ``endpoint`` names it — ``gemini-2.5-flash`` or
  ``models/gemini-2.5-flash`` (checked before anything is sent: :func:`model_path`).
* **request lines** are ``{"key": ..., "request": GenerateContentRequest}``
  (:data:`GEMINI_LINES`): ``key`` is the join id, our ``custom_id``.
* **a batch** is answered as a long-running Operation (``name`` ``batches/{id}``, the batch in
  ``metadata``); the list is ``{"operations": [...], "nextPageToken"}``, and the page token is
  the cursor the plans pass back as ``after``. States ``BATCH_STATE_*`` (the SDK's ``JOB_STATE_*``
  spelling is read too) map onto :class:`~batch_ops.models.BatchStatus`; ``batchStats`` (int64s
  as strings) are the request counts; timestamps are RFC 3339.
* **our idempotency key rides in ``displayName``**, the one field of a Gemini batch that can
  carry it (there is no metadata): an attempt key must fit in :data:`DISPLAY_NAME_MAX` characters,
  so a key may have at most 108 (derived keys have 43), and a batch carries no metadata of the
  caller (refused before any upload); the owner pairs the adapters add are left off (the orphan
  sweep sees Gemini batches as unowned, and never cancels them).
* **results**: one responses file (``dest.file_name``) holds successes and failures together
  (``ResultFile("results")``); each line ``{"key", "response"}`` / ``{"key", "error"}`` is
  rewritten by :meth:`GeminiDialect.result_line` into OpenAI's line shape (the Gemini line under
  ``raw``) and split into the output and error files. Inline responses (batches made with inline
  requests elsewhere) are not downloaded: batch_ops creates from files.

Limits: a file of at most 2 GB (the Files API's); 48 h before a pending or running batch
``EXPIRED`` (the guide; unverified); no documented request count (50,000 assumed, as inspect_ai does).

Examples:
    >>> from batch_ops.settings import ClientSettings
    >>> d = GeminiDialect()
    >>> d.auth_headers(ClientSettings(api_key="g-1", provider="gemini"))
    {'x-goog-api-key': 'g-1'}
    >>> d.retrieve_batch("batches/abc").path, d.create_batch({"batch": {"model": "models/gemini-2.5-flash"}}).path
    ('/batches/abc', '/models/gemini-2.5-flash:batchGenerateContent')
    >>> model_path("gemini-2.5-flash"), model_path("models/gemini-2.5-flash")
    ('models/gemini-2.5-flash', 'models/gemini-2.5-flash')
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import ValidationError

from batch_ops.dialects.base import Dialect, Limits, ResultFile
from batch_ops.effects import Reply, Send
from batch_ops.errors import APIResponseValidationError, InputValidationError, Problem
from batch_ops.identity.owners import OWNER_METADATA_KEYS
from batch_ops.jsonl.rules import LineShape
from batch_ops.models import Batch, BatchList, BatchStatus, FileList, FileObject

if TYPE_CHECKING:
    from batch_ops.settings import ClientSettings

__all__ = ["DISPLAY_NAME_MAX", "GEMINI_LINES", "GeminiDialect", "model_path"]

#: Gemini's request line: ``key`` names it, ``request`` is a GenerateContentRequest, the model is the batch's.
GEMINI_LINES = LineShape(
    name="gemini", id_field="key", body_field="request", method_url=False, model_in_body=False, one_model=False,
    example='{"key": "req-1", "request": {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}}',
)
#: The longest ``displayName`` batch_ops writes. Google documents no limit for a Developer-API batch's
#: display name (unverified); Vertex's batch jobs take 128 characters, so that is what we rely on.
DISPLAY_NAME_MAX = 128
_API_VERSION = "v1beta"
#: A model id as the API names them (``gemini-2.5-flash``, ``gemini-2.0-flash-001``, ``gemini-exp-1206``).
_MODEL = re.compile(r"[a-z0-9][a-z0-9.\-_]{0,127}")
#: Wire states (``BATCH_STATE_*``; the SDK rewrites them ``JOB_STATE_*``) in our vocabulary.
_STATES = {
    "PENDING": BatchStatus.VALIDATING,
    "QUEUED": BatchStatus.VALIDATING,
    "RUNNING": BatchStatus.IN_PROGRESS,
    "CANCELLING": BatchStatus.CANCELLING,
    "SUCCEEDED": BatchStatus.COMPLETED,
    "PARTIALLY_SUCCEEDED": BatchStatus.COMPLETED,
    "FAILED": BatchStatus.FAILED,
    "CANCELLED": BatchStatus.CANCELLED,
    "EXPIRED": BatchStatus.EXPIRED,
}
_ENDED_AT = {BatchStatus.COMPLETED: "completed_at", BatchStatus.FAILED: "failed_at",
             BatchStatus.CANCELLED: "cancelled_at", BatchStatus.EXPIRED: "expired_at"}
_EXPIRY_SECONDS = 48 * 3600


def model_path(endpoint: str) -> str:
    """The batch's model as the API's path names it (``models/{model}``), from what the caller gave as
    the batch ``endpoint``; raises ``ValueError`` naming the fix when it is not a Gemini model.

    Examples:
        >>> model_path("/v1/chat/completions")
        Traceback (most recent call last):
        ...
        ValueError: '/v1/chat/completions' is not a Gemini model: a Gemini batch's endpoint names its model, \
e.g. 'gemini-2.5-flash' or 'models/gemini-2.5-flash'
    """
    name = endpoint.strip().removeprefix("/").removeprefix("models/") if isinstance(endpoint, str) else ""
    if not _MODEL.fullmatch(name):
        raise ValueError(f"{endpoint!r} is not a Gemini model: a Gemini batch's endpoint names its model, "
                         "e.g. 'gemini-2.5-flash' or 'models/gemini-2.5-flash'")
    return f"models/{name}"


def _resource(prefix: str, name: str) -> str:
    """``files/abc`` (or ``abc``) as the path ``/files/abc``, the id escaped."""
    return f"/{prefix}/" + quote(name.removeprefix(f"{prefix}/"), safe="-_.~")


def _epoch(value: Any) -> int | None:
    """An RFC 3339 timestamp (or epoch seconds) as epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # nanoseconds: Python reads microseconds
    return int(dt.datetime.fromisoformat(text).timestamp())


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _state(value: Any) -> BatchStatus:
    """``BATCH_STATE_RUNNING`` / ``JOB_STATE_RUNNING`` as ours; an unknown state stays unknown (never terminal)."""
    text = str(value or "")
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if text.startswith(prefix):
            found = _STATES.get(text.removeprefix(prefix))
            if found is not None:
                return found
    return BatchStatus.parse(text or "unspecified")


def _json(reply: Reply, send: Send, what: str) -> Mapping[str, Any]:
    try:
        found = reply.json()
    except ValueError:
        found = None
    if not isinstance(found, Mapping):
        snippet = reply.body[:80].decode("utf-8", "replace").replace("\n", " ")
        raise APIResponseValidationError(
            f"{send.method} {reply.url or send.path} answered {reply.status} with a body that is not {what}; "
            f"it began {snippet!r}. A proxy or gateway may stand between you and the API.",
            status_code=reply.status, method=send.method, url=reply.url or send.path, reason=f"not {what}")
    return found


class GeminiDialect(Dialect):
    """Gemini API Batch Mode on the Developer API (see the module)."""

    name = "gemini"
    title = "Gemini API Batch Mode"
    price_provider = "google"
    default_base_url = f"https://generativelanguage.googleapis.com/{_API_VERSION}"
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    # The SDK's variable names the host only.
    base_url_env = (("GOOGLE_GEMINI_BASE_URL", f"/{_API_VERSION}"),)
    upload_purpose = "batch"
    limits = Limits(completion_windows=("24h",), expires=True, max_requests=50_000,
                    max_file_bytes=2 * 1024 * 1024 * 1024)
    key_metadata = "displayName"
    carries_metadata = False
    line_shape = GEMINI_LINES
    rewrites_results = True
    cancel_answers_batch = False
    downloads_uploads = False
    structured_form = "gemini"

    # -- addressing and credentials -------------------------------------------------------------
    def auth_headers(self, settings: ClientSettings) -> dict[str, str]:
        return {"x-goog-api-key": settings.require_key()}

    def endpoint(self, endpoint: str) -> str:
        return model_path(endpoint)

    def chat_endpoint(self, model: str | None) -> str:
        """A Gemini batch's endpoint is its model: the settings' (a connection's) model."""
        if not model:
            raise InputValidationError([Problem(
                rule="missing_model", param="endpoint",
                message="a Gemini batch names its model, and neither the endpoint nor the settings name one",
                fix="set the connection's (or block's, or ClientSettings') model, e.g. 'gemini-2.5-flash', or pass "
                "the model as the endpoint")], source="batch parameters")
        return model

    def batch_model(self, endpoint: str) -> str | None:
        """A Gemini batch's endpoint is its model."""
        try:
            return model_path(endpoint).removeprefix("models/")
        except ValueError:
            return None

    def lines_model_problems(self, model: str | None, endpoint: str) -> list[Problem]:
        """Translated neutral requests naming a model other than the batch's (Gemini runs one model a batch)."""
        if not model:
            return []
        try:
            same = model_path(model) == model_path(endpoint)
        except ValueError:
            same = False
        if same:
            return []
        return [Problem(rule="model_mismatch", param="model",
                        message=f"the requests want model {model!r}, the batch is {endpoint!r}",
                        fix="give the batch the requests' model as its endpoint, or leave the model out of the "
                        "requests (the batch's is used)")]

    # -- files ------------------------------------------------------------------------------------
    def start_upload(self, path: Path, *, purpose: str | None = None, filename: str | None = None) -> Send:
        """Open a resumable upload; the file's display name is the name batch_ops looks it up by."""
        size = path.stat().st_size
        return Send("POST", f"../upload/{_API_VERSION}/files",
                    json={"file": {"displayName": filename or path.name}},
                    headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                             "X-Goog-Upload-Header-Content-Length": str(size),
                             "X-Goog-Upload-Header-Content-Type": "application/jsonl"})

    def finish_upload(self, path: Path, opened: Reply, start: Send) -> Send:
        """The bytes, streamed, in one ``upload, finalize`` at offset 0 to the URL the start answered."""
        url = opened.headers.get("x-goog-upload-url")
        if not url:
            raise APIResponseValidationError(
                f"{start.method} {opened.url or start.path} answered {opened.status} without an X-Goog-Upload-URL "
                "header: the resumable upload cannot go on (a proxy may strip the header).",
                status_code=opened.status, method=start.method, url=opened.url or start.path,
                reason="no X-Goog-Upload-URL")
        return Send("POST", f"../upload/{_API_VERSION}/files", url=url, stream=path,
                    headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0",
                             "Content-Type": "application/jsonl"})

    def upload_file(self, path: Path, *, purpose: str | None = None, filename: str | None = None) -> Send:
        raise NotImplementedError("Gemini uploads in two steps: start_upload, then finish_upload")

    def retrieve_file(self, file_id: str) -> Send:
        return Send("GET", _resource("files", file_id))

    def list_files(self, *, purpose: str | None = None, params: Mapping[str, Any] | None = None) -> Send:
        """One page of files; the plans' ``limit``/``after`` are Google's ``pageSize``/``pageToken``."""
        given = dict(params or {})
        query: dict[str, Any] = {"pageSize": min(int(given.get("limit") or 100), 100)}
        if given.get("after"):
            query["pageToken"] = given["after"]
        return Send("GET", "/files", params=query)

    def download_file(self, file_id: str, sink: Path) -> Send:
        return Send("GET", _resource("files", file_id) + ":download", params={"alt": "media"}, sink=sink)

    def delete_file(self, file_id: str) -> Send:
        return Send("DELETE", _resource("files", file_id))

    @staticmethod
    def _file(found: Mapping[str, Any]) -> FileObject:
        state = str(found.get("state") or "ACTIVE").upper()
        return FileObject(id=str(found["name"]), bytes=_int(found.get("sizeBytes")),
                          created_at=_epoch(found.get("createTime")), filename=found.get("displayName"),
                          purpose="batch", expires_at=_epoch(found.get("expirationTime")),
                          status={"ACTIVE": "processed", "PROCESSING": "uploaded", "FAILED": "error"}.get(state, state))

    def parse_file(self, reply: Reply, send: Send) -> FileObject:
        found = _json(reply, send, "a file")
        if isinstance(found.get("file"), Mapping):  # the upload's answer wraps it
            found = found["file"]
        try:
            return self._file(found)
        except (KeyError, ValueError, ValidationError) as exc:
            raise APIResponseValidationError(f"{send.method} {send.path}: not a Gemini file ({exc})",
                                             status_code=reply.status, method=send.method, url=send.path,
                                             reason="not a file") from None

    def parse_file_list(self, reply: Reply, send: Send) -> FileList:
        found = _json(reply, send, "a list of files")
        token = found.get("nextPageToken") or None
        files = [self._file(f) for f in found.get("files") or [] if isinstance(f, Mapping) and f.get("name")]
        return FileList(data=files, has_more=bool(token), last_id=token, first_id=files[0].id if files else None)

    def parse_deleted(self, reply: Reply) -> bool:
        return True  # Google answers a delete with an empty object

    # -- batches ----------------------------------------------------------------------------------
    def create_batch(self, body: Mapping[str, Any]) -> Send:
        """``POST /models/{model}:batchGenerateContent``: the model of ``body["batch"]["model"]`` in the path."""
        model = str(body["batch"]["model"])
        return Send("POST", "/" + quote(model, safe="/-_.") + ":batchGenerateContent", json=dict(body))

    def retrieve_batch(self, batch_id: str, *, deadline: float | None = None) -> Send:
        return Send("GET", _resource("batches", batch_id), deadline=deadline)

    def cancel_batch(self, batch_id: str) -> Send:
        """Cancel; Google answers ``{}`` (:attr:`cancel_answers_batch`), so the plan retrieves the batch after."""
        return Send("POST", _resource("batches", batch_id) + ":cancel")

    def list_batches(self, *, limit: int, after: str | None) -> Send:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InputValidationError([Problem(rule="invalid_limit", message=f"limit={limit!r} is outside 1..1000",
                                                fix="pass 1 <= limit <= 1000", param="limit")])
        return Send("GET", "/batches", params={"pageSize": limit, **({"pageToken": after} if after else {})})

    def batch_of(self, op: Mapping[str, Any]) -> Batch:
        """A Gemini Operation (or a bare batch resource) as our :class:`~batch_ops.models.Batch`."""
        meta: Mapping[str, Any] = op["metadata"] if isinstance(op.get("metadata"), Mapping) else op
        name = op.get("name") or meta.get("name")
        if not isinstance(name, str) or not name.startswith("batches/"):
            raise ValueError(f"no batch name (batches/...): {name!r}")
        status = _state(meta.get("state"))
        created = _epoch(meta.get("createTime")) or 0
        ended = _epoch(meta.get("endTime"))
        output = _mapping(meta.get("output")) or _mapping(op.get("response"))
        stats = _mapping(meta.get("batchStats"))
        source = _mapping(meta.get("inputConfig"))
        fields: dict[str, Any] = {
            "id": name,
            "endpoint": meta.get("model"),
            "model": meta.get("model"),
            "input_file_id": str(source.get("fileName") or ""),
            "status": status,
            "created_at": created,
            "expires_at": created + _EXPIRY_SECONDS if created else None,
            "output_file_id": output.get("responsesFile"),
            "request_counts": {"total": _int(stats.get("requestCount")),
                               "completed": _int(stats.get("successfulRequestCount")),
                               "failed": _int(stats.get("failedRequestCount"))},
            "metadata": {self.key_metadata: meta["displayName"]} if meta.get("displayName") else None,
        }
        if status in _ENDED_AT and ended:
            fields[_ENDED_AT[status]] = ended
        error = op.get("error")
        if isinstance(error, Mapping):
            fields["errors"] = {"data": [{"code": str(error.get("code")), "message": error.get("message")}]}
        return Batch.model_validate(fields)

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        found = _json(reply, send, "a batch")
        try:
            return self.batch_of(found)
        except (KeyError, ValueError, ValidationError) as exc:
            raise APIResponseValidationError(
                f"{send.method} {reply.url or send.path} answered {reply.status} with a body that is not a Gemini "
                f"batch: {exc}", status_code=reply.status, method=send.method, url=reply.url or send.path,
                reason="not a batch") from None

    def parse_batch_list(self, reply: Reply, send: Send) -> BatchList:
        found = _json(reply, send, "a list of batches")
        token = found.get("nextPageToken") or None
        ops = found.get("operations") or found.get("batches") or []
        try:
            batches = [self.batch_of(op) for op in ops if isinstance(op, Mapping)]
        except (KeyError, ValueError, ValidationError) as exc:
            raise APIResponseValidationError(f"{send.method} {send.path}: a listed batch is not one ({exc})",
                                             status_code=reply.status, method=send.method, url=send.path,
                                             reason="not a batch") from None
        # The page token is the cursor the plans hand back as ``after``.
        return BatchList(data=batches, has_more=bool(token), last_id=token,
                         first_id=batches[0].id if batches else None)

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
        """``{"batch": {model, displayName: our key, inputConfig: {fileName}}}``, every parameter checked first.

        Examples:
            >>> GeminiDialect().create_body(input_file_id="files/f1", endpoint="gemini-2.5-flash",
            ...     completion_window="24h", metadata=None, output_expires_after=None, idempotency_key="k@0")["batch"]
            {'model': 'models/gemini-2.5-flash', 'displayName': 'k@0', 'inputConfig': {'fileName': 'files/f1'}}
        """
        problems: list[Problem] = []

        def refuse(param: str, message: str, fix: str) -> None:
            problems.append(Problem(rule="invalid_batch_parameter", message=message, fix=fix, param=param))

        model = None
        try:
            model = model_path(endpoint)
        except ValueError as exc:
            refuse("endpoint", str(exc), "pass the model as the endpoint, e.g. endpoint='gemini-2.5-flash'")
        if completion_window not in self.limits.completion_windows:
            refuse("completion_window", f"completion_window {completion_window!r}: Gemini batches have no completion "
                   "window (they target 24 h and expire after 48 h)", "leave completion_window at '24h'")
        theirs = sorted(k for k in (metadata or {}) if k not in OWNER_METADATA_KEYS)
        if theirs:
            refuse("metadata", f"metadata {theirs}: a Gemini batch has no metadata (its display name carries "
                   "batch_ops's idempotency key)", "leave metadata out for Gemini batches")
        if output_expires_after is not None:
            refuse("output_expires_after", "output_expires_after: Gemini sets no expiry on output files",
                   "leave output_expires_after out for Gemini batches")
        if len(idempotency_key) > DISPLAY_NAME_MAX:
            refuse("idempotency_key", f"the attempt key is {len(idempotency_key)} characters; a Gemini batch's "
                   f"display name, which carries it, takes at most {DISPLAY_NAME_MAX}",
                   f"use an idempotency key of at most {DISPLAY_NAME_MAX - 20} characters (derived keys have 43)")
        if not input_file_id or not isinstance(input_file_id, str):
            refuse("input_file_id", "input_file_id is empty", "upload the file first")
        if problems:
            raise InputValidationError(problems, source="batch parameters")
        file_name = input_file_id if input_file_id.startswith("files/") else f"files/{input_file_id}"
        return {"batch": {"model": model, "displayName": idempotency_key, "inputConfig": {"fileName": file_name}}}

    # -- results ----------------------------------------------------------------------------------
    def result_files(self, batch: Batch) -> tuple[ResultFile, ...]:
        """The responses file, successes and failures together (split on download)."""
        return (ResultFile("results", batch.output_file_id),) if batch.output_file_id else ()

    def result_line(self, line: Mapping[str, Any]) -> Mapping[str, Any]:
        """A responses-file line in OpenAI's shape: ``custom_id`` = ``key``; a ``response`` is a 200 whose
        body is the GenerateContentResponse; an ``error`` (a google.rpc Status) is the line's error.

        Examples:
            >>> d = GeminiDialect()
            >>> d.result_line({"key": "a", "response": {"candidates": []}})["response"]["status_code"]
            200
            >>> d.result_line({"key": "b", "error": {"code": 500, "message": "boom", "status": "INTERNAL"}})["error"]
            {'code': 'INTERNAL', 'message': 'boom'}
        """
        key = line.get("key")
        if key is None and isinstance(line.get("metadata"), Mapping):
            key = line["metadata"].get("key")  # an inline response carries its key in metadata
        out: dict[str, Any] = {"custom_id": key}
        error = line.get("error")
        if isinstance(line.get("response"), Mapping) and not error:
            out.update(response={"status_code": 200, "body": line["response"]}, error=None)
        else:
            error = error if isinstance(error, Mapping) else {}
            code = error.get("status") or str(error.get("code") or "missing_response")
            out.update(response=None, error={"code": str(code), "message": str(error.get("message") or json.dumps(
                dict(line))[:200])})
        out["raw"] = dict(line)
        return out

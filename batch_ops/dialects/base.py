"""The dialect seam: what one batch API says differently from another.

The plans (:mod:`batch_ops._plans`, :mod:`batch_ops._submit`) never name a provider. Every request
they send is built by a :class:`Dialect` (a :class:`~batch_ops.effects.Send`), and every answer is
read by it into our neutral models (:class:`~batch_ops.models.Batch`,
:class:`~batch_ops.models.FileObject`, :class:`~batch_ops.models.BatchList`). What differs
between batch APIs lives in one dialect object each:

* **addressing and credentials** — the path of each call, the query every call carries, the
  headers that carry the key;
* **request and response shapes** — the create body, the batch object, a list page;
* **the status vocabulary**, mapped onto :class:`~batch_ops.models.BatchStatus` (and so onto the
  outcomes the core decides on);
* **where a batch's results live** (:meth:`Dialect.result_files`);
* **limits and rules** (:class:`Limits`): completion windows, how an endpoint is spelled;
* **the field that carries our idempotency key** (:meth:`Dialect.key_of`, :meth:`Dialect.create_body`).

A quirk is data (a class attribute) or a small override in its dialect, never a branch in a plan.
Dialects are frozen and hold no credentials: the key is read from the settings at each request.

Examples:
    >>> from batch_ops.dialects import dialect_for
    >>> from batch_ops.settings import ClientSettings
    >>> d = dialect_for(ClientSettings(api_key="sk-1"))
    >>> d.name, d.retrieve_batch("batch_1").path, d.auth_headers(ClientSettings(api_key="sk-1"))
    ('openai', '/batches/batch_1', {'Authorization': 'Bearer sk-1'})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from batch_ops.effects import Reply, Send, api_path, list_params, parse
from batch_ops.errors import InputValidationError, Problem
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY
from batch_ops.identity.owners import OWNER_METADATA_KEYS
from batch_ops.jsonl.rules import OPENAI_LINES, LineShape, RuleOptions
from batch_ops.models import (
    BATCH_ENDPOINTS,
    METADATA_MAX_PAIRS,
    Batch,
    BatchList,
    BatchStatus,
    FileList,
    FileObject,
    check_create_params,
)

if TYPE_CHECKING:
    from batch_ops.settings import ClientSettings

__all__ = ["Dialect", "Limits", "ResultFile"]


@dataclass(frozen=True)
class Limits:
    """What one batch may hold, and what the API accepts when it is created.

    Attributes:
        completion_windows: the ``completion_window`` values the create accepts.
        expires: a batch that outlives its window ends ``expired`` (Azure OpenAI does not expire
            batches: "we do not expire the jobs that take longer").
        max_requests: requests in one batch.
        max_file_bytes: bytes of one batch input.
        endpoints: the batch endpoints the API takes (OpenAI's spelling; a subset of
            :data:`~batch_ops.models.BATCH_ENDPOINTS`).
    """

    completion_windows: tuple[str, ...] = ("24h",)
    expires: bool = True
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024
    endpoints: tuple[str, ...] = BATCH_ENDPOINTS


@dataclass(frozen=True)
class ResultFile:
    """One file that holds a batch's results: ``kind`` is ``"output"`` (successes), ``"error"``, or
    ``"results"`` (both together, split on download into an output and an error file)."""

    kind: str
    file_id: str


class Dialect:
    """One batch API's way of saying things (see the module). Subclasses override what differs.

    The defaults are OpenAI's Files and Batches API; :class:`~batch_ops.dialects.openai.OpenAIDialect`
    is this class under its own name.
    """

    #: The provider's name, as settings and connections spell it.
    name: ClassVar[str] = "openai"
    #: What a person calls it, for messages and docs.
    title: ClassVar[str] = "OpenAI Batch API"
    #: The API root when the settings name none (``ClientSettings.base_url`` left empty); None: the user
    #: must give one (Azure OpenAI: every resource has its own; any OpenAI-compatible server).
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"
    #: Environment variables that hold the key, first found wins (``ClientSettings.from_env``).
    key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
    #: Environment variables that hold the API root, each with what to append to reach our base URL
    #: (an SDK's variable may name the host only, e.g. ``ANTHROPIC_BASE_URL`` without ``/v1``).
    base_url_env: ClassVar[tuple[tuple[str, str], ...]] = (("OPENAI_BASE_URL", ""),
                                                            ("AZURE_OPENAI_ENDPOINT", "/openai"))
    #: Batch endpoints are spelled without ``/v1`` on the wire (Azure OpenAI's documented form); the
    #: ``/v1`` form is accepted as well.
    short_endpoints: ClassVar[bool] = False
    #: The ``purpose`` of an uploaded batch input.
    upload_purpose: ClassVar[str] = "batch"
    #: Limits and rules of a batch.
    limits: ClassVar[Limits] = Limits()
    #: The metadata key under which our idempotency (attempt) key is written on a batch.
    key_metadata: ClassVar[str] = IDEMPOTENCY_METADATA_KEY
    #: Wire statuses :class:`~batch_ops.models.BatchStatus` does not know by name (case and
    #: ``canceled``/``InProgress`` spellings it reads already), mapped to ours — e.g. Novita's
    #: ``PROGRESS``. A status still unknown stays unknown: never terminal, the wait goes on.
    status_aliases: ClassVar[Mapping[str, BatchStatus]] = {}
    #: How a request line of this API is shaped (the request file's checker reads it).
    line_shape: ClassVar[LineShape] = OPENAI_LINES
    #: The provider in the batch price table (genai-prices' provider id); None: prices come from overrides only.
    price_provider: ClassVar[str | None] = "openai"
    #: Result lines arrive in another shape than OpenAI's output/error lines: each downloaded result
    #: file is rewritten line by line with :meth:`result_line` before anything reads it.
    rewrites_results: ClassVar[bool] = False
    #: A cancel is answered with the batch. False (Gemini answers ``{}``): the plan retrieves it after.
    cancel_answers_batch: ClassVar[bool] = True
    #: An uploaded batch input can be downloaded again (results are joined to it when no request file
    #: is given). False: Gemini hands back generated files only.
    downloads_uploads: ClassVar[bool] = True
    #: The API keeps uploaded files and a batch is created from one (``input_file_id``). False: the
    #: create carries the requests themselves (:meth:`inline_body`, :meth:`create_from_file`), and a
    #: retry re-sends exactly the requests it carries.
    stores_files: ClassVar[bool] = True
    #: A batch can carry our idempotency key (:meth:`key_of`), so a key's batches are found by listing.
    #: False (Anthropic has no batch metadata): the submit records key → batch in a durable key
    #: ledger instead (:mod:`batch_ops.identity.ledger`).
    carries_key: ClassVar[bool] = True
    #: A batch keeps the metadata pairs it was created with, the adapters' owner record among them (the orphan
    #: sweep reads it). False (Anthropic, Gemini, Together): the submit keeps the owner record in the key
    #: ledger, when there is one (:meth:`batch_ops.identity.ledger.KeyLedger.own`).
    carries_metadata: ClassVar[bool] = True
    #: How a response schema is said to this API, and which JSON Schema subset it takes
    #: (:mod:`batch_ops.structured`): ``"openai"`` (``response_format`` json_schema, strict),
    #: ``"anthropic"`` (a forced tool's ``input_schema``), ``"gemini"`` (``response_json_schema``).
    structured_form: ClassVar[str] = "openai"

    # -- addressing and credentials -------------------------------------------------------------
    def auth_headers(self, settings: ClientSettings) -> dict[str, str]:
        """The headers carrying the credentials (never logged)."""
        headers = {"Authorization": f"Bearer {settings.require_key()}"}
        if settings.organization:
            headers["OpenAI-Organization"] = settings.organization
        if settings.project:
            headers["OpenAI-Project"] = settings.project
        return headers

    def default_params(self, settings: ClientSettings) -> dict[str, str]:
        """Query parameters every call carries."""
        return {}

    def endpoint(self, endpoint: str) -> str:
        """How ``endpoint`` (a batch endpoint such as ``/v1/chat/completions``) is spelled on the wire."""
        return endpoint

    def line_rules(self, endpoint: str | None = None) -> RuleOptions:
        """The rules a request file of this API is checked by (the options of ``check_file``,
        ``validate_file``, ``write_requests``, ``shard_file``): its line shape and its limits.

        Examples:
            >>> rules = Dialect().line_rules("/v1/embeddings")
            >>> rules["shape"].id_field, rules["max_lines"], rules["max_bytes"] // 2**20
            ('custom_id', 50000, 200)
        """
        return RuleOptions(endpoint=endpoint, azure=self.short_endpoints, shape=self.line_shape,
                           max_lines=self.limits.max_requests, max_bytes=self.limits.max_file_bytes)

    def chat_endpoint(self, model: str | None) -> str:
        """The endpoint provider-neutral chat requests go to when the caller names none (``model``: the
        settings' model, for an API whose batch names it)."""
        return "/v1/chat/completions"

    def batch_model(self, endpoint: str) -> str | None:
        """The model a batch runs when the batch (not its lines) names it, from its ``endpoint``; None: the lines
        name their models (OpenAI). Prices the estimate of lines that name none."""
        return None

    def lines_model_problems(self, model: str | None, endpoint: str) -> list[Problem]:
        """Findings when the model the request lines want (``model``: the one model of a checked file, or
        the one a translated neutral request names for an API whose model is the batch's) cannot be
        this batch's, e.g. it differs from the model the batch names. Checked before any upload; OpenAI:
        none (the lines name the model themselves)."""
        return []

    # -- files ------------------------------------------------------------------------------------
    def upload_file(self, path: Path, *, purpose: str | None = None, filename: str | None = None) -> Send:
        """Upload a batch input (streamed multipart)."""
        return Send("POST", "/files", json={"purpose": purpose or self.upload_purpose}, upload=path,
                    filename=filename)

    def start_upload(self, path: Path, *, purpose: str | None = None, filename: str | None = None) -> Send | None:
        """The request that opens a two-step upload (its answer goes to :meth:`finish_upload`), or None:
        the upload is the one request :meth:`upload_file` makes (OpenAI)."""
        return None

    def finish_upload(self, path: Path, opened: Reply, start: Send) -> Send:
        """(Two-step uploads) the request that sends the bytes, from the answer to :meth:`start_upload`."""
        raise NotImplementedError(f"{self.title} uploads in one request (upload_file)")

    def retrieve_file(self, file_id: str) -> Send:
        return Send("GET", api_path("/files/{file_id}", file_id=file_id))

    def list_files(self, *, purpose: str | None = None, params: Mapping[str, Any] | None = None) -> Send:
        query = {**({"purpose": purpose} if purpose else {}), **(params or {})}
        return Send("GET", "/files", params=query or None)

    def download_file(self, file_id: str, sink: Path) -> Send:
        """A file's content, streamed into ``sink``."""
        return Send("GET", api_path("/files/{file_id}/content", file_id=file_id), sink=sink)

    def delete_file(self, file_id: str) -> Send:
        return Send("DELETE", api_path("/files/{file_id}", file_id=file_id))

    def parse_file(self, reply: Reply, send: Send) -> FileObject:
        return parse(FileObject, reply, send, what="a file object")

    def parse_file_list(self, reply: Reply, send: Send) -> FileList:
        return parse(FileList, reply, send, what="a list of files")

    def parse_deleted(self, reply: Reply) -> bool:
        """Whether a delete's answer says the file is gone (a 2xx whose body we cannot read: yes)."""
        try:
            answer = reply.json()
        except ValueError:
            return True
        return bool(answer.get("deleted", True)) if isinstance(answer, dict) else True

    # -- batches ----------------------------------------------------------------------------------
    def create_batch(self, body: Mapping[str, Any]) -> Send:
        """The create call for a body :meth:`create_body` made."""
        return Send("POST", "/batches", json=dict(body))

    def retrieve_batch(self, batch_id: str, *, deadline: float | None = None) -> Send:
        return Send("GET", api_path("/batches/{batch_id}", batch_id=batch_id), deadline=deadline)

    def inline_body(self, requests: Path, dest: Path) -> int:
        """(Without a file store) write the create body carrying the validated request file ``requests`` to
        ``dest``, streamed (blocking file work: a plan runs it as a ``Work``); the number of requests."""
        raise NotImplementedError(f"{self.title} creates batches from uploaded files")

    def create_from_file(self, body: Path) -> Send:
        """(Without a file store) the create call, the body :meth:`inline_body` wrote streamed from disk."""
        raise NotImplementedError(f"{self.title} creates batches from uploaded files")

    def cancel_batch(self, batch_id: str) -> Send:
        return Send("POST", api_path("/batches/{batch_id}/cancel", batch_id=batch_id))

    def list_batches(self, *, limit: int, after: str | None) -> Send:
        """One page of the batch list, newest first; ``after`` is the cursor a page gave."""
        return Send("GET", "/batches", params=list_params(limit=limit, after=after))

    def parse_batch(self, reply: Reply, send: Send) -> Batch:
        """The answer as our :class:`~batch_ops.models.Batch`, its status in our vocabulary."""
        return self._aliased(parse(Batch, reply, send, what="a batch"))

    def parse_batch_list(self, reply: Reply, send: Send) -> BatchList:
        """A page of batches, each status in our vocabulary (a list is read as a retrieve is)."""
        page = parse(BatchList, reply, send, what="a list of batches")
        if not self.status_aliases:
            return page
        return page.model_copy(update={"data": [self._aliased(b) for b in page.data]})

    def _aliased(self, batch: Batch) -> Batch:
        if self.status_aliases and not batch.status.is_known:
            ours = self.status_aliases.get(batch.status.value)
            if ours is not None:
                return batch.model_copy(update={"status": ours})
        return batch

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
        """The create body, our idempotency key written where :meth:`key_of` reads it; every parameter
        is checked first, so a bad one raises :class:`~batch_ops.errors.InputValidationError` before
        any I/O.

        Examples:
            >>> Dialect().create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h",
            ...                       metadata={"run": "n"}, output_expires_after=None, idempotency_key="k")
            {'input_file_id': 'f', 'endpoint': '/v1/embeddings', 'completion_window': '24h', \
'metadata': {'run': 'n', 'batch_ops_idempotency_key': 'k'}}
        """
        user_meta = dict(metadata or {})
        if isinstance(output_expires_after, Mapping) and "anchor" not in output_expires_after:
            # The API requires the anchor and knows only one: say it for the caller.
            output_expires_after = {"anchor": "created_at", **output_expires_after}
        problems = [
            Problem(rule="invalid_batch_parameter", message=msg, fix=fix, param=param)
            for param, msg, fix in check_create_params(
                endpoint=endpoint, completion_window=completion_window, metadata=user_meta,
                output_expires_after=output_expires_after, azure=self.short_endpoints,
                completion_windows=self.limits.completion_windows, endpoints=self.limits.endpoints,
            )
        ]
        if not input_file_id or not isinstance(input_file_id, str):
            problems.append(Problem(rule="invalid_batch_parameter", message="input_file_id is empty",
                                    fix="upload the file first", param="input_file_id"))
        problems.extend(self._metadata_room(user_meta))
        if problems:
            raise InputValidationError(problems, source="batch parameters")
        user_meta[self.key_metadata] = idempotency_key
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": self.endpoint(endpoint),
            "completion_window": completion_window,
            "metadata": user_meta,
        }
        if output_expires_after is not None:
            body["output_expires_after"] = dict(output_expires_after)
        return body

    def _metadata_room(self, user_meta: Mapping[str, str]) -> list[Problem]:
        """Our key takes a metadata pair: too many of the caller's own leave it no room."""
        if self.key_metadata in user_meta or len(user_meta) < METADATA_MAX_PAIRS:
            return []
        # The adapters add the run that owns the batch (for the orphan sweep): name every pair that is ours.
        ours = [k for k in OWNER_METADATA_KEYS if k in user_meta]
        added = ", ".join(f"'{k}'" for k in (*ours, self.key_metadata))
        return [Problem(
            rule="invalid_batch_parameter",
            message=f"metadata has {len(user_meta) - len(ours)} pairs of yours and batch_ops adds {added} "
            "(so a retried create finds the batch instead of billing a second one, and a sweep finds its run)",
            fix=f"keep at most {METADATA_MAX_PAIRS - 1 - len(ours)} metadata keys of your own",
            param="metadata",
        )]

    # -- our key on a batch -----------------------------------------------------------------------
    def key_of(self, batch: Batch) -> str | None:
        """The idempotency (attempt) key written on ``batch``, or None (not ours)."""
        return (batch.metadata or {}).get(self.key_metadata)

    # An API whose batches carry no metadata (Together) carries the attempt key in the name of the
    # batch's uploaded input instead: the three hooks below say how; OpenAI's defaults do nothing.
    def upload_name(self, attempt: str, digest: str) -> str | None:
        """The name to upload attempt ``attempt``'s input under (``digest``: its content's hash), or None
        for the plans' own name (which carries only a hash of the key)."""
        return None

    def batch_list_companion(self) -> Send | None:
        """A call whose answer tells whose each listed batch is (Together: the file list), or None."""
        return None

    def annotate_batch_list(self, page: BatchList, reply: Reply, send: Send) -> BatchList:
        """``page`` with each batch's key written where :meth:`key_of` reads it, from the companion's answer."""
        return page

    # -- results ----------------------------------------------------------------------------------
    def result_line(self, line: Mapping[str, Any]) -> Mapping[str, Any]:
        """One result line as OpenAI writes them (``custom_id``, ``response {status_code, body}``,
        ``error``), from this API's own line; the provider's line is kept under ``raw`` by dialects
        that rewrite (:attr:`rewrites_results`). OpenAI's lines are already that shape."""
        return line

    def result_files(self, batch: Batch) -> tuple[ResultFile, ...]:
        """The files that hold ``batch``'s results, successes first.

        Examples:
            >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="completed",
            ...           created_at=0, output_file_id="file-out")
            >>> Dialect().result_files(b)
            (ResultFile(kind='output', file_id='file-out'),)
        """
        found = []
        if batch.output_file_id:
            found.append(ResultFile("output", batch.output_file_id))
        if batch.error_file_id:
            found.append(ResultFile("error", batch.error_file_id))
        return tuple(found)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

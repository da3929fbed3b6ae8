"""``BatchClient`` and ``AsyncBatchClient``: the Files and Batches API, submit and results.

Both clients run the same plans (:mod:`batch_ops._plans`); they differ only in how they send
a request and how they sleep. Every call retries what is worth retrying (408/409/429/5xx,
network errors) with jittered back-off and ``Retry-After``; a batch create is never blindly
re-sent (see ``create``).

Examples:
    >>> from batch_ops import BatchClient
    >>> with BatchClient(api_key="sk-local-dev-7f3a", base_url="http://127.0.0.1:9/v1") as client:
    ...     client.settings.base_url
    'http://127.0.0.1:9/v1'
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, cast

import httpx
from pydantic import ValidationError

from batch_ops import _plans, storage
from batch_ops._aio import within
from batch_ops._files import atomic_file
from batch_ops._http import USER_AGENT, MultipartBody, RetryPolicy
from batch_ops._plans import Notify, Reply, Send, Sleep, Work
from batch_ops._submit import Source, Submission, SubmitSpec, find_chain_plan, submit_plan
from batch_ops._transport import READ_EAGERLY, AiohttpTransport, aiohttp_available
from batch_ops.chain import Attempt, AttemptChain
from batch_ops.dialects import Dialect
from batch_ops.errors import BatchOpsError, ConfigurationError, InputValidationError, Problem
from batch_ops.locks import PicklableWeakKeyDictionary, ProcessLocalSet
from batch_ops.models import Batch, BatchList, BatchStatus, FileList, FileObject, ResultLine
from batch_ops.polling import DEFAULT_FAIL_ON, BatchPoller
from batch_ops.results import join_chain_results
from batch_ops.settings import ClientSettings, settings_error
from batch_ops.storage import Location, StorageTarget

__all__ = ["AsyncBatchClient", "BatchClient"]

_CHUNK = 1024 * 1024
_log = logging.getLogger("batch_ops")
#: Parsed URLs kept per client (one per batch being polled); the cache starts over when full.
_URL_CACHE_SIZE = 4096
#: Sleeps used by the drivers; tests may patch these (and ``_plans.clock``), nothing else.
_sleep = time.sleep
_async_sleep = asyncio.sleep

PathLike = str | os.PathLike[str]


def _settings(settings: ClientSettings | None, overrides: Mapping[str, Any]) -> ClientSettings:
    given = {k: v for k, v in overrides.items() if v is not None}
    timeout = given.get("timeout")
    if isinstance(timeout, httpx.Timeout):  # the official SDK's constructor takes one too
        given["timeout"] = timeout.read if timeout.read is not None else 600.0
    try:
        if settings is None:
            return ClientSettings.from_env(**given)
        # Validated, unlike model_copy(update=...): an override such as base_url="ftp://..." is checked too.
        return ClientSettings.model_validate({**dict(settings), **given}) if given else settings
    except ValidationError as exc:
        raise settings_error(exc) from None


def _not_sent(exc: httpx.TransportError) -> bool:
    """True only when the request certainly never reached the server.

    This decides whether a failed create may have created a batch, so it must never say
    "not sent" by mistake. httpx's ConnectError / ConnectTimeout / PoolTimeout mean the
    connection was never established (our aiohttp transport maps to them the same way).
    When the cause is an aiohttp error it decides instead: a caller's own client may use the
    httpx-aiohttp package's transport, which maps *every* aiohttp connection error, a
    connection dropped after the request was read included, to ``ConnectTimeout``; only
    aiohttp's ``ClientConnectorError`` and ``ConnectionTimeoutError`` mean nothing was sent.
    """
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.split(".")[0] == "aiohttp":
        return any(cls.__name__ in ("ClientConnectorError", "ConnectionTimeoutError") for cls in type(cause).__mro__)
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _timed_out(exc: httpx.TransportError) -> bool:
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.split(".")[0] == "aiohttp":
        return isinstance(cause, TimeoutError) or "Timeout" in type(cause).__name__
    return isinstance(exc, httpx.TimeoutException)


def _transport_reply(exc: httpx.TransportError, url: str) -> Reply:
    kind = type(exc.__cause__ or exc).__name__
    detail = f"{kind}: {exc}" if str(exc) else kind
    return Reply(
        error=f"{detail} (reaching {url})",
        timed_out=_timed_out(exc),
        sent=not _not_sent(exc),
    )


def _headers(response: httpx.Response) -> dict[str, str]:
    """The answer's headers as a plain dict with lower-case names, in one pass.

    ``dict(response.headers)`` looks every name up again in httpx's header list: measurable at a
    thousand polls a second.
    """
    return dict(response.headers.items())


def _check_terminal(batch: Batch) -> None:
    if not batch.status.is_terminal:
        raise BatchOpsError(
            f"Batch {batch.id} is still {batch.status.value}: wait for it (client.batches.wait) before "
            "reading results."
        )


def _noticed(submission: Submission) -> Submission:
    """``submit`` hands back the batch alone: what a person should know about the submit is logged
    here (``submit_spec`` callers — the adapters, the CLI — log ``Submission.notices`` themselves)."""
    for notice in submission.notices:
        _log.warning("%s", notice)
    return submission


def _checked_batch(what: Any) -> Batch | AttemptChain | Submission:
    if isinstance(what, (Batch, AttemptChain, Submission)):
        return what
    raise InputValidationError(
        [Problem(rule="invalid_argument", param="batch", message=f"batch is a {type(what).__name__}",
                 fix="pass a Batch, its id, a chain (client.batches.chain(key)) or a Submission")],
        source="batch parameters",
    )


def _as_chain(what: Batch | AttemptChain | Submission) -> AttemptChain:
    if isinstance(what, Submission):
        return what.chain
    if isinstance(what, AttemptChain):
        return what
    return AttemptChain(what.id, (Attempt(0, what),))


@dataclass(frozen=True)
class _Prepared:
    url: httpx.URL
    headers: dict[str, str]
    params: dict[str, Any] | None
    content: bytes | None
    frame: MultipartBody | None


class _Base:
    """What both clients share: settings, retry policy, request preparation."""

    def __init__(self, settings: ClientSettings | None, overrides: Mapping[str, Any]) -> None:
        settings = _settings(settings, overrides)
        settings.require_key()  # fail now, with the fix, rather than at the first request
        self.settings = settings
        #: The batch API spoken (settings.provider): builds every request, reads every answer.
        self.dialect: Dialect = settings.dialect
        self.retry_policy = RetryPolicy(
            max_retries=settings.max_retries,
            max_elapsed=settings.retry_max_elapsed,
            initial=settings.backoff_initial,
            maximum=settings.backoff_max,
        )
        #: What every plan is driven with: the dialect that speaks the wire, the retry policy.
        self._wire: Mapping[str, Any] = MappingProxyType({"dialect": self.dialect, "policy": self.retry_policy})
        self._urls: dict[str, httpx.URL] = {}
        # Settings are frozen: the headers and query every request carries are built once (the
        # credentials are added per request, so no plain-text key lives on the client).
        self._base_headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
                              "Accept-Encoding": "gzip, deflate"}
        self._base_params = self.dialect.default_params(settings)

    def _prepare(self, send: Send) -> _Prepared:
        """URL, headers, query and body of a request: JSON, or an upload's multipart frame.

        A redirect's target (``send.url``) is used as it is, query included; the credentials go
        only where the plan says they may (``send.auth``: same origin).
        """
        headers = ({**self._base_headers, **self.dialect.auth_headers(self.settings)} if send.auth
                   else dict(self._base_headers))
        if send.url is not None:
            params: dict[str, Any] = dict(send.params or {})
        else:
            params = {**self._base_params, **send.params} if send.params else dict(self._base_params)
        content = frame = None
        if send.upload is not None:
            size = send.upload.stat().st_size
            frame = MultipartBody.for_file(filename=send.filename or send.upload.name, size=size,
                                           fields=dict(send.json or {}))
            headers.update({"Content-Type": frame.content_type, "Content-Length": str(frame.content_length)})
        elif send.json is not None:
            content = json.dumps(send.json).encode()
            headers["Content-Type"] = "application/json"
        # None, not {}: httpx re-parses the URL to merge even empty params.
        url = httpx.URL(send.url) if send.url is not None else self._url(send.path)
        return _Prepared(url, headers, params or None, content, frame)

    def _create_plan(self, *, input_file_id: str, endpoint: str, completion_window: str,
                     metadata: Mapping[str, str] | None, output_expires_after: Mapping[str, Any] | None) -> Any:
        """A create under a fresh random key (checked before any I/O): at most one batch, even when
        the answer is lost."""
        key = _plans.new_idempotency_key()
        body = self.dialect.create_body(input_file_id=input_file_id, endpoint=endpoint,
                                        completion_window=completion_window, metadata=metadata,
                                        output_expires_after=output_expires_after, idempotency_key=key)
        return _plans.create_plan(body, key=key, key_may_exist=False, **self._wire,
                                  lookback=self.settings.idempotency_lookback)

    def _secrets(self) -> list[str]:
        """What must never appear in an error we raise: our own key."""
        key = self.settings.api_key
        return [key.get_secret_value()] if key is not None else []

    def _log_retry(self, sleep: Sleep) -> None:
        if sleep.reason:
            _log.warning("%s", sleep.reason)

    def _url(self, path: str) -> httpx.URL:
        """The URL of an API path, parsed once per client: httpx parses a string URL on every
        request, a third of the CPU of a status poll (1,000 Airflow triggers poll ~900 times/s)."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(self.settings.url(path))
        return url

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.settings.timeout, connect=self.settings.connect_timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r})"


def _iter_upload(frame: MultipartBody, path: Path) -> Iterator[bytes]:
    yield frame.head
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk
    yield frame.tail


async def _aiter_upload(frame: MultipartBody, path: Path) -> AsyncIterator[bytes]:
    yield frame.head
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)
    yield frame.tail


class _DeadlinePassed(Exception):
    """Internal: the caller's deadline passed while a body was arriving."""


def _within(chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
    for chunk in chunks:
        if deadline is not None and _plans.clock() > deadline:
            raise _DeadlinePassed
        yield chunk


def _capped_timeouts(timeout: httpx.Timeout, remaining: float) -> dict[str, float | None]:
    """httpx's per-request timeouts, none longer than the time left before the caller's deadline."""
    def cap(value: float | None) -> float:
        return remaining if value is None else min(value, remaining)

    return {"connect": cap(timeout.connect), "read": cap(timeout.read), "write": cap(timeout.write),
            "pool": cap(timeout.pool)}


# ---------------------------------------------------------------------------------------------
# Sync client
# ---------------------------------------------------------------------------------------------


class BatchClient(_Base):
    """Blocking client for the Files and Batches API.

    Args:
        api_key: overrides ``OPENAI_API_KEY``; see :class:`ClientSettings`.
        base_url: overrides ``OPENAI_BASE_URL``.
        organization: overrides ``OPENAI_ORG_ID``.
        project: overrides ``OPENAI_PROJECT_ID``.
        api_version: Azure OpenAI's api-version (overrides ``OPENAI_API_VERSION``).
        max_retries: retries after the first try, as in the official ``openai.OpenAI``.
        timeout: seconds per HTTP exchange, or an ``httpx.Timeout``.
        settings: a complete :class:`ClientSettings` instead of the above.
        http_client: an ``httpx.Client`` to use (not closed by us).

    Examples:
        >>> import os
        >>> from batch_ops import BatchClient
        >>> client = BatchClient(api_key="sk-local", base_url="http://127.0.0.1:8765/v1")
        >>> client.files, client.batches  # doctest: +ELLIPSIS
        (<batch_ops.client.Files object at ...>, <batch_ops.client.Batches object at ...>)
        >>> client.close()
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        api_version: str | None = None,
        max_retries: int | None = None,
        timeout: float | httpx.Timeout | None = None,
        settings: ClientSettings | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(settings, {"api_key": api_key, "base_url": base_url, "organization": organization,
                                    "project": project, "api_version": api_version, "max_retries": max_retries,
                                    "timeout": timeout})
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self._timeout())
        self.files = Files(self)
        self.batches = Batches(self)

    # -- driver ---------------------------------------------------------------------------
    def _drive(self, plan: Any) -> Any:
        """Drive a plan: perform each effect it yields and send back its result (or throw its error)."""
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = plan.throw(error) if error is not None else plan.send(value)
            except StopIteration as done:
                return done.value
            value, error = None, None
            try:
                if isinstance(effect, Send):
                    value = self._send_once(effect)
                elif isinstance(effect, Sleep):
                    self._log_retry(effect)
                    _sleep(effect.pause(events=False))  # no events subscription here: the ordinary pause
                elif isinstance(effect, Work):
                    value = effect.fn()
                elif isinstance(effect, Notify):
                    effect.callback(effect.batch)
            except Exception as exc:
                error = exc

    def _run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        try:
            return self._drive(plan)
        except BatchOpsError as exc:
            exc.redact(self._secrets())
            raise

    def _send_once(self, send: Send) -> Reply:
        prepared = self._prepare(send)
        url, headers, params = prepared.url, prepared.headers, prepared.params
        content: Any = prepared.content
        if send.upload is not None and prepared.frame is not None:
            content = _iter_upload(prepared.frame, send.upload)
        request = self._http.build_request(send.method, url, params=params, headers=headers, content=content)
        where = str(request.url)
        if send.deadline is not None:
            remaining = send.deadline - _plans.clock()
            if remaining <= 0:
                return Reply(error="the deadline passed", timed_out=True, url=where)
            # Each blocking step (connect, write, wait for the answer, read a piece) is bounded by what
            # is left; between pieces of the body the deadline is checked again (a server trickling a
            # byte at a time cannot hold the call past it).
            request.extensions["timeout"] = _capped_timeouts(self._timeout(), remaining)
        try:
            response = self._http.send(request, stream=True)
            try:
                if send.sink is None or not 200 <= response.status_code < 300:
                    # As the pieces arrive (iter_bytes with a size would wait for a whole MiB).
                    body = b"".join(_within(response.iter_bytes(), send.deadline))
                    return Reply(status=response.status_code, headers=_headers(response), body=body, url=where)
                with atomic_file(send.sink) as out:
                    # Decoded bytes, not raw: a server or proxy may gzip the file.
                    for chunk in _within(response.iter_bytes(), send.deadline):
                        out.write(chunk)
                return Reply(status=response.status_code, headers=_headers(response), url=where)
            finally:
                response.close()
        except _DeadlinePassed:
            return Reply(error="the deadline passed while the answer was arriving", timed_out=True, url=where)
        except httpx.TransportError as exc:
            return _transport_reply(exc, where)

    # -- high level -------------------------------------------------------------------------
    def submit(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        *,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        reattach: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        since: float | None = None,
    ) -> Batch:
        """Validate, upload and create a batch; nothing is uploaded if anything is invalid.

        Args:
            source: a JSONL request file, or an iterable of request dicts / ``RequestLine``
                (``url`` and ``method`` may be omitted; they default to ``endpoint`` / POST), or
                ``Source(file_id=...)`` for a file already uploaded.
            idempotency_key: name the work to make the whole submit safe to repeat (a task
                retry, two tries at once): the key's attempt chain is looked up first. A running
                attempt or an accepted outcome is returned as it is; after an outcome that
                ``fail_on`` / ``fail_on_request_failures`` reject, a new attempt is created that
                carries only the requests without a success anywhere in the chain. The chain is
                the key's for *these* requests (their fingerprint: content, not file name, line
                order or formatting); other requests under the same key get a chain of their own.
            reattach: look the key up first (default). Pass False only for a key you know is
                fresh; lost creates are still looked up before any re-send.
            fail_on: the terminal statuses that call for a new attempt.
            fail_on_request_failures: a completed batch with failed requests calls for one too.
            since: how far back (epoch seconds) the key is looked for; default
                ``settings.idempotency_lookback`` ago.

        Returns:
            The batch to wait for (or the final one): the latest attempt. With a key used before for
            *other* requests, the attempt of a new chain for these (the old batches are left alone,
            and a warning on the ``batch_ops`` logger says so): never a batch of other requests.

        Examples:
            >>> # client.submit("requests.jsonl", endpoint="/v1/chat/completions", idempotency_key="nightly-1")
        """
        spec = SubmitSpec.of(
            endpoint=endpoint, completion_window=completion_window, metadata=metadata,
            output_expires_after=output_expires_after, idempotency_key=idempotency_key, reattach=reattach,
            fail_on=fail_on, fail_on_request_failures=fail_on_request_failures, since=since,
        )
        return _noticed(self.submit_spec(source, spec)).batch

    def submit_spec(self, source: StorageTarget | Iterable[Mapping[str, Any]] | Source, spec: SubmitSpec) -> Submission:
        """:meth:`submit` with its parameters in one :class:`~batch_ops.SubmitSpec`, returning the whole
        :class:`~batch_ops.Submission`: the chain, whether this call created the attempt, how many
        requests it carries. The adapters and the CLI call this.

        Examples:
            >>> # sub = client.submit_spec("requests.jsonl", SubmitSpec(endpoint="/v1/embeddings", idempotency_key="k"))
        """
        src = Source.of(source)
        workdir = Path(tempfile.mkdtemp(prefix="batch_ops_submit_"))
        try:
            return self._run(submit_plan(spec, src, workdir=workdir, **self._wire,  # type: ignore[no-any-return]
                                         lookback=self.settings.idempotency_lookback))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def results(
        self,
        batch: Batch | AttemptChain | Submission | str,
        *,
        input_path: PathLike | None = None,
        workdir: PathLike | None = None,
    ) -> Iterator[ResultLine]:
        """Yield one :class:`ResultLine` per input request, in input order.

        ``batch`` is one batch (or its id), or a chain of attempts (``client.batches.chain(key)``,
        a ``Submission``): the output and error files of every batch are downloaded (streamed)
        into a temporary directory and joined by ``custom_id``, the latest success winning. A
        request found nowhere is yielded with ``error.code == "missing_result"``. The requests
        are the first attempt's input file, or ``input_path`` (the local request file; saves a
        download).
        """
        if isinstance(batch, str):
            batch = self.batches.retrieve(batch)
        chain = _as_chain(_checked_batch(batch))
        latest = chain.latest
        if latest is None:
            raise BatchOpsError(f"Key {chain.key!r} has no batch: nothing to read.")
        _check_terminal(latest)
        tmp = Path(tempfile.mkdtemp(prefix="batch_ops_results_", dir=workdir))
        try:
            pairs = self._run(_plans.chain_results_plan(chain, tmp, **self._wire))
            first = chain.attempts[0].batch
            if input_path and storage.is_remote(input_path):
                inp = storage.stage(input_path, tmp / "input.jsonl")
            elif input_path:
                inp = Path(input_path)
            else:
                inp = cast(Path, self.files.download(first.input_file_id, tmp / "input.jsonl"))
            yield from join_chain_results(input_path=inp, attempts=pairs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Files:
    """``client.files``: upload (streamed), retrieve, list, download (streamed), delete."""

    def __init__(self, client: BatchClient) -> None:
        self._c = client

    def upload(self, path: StorageTarget, *, purpose: str = "batch") -> FileObject:
        """Upload a file, streamed from disk in 1 MiB chunks (never read whole into memory).

        ``path`` may be on object storage (a URL, an ``ObjectStoragePath``): it is staged to a
        local temporary file first (see :mod:`batch_ops.storage`).
        """
        with storage.local_copy(_source_path(path)) as local:
            return self._c._run(_plans.upload_plan(_existing(local), purpose=purpose,  # type: ignore[no-any-return]
                                                   **self._c._wire))

    def retrieve(self, file_id: str) -> FileObject:
        return self._c._run(_plans.retrieve_file_plan(file_id, **self._c._wire))  # type: ignore[no-any-return]

    def list(self, *, purpose: str | None = None) -> FileList:
        return self._c._run(_plans.list_files_plan(purpose=purpose, **self._c._wire))  # type: ignore[no-any-return]

    def download(self, file_id: str, path: StorageTarget) -> Path | StorageTarget:
        """Stream a file's content to ``path`` (written whole or not at all).

        Returns the local :class:`~pathlib.Path` written, or ``path`` itself when it is on object
        storage (an ``s3://`` URL, an ``ObjectStoragePath``): the file is then downloaded to a
        local temporary file and put as one object (see :mod:`batch_ops.storage`).
        """
        target = _target(path)
        with storage.local_output(target) as local:
            written: Path = self._c._run(_plans.download_plan(file_id, local, **self._c._wire))
        return written if isinstance(target, Path) else path

    def delete(self, file_id: str) -> bool:
        return self._c._run(_plans.delete_file_plan(file_id, **self._c._wire))  # type: ignore[no-any-return]


class Batches:
    """``client.batches``: create (at most once), retrieve, cancel, list, iter_all, wait."""

    def __init__(self, client: BatchClient) -> None:
        self._c = client

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Create a batch, never twice.

        The batch is tagged with an idempotency key in ``metadata``. If a create may have
        reached the server but no answer came back, the list is searched for the key before
        sending again. Pass your own ``idempotency_key`` to make repeated calls (task retries)
        go through the submission core, like :meth:`BatchClient.submit`: they attach to the
        key's running attempt, return an accepted outcome, or make a new attempt after a failed,
        expired or cancelled one, carrying only the requests still without a success.
        """
        if idempotency_key is not None:  # the submission core: the key's chain, attach or a new attempt
            return self._c.submit(Source(file_id=input_file_id), endpoint=endpoint,
                                  completion_window=completion_window, metadata=metadata,
                                  output_expires_after=output_expires_after, idempotency_key=idempotency_key)
        return self._c._run(self._c._create_plan(  # type: ignore[no-any-return]
            input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
            metadata=metadata, output_expires_after=output_expires_after))

    def download_results(self, batch: Batch, directory: PathLike) -> _plans.ResultPaths:
        """Download ``batch``'s output and error files into ``directory`` (``<id>.output.jsonl``,
        ``<id>.errors.jsonl``), in OpenAI's line shape whatever the provider; a file the batch
        does not have is None."""
        return self._c._run(_plans.download_results_plan(batch, Path(directory), **self._c._wire))  # type: ignore[no-any-return]

    def retrieve(self, batch_id: str) -> Batch:
        return self._c._run(_plans.retrieve_batch_plan(batch_id, **self._c._wire))  # type: ignore[no-any-return]

    def cancel(self, batch_id: str) -> Batch:
        return self._c._run(_plans.cancel_batch_plan(batch_id, **self._c._wire))  # type: ignore[no-any-return]

    def list(self, *, limit: int = 20, after: str | None = None) -> BatchList:
        """One page, newest first; ``limit`` must be 1..100 (checked before any request).
        Iterating the page yields its batches; ``iter_all`` follows the cursor."""
        return self._c._run(_plans.list_batches_plan(limit=limit, after=after,  # type: ignore[no-any-return]
                                                     **self._c._wire))

    def iter_all(self, *, limit: int = 100, after: str | None = None) -> Iterator[Batch]:
        """Every batch, newest first, following ``has_more`` / ``last_id``."""
        while True:
            page = self.list(limit=limit, after=after)
            yield from page.data
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    def find_by_idempotency_key(self, key: str, *, since: float | None = None) -> Batch | None:
        """The batch batch_ops created with this exact (attempt) key, searching back to ``since`` (epoch s)."""
        since = _plans.clock() - self._c.settings.idempotency_lookback if since is None else since
        return self._c._run(_plans.find_by_key_plan(key, since=since, **self._c._wire))  # type: ignore[no-any-return]

    def chain(self, key: str, *, since: float | None = None, fingerprint: str | None = None) -> AttemptChain:
        """Every attempt of ``key``, from the batch list alone.

        A key used for other requests over time has one chain per set of requests (see
        :mod:`batch_ops.chain`): ``fingerprint`` picks one (``Submission.fingerprint``, or
        ``batch_ops.fingerprint.fingerprint_file(path).value``); without it, the key's newest chain.

        Examples:
            >>> # chain = client.batches.chain("nightly-1"); chain.batch_ids, chain.latest.status
        """
        since = _plans.clock() - self._c.settings.idempotency_lookback if since is None else since
        return self._c._run(find_chain_plan(key, since=since, **self._c._wire,  # type: ignore[no-any-return]
                                            fingerprint=fingerprint))

    def wait(
        self,
        batch_id: str,
        *,
        poll_interval: float = 30.0,
        timeout: float | None = 86400.0,
        max_poll_interval: float | None = None,
        deadline: float | None = None,
        on_poll: Any = None,
    ) -> Batch:
        """Poll until terminal and return the batch (whatever its outcome).

        Raises BatchTimeoutError at the deadline (the batch keeps running). Pass the result to
        :func:`batch_ops.raise_for_outcome` to turn failed/expired/cancelled into exceptions.
        ``on_poll(batch)`` is called after each poll (progress displays).
        """
        poller = BatchPoller(poll_interval=poll_interval, max_poll_interval=max_poll_interval, timeout=timeout,
                             deadline=deadline)
        return self._c._run(_plans.wait_plan(batch_id, poller=poller, **self._c._wire, on_poll=on_poll))


# ---------------------------------------------------------------------------------------------
# Async client
# ---------------------------------------------------------------------------------------------


#: The async connection pool: a triggerer's thousand waiters keep ~100 polls in flight at a 1 s
#: interval and 100 ms latency, so a pool of 100 (aiohttp's default) would queue them.
ASYNC_POOL_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=100)


def _default_async_transport(limits: httpx.Limits = ASYNC_POOL_LIMITS) -> httpx.AsyncBaseTransport | None:
    """Our aiohttp transport when aiohttp is installed, else None (httpx's own pool).

    httpx's own async pool degrades past ~100 concurrent requests (``benchmarks/bench_triggers.py``);
    ``BATCH_OPS_ASYNC_TRANSPORT=httpx`` chooses it anyway. The API is httpx either way.
    """
    if os.environ.get("BATCH_OPS_ASYNC_TRANSPORT", "auto") == "httpx" or not aiohttp_available():
        return None
    return AiohttpTransport(limits=limits)


#: The tasks that close shared clients when their event loop ends. Pickles as an empty set: Prefect
#: pickles batch_ops by value, and a loop that never ends (Prefect's own loop thread) keeps its
#: closer pending here for the life of the process.
_CLOSERS: ProcessLocalSet[asyncio.Task[None]] = ProcessLocalSet()


async def _close_when_loop_ends(client: AsyncBatchClient) -> None:
    """Wait until cancelled, then close ``client``'s connection pool.

    ``asyncio.run()`` cancels every task before it closes the loop, so a shared client lives as long
    as its loop and no longer. Without this, each short-lived loop (``airflow dags test`` runs every
    trigger in one of its own) left an open pool behind, which aiohttp reports at exit as
    "Unclosed client session".
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.Event().wait()
    finally:
        # Forget the loop's clients now: they refer to the loop, so the weak dictionary would never
        # let it go (1,000 asyncio.run() calls kept 1,001 loops alive).
        AsyncBatchClient._shared.pop(loop, None)
        await client.close()


class AsyncBatchClient(_Base):
    """The same API as :class:`BatchClient`, awaited; never blocks the event loop.

    File reads and writes for uploads, downloads and joins run in worker threads.
    ``AsyncBatchClient.shared(settings)`` returns one pooled client per settings and event
    loop, so a thousand waiters (Airflow triggers, Prefect tasks) share connections.

    Examples:
        >>> import asyncio
        >>> async def main():
        ...     async with AsyncBatchClient(api_key="sk-local", base_url="http://127.0.0.1:8765/v1") as c:
        ...         return c.settings.base_url
        >>> asyncio.run(main())
        'http://127.0.0.1:8765/v1'
    """

    # Pickles as an empty dictionary: Prefect pickles batch_ops by value (see batch_ops.locks).
    _shared: ClassVar[PicklableWeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, AsyncBatchClient]]] = (
        PicklableWeakKeyDictionary()
    )

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        api_version: str | None = None,
        max_retries: int | None = None,
        timeout: float | httpx.Timeout | None = None,
        settings: ClientSettings | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(settings, {"api_key": api_key, "base_url": base_url, "organization": organization,
                                    "project": project, "api_version": api_version, "max_retries": max_retries,
                                    "timeout": timeout})
        self._owns_http = http_client is None
        #: Set when we own the transport: API calls then go to it directly, without httpx's
        #: per-request client machinery (cookie jar, auth and redirect loops, header merging),
        #: which cost more CPU per status poll than the HTTP exchange itself.
        self._transport: httpx.AsyncBaseTransport | None = None
        if http_client is None:
            self._transport = _default_async_transport(ASYNC_POOL_LIMITS)
            http_client = httpx.AsyncClient(timeout=self._timeout(), limits=ASYNC_POOL_LIMITS,
                                            transport=self._transport)
        self._http = http_client
        self._timeout_extension = self._timeout().as_dict()
        self.files = AsyncFiles(self)
        self.batches = AsyncBatches(self)

    @classmethod
    def shared(cls, settings: ClientSettings) -> AsyncBatchClient:
        """One client per settings per running event loop, kept while the loop lives.

        Must be called from a coroutine. Never close a shared client yourself.
        """
        loop = asyncio.get_running_loop()
        per_loop = cls._shared.setdefault(loop, {})
        key = settings.model_dump_json() + (settings.api_key.get_secret_value() if settings.api_key else "")
        client = per_loop.get(key)
        if client is None:
            client = per_loop[key] = cls(settings=settings)
            closer = loop.create_task(_close_when_loop_ends(client))
            _CLOSERS.add(closer)  # a pending task nobody references would be garbage-collected
            closer.add_done_callback(_CLOSERS.discard)
        return client

    async def _run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        try:
            return await self._drive(plan)
        except BatchOpsError as exc:
            exc.redact(self._secrets())
            raise

    async def _send_within(self, send: Send) -> Reply:
        """One exchange, abandoned at ``send.deadline`` whatever the server is doing (cancelling the
        exchange closes its connection).

        Bounded by :func:`~batch_ops._aio.within`, not ``asyncio.wait_for``: before Python 3.12,
        ``wait_for`` loses a cancellation that arrives in the same loop iteration as the reply,
        and the cancelled wait would go on polling.
        """
        if send.deadline is None:
            return await self._send_once(send)
        remaining = send.deadline - _plans.clock()
        if remaining <= 0:
            return Reply(error="the deadline passed", timed_out=True)
        try:
            return await within(self._send_once(send), remaining)
        except TimeoutError:
            return Reply(error="the deadline passed before the answer was complete", timed_out=True)

    def _events(self) -> Any:
        """This event loop's subscription to the webhook receiver (``settings.events_url``)."""
        from batch_ops.webhooks.subscription import EventSubscription

        assert self.settings.events_url is not None
        token = self.settings.events_token.get_secret_value() if self.settings.events_token else None
        return EventSubscription.shared(self.settings.events_url, token=token)

    async def _drive(self, plan: Any) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = plan.throw(error) if error is not None else plan.send(value)
            except StopIteration as done:
                return done.value
            value, error = None, None
            try:
                if isinstance(effect, Send):
                    value = await self._send_within(effect)
                elif isinstance(effect, Sleep):
                    if effect.wake_on is not None and self.settings.events_url is not None:
                        # The subscription applies the ordinary pause while it is not working.
                        value = await self._events().sleep(effect.wake_on, effect.seconds, polling=effect.polling)
                    else:
                        self._log_retry(effect)
                        await _async_sleep(effect.pause(events=False))
                        value = "timer"
                elif isinstance(effect, Work):
                    value = await asyncio.to_thread(effect.fn)
                elif isinstance(effect, Notify):
                    outcome = effect.callback(effect.batch)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception as exc:
                error = exc

    async def _send_once(self, send: Send) -> Reply:
        prepared = self._prepare(send)
        url, headers = prepared.url, prepared.headers
        where = str(url)
        content: bytes | AsyncIterator[bytes] | None = prepared.content
        if send.upload is not None and prepared.frame is not None:
            content = _aiter_upload(prepared.frame, send.upload)
        try:
            response = await self._open(send.method, url, params=prepared.params, headers=headers, content=content,
                                        eager=send.sink is None)
            try:
                if send.sink is None or not 200 <= response.status_code < 300:
                    body = await response.aread()
                    return Reply(status=response.status_code, headers=_headers(response), body=body, url=where)
                await self._save(response, send.sink)
                return Reply(status=response.status_code, headers=_headers(response), url=where)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            return _transport_reply(exc, where)

    async def _open(self, method: str, url: httpx.URL, *, params: dict[str, Any] | None, headers: dict[str, str],
                    content: bytes | AsyncIterator[bytes] | None, eager: bool) -> httpx.Response:
        """Send a request; the response's body is not read yet (unless ``eager``: then it is)."""
        if self._transport is not None:
            request = httpx.Request(method, url, params=params, headers=headers, content=content,
                                    extensions={"timeout": self._timeout_extension, READ_EAGERLY: eager})
            return await self._transport.handle_async_request(request)
        # A caller's own httpx client (or httpx's pool): its defaults, hooks and proxies apply.
        request = self._http.build_request(method, url, params=params, headers=headers, content=content)
        return await self._http.send(request, stream=True)

    @staticmethod
    async def _save(response: httpx.Response, sink: Path) -> None:
        """Stream a response body into ``sink`` through a temporary file, then rename it (every
        file operation in a worker thread)."""
        writing = atomic_file(sink)
        out = await asyncio.to_thread(writing.__enter__)
        try:
            # Decoded bytes, not raw: a server or proxy may gzip the file.
            async for chunk in response.aiter_bytes(_CHUNK):
                await asyncio.to_thread(out.write, chunk)
        except BaseException as exc:
            with contextlib.suppress(BaseException):  # removes the temporary file, re-raises exc
                await asyncio.to_thread(writing.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(writing.__exit__, None, None, None)

    async def submit(
        self,
        source: StorageTarget | Iterable[Mapping[str, Any]] | Source,
        *,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        reattach: bool = True,
        fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
        fail_on_request_failures: bool = False,
        since: float | None = None,
    ) -> Batch:
        """Validate, upload and create a batch; see :meth:`BatchClient.submit`."""
        spec = SubmitSpec.of(
            endpoint=endpoint, completion_window=completion_window, metadata=metadata,
            output_expires_after=output_expires_after, idempotency_key=idempotency_key, reattach=reattach,
            fail_on=fail_on, fail_on_request_failures=fail_on_request_failures, since=since,
        )
        return _noticed(await self.submit_spec(source, spec)).batch

    async def submit_spec(
        self, source: StorageTarget | Iterable[Mapping[str, Any]] | Source, spec: SubmitSpec
    ) -> Submission:
        """See :meth:`BatchClient.submit_spec`; file work runs in worker threads."""
        src = Source.of(source)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_submit_"))
        try:
            return await self._run(submit_plan(spec, src, workdir=workdir, **self._wire,  # type: ignore[no-any-return]
                                               lookback=self.settings.idempotency_lookback))
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def results(
        self,
        batch: Batch | AttemptChain | Submission | str,
        *,
        input_path: PathLike | None = None,
        workdir: PathLike | None = None,
    ) -> AsyncIterator[ResultLine]:
        """Async version of :meth:`BatchClient.results`; file work happens in threads."""
        if isinstance(batch, str):
            batch = await self.batches.retrieve(batch)
        chain = _as_chain(_checked_batch(batch))
        latest = chain.latest
        if latest is None:
            raise BatchOpsError(f"Key {chain.key!r} has no batch: nothing to read.")
        _check_terminal(latest)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_results_", workdir))
        try:
            pairs = await self._run(_plans.chain_results_plan(chain, tmp, **self._wire))
            if input_path and storage.is_remote(input_path):
                inp = await asyncio.to_thread(storage.stage, input_path, tmp / "input.jsonl")
            elif input_path:
                inp = Path(input_path)
            else:
                inp = cast(Path, await self.files.download(chain.attempts[0].batch.input_file_id, tmp / "input.jsonl"))
            joined = join_chain_results(input_path=inp, attempts=pairs)
            while chunk := await asyncio.to_thread(lambda: list(itertools.islice(joined, 1000))):
                for line in chunk:
                    yield line
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncBatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncFiles:
    """``client.files`` of :class:`AsyncBatchClient`."""

    def __init__(self, client: AsyncBatchClient) -> None:
        self._c = client

    async def upload(self, path: StorageTarget, *, purpose: str = "batch") -> FileObject:
        """Async version of :meth:`Files.upload`; a remote file is staged in a thread."""
        async with _staged(_source_path(path)) as local:
            return await self._c._run(_plans.upload_plan(_existing(local), purpose=purpose,  # type: ignore[no-any-return]
                                                         **self._c._wire))

    async def retrieve(self, file_id: str) -> FileObject:
        return await self._c._run(_plans.retrieve_file_plan(file_id, **self._c._wire))  # type: ignore[no-any-return]

    async def list(self, *, purpose: str | None = None) -> FileList:
        return await self._c._run(_plans.list_files_plan(purpose=purpose,  # type: ignore[no-any-return]
                                                         **self._c._wire))

    async def download(self, file_id: str, path: StorageTarget) -> Path | StorageTarget:
        """Async version of :meth:`Files.download`; a remote target is put in a thread."""
        target = _target(path)
        async with _published(target) as local:
            written: Path = await self._c._run(_plans.download_plan(file_id, local, **self._c._wire))
        return written if isinstance(target, Path) else path

    async def delete(self, file_id: str) -> bool:
        return await self._c._run(_plans.delete_file_plan(file_id, **self._c._wire))  # type: ignore[no-any-return]


class AsyncBatches:
    """``client.batches`` of :class:`AsyncBatchClient`."""

    def __init__(self, client: AsyncBatchClient) -> None:
        self._c = client

    async def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        output_expires_after: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        if idempotency_key is not None:  # the submission core: the key's chain, attach or a new attempt
            return await self._c.submit(Source(file_id=input_file_id), endpoint=endpoint,
                                        completion_window=completion_window, metadata=metadata,
                                        output_expires_after=output_expires_after, idempotency_key=idempotency_key)
        return await self._c._run(self._c._create_plan(  # type: ignore[no-any-return]
            input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window,
            metadata=metadata, output_expires_after=output_expires_after))

    async def download_results(self, batch: Batch, directory: PathLike) -> _plans.ResultPaths:
        """See :meth:`Batches.download_results`."""
        return await self._c._run(  # type: ignore[no-any-return]
            _plans.download_results_plan(batch, Path(directory), **self._c._wire))

    async def retrieve(self, batch_id: str) -> Batch:
        return await self._c._run(_plans.retrieve_batch_plan(batch_id, **self._c._wire))  # type: ignore[no-any-return]

    async def cancel(self, batch_id: str) -> Batch:
        return await self._c._run(_plans.cancel_batch_plan(batch_id, **self._c._wire))  # type: ignore[no-any-return]

    async def list(self, *, limit: int = 20, after: str | None = None) -> BatchList:
        return await self._c._run(_plans.list_batches_plan(limit=limit, after=after,  # type: ignore[no-any-return]
                                                           **self._c._wire))

    async def iter_all(self, *, limit: int = 100, after: str | None = None) -> AsyncIterator[Batch]:
        while True:
            page = await self.list(limit=limit, after=after)
            for batch in page.data:
                yield batch
            if not page.has_more or not page.last_id:
                return
            after = page.last_id

    async def find_by_idempotency_key(self, key: str, *, since: float | None = None) -> Batch | None:
        since = _plans.clock() - self._c.settings.idempotency_lookback if since is None else since
        return await self._c._run(_plans.find_by_key_plan(key, since=since,  # type: ignore[no-any-return]
                                                          **self._c._wire))

    async def chain(self, key: str, *, since: float | None = None, fingerprint: str | None = None) -> AttemptChain:
        """Every attempt of ``key`` (for the requests of ``fingerprint``); see :meth:`Batches.chain`."""
        since = _plans.clock() - self._c.settings.idempotency_lookback if since is None else since
        return await self._c._run(find_chain_plan(key, since=since,  # type: ignore[no-any-return]
                                                  **self._c._wire, fingerprint=fingerprint))

    async def wait(
        self,
        batch_id: str,
        *,
        poll_interval: float = 30.0,
        timeout: float | None = 86400.0,
        max_poll_interval: float | None = None,
        deadline: float | None = None,
        on_poll: Any = None,
        first_delay: float = 0.0,
    ) -> Batch:
        """Poll until the batch ends; see :meth:`Batches.wait`.

        With ``settings.events_url`` (a webhook receiver), the wait wakes on the batch's webhook
        event and otherwise polls only every ``settings.safety_poll_interval`` seconds.
        ``first_delay`` spreads the first poll (an event still ends it early).
        """
        settings = self._c.settings
        poller = BatchPoller(poll_interval=poll_interval, max_poll_interval=max_poll_interval, timeout=timeout,
                             deadline=deadline,
                             safety_poll_interval=settings.safety_poll_interval if settings.events_url else None)
        return await self._c._run(_plans.wait_plan(batch_id, poller=poller, **self._c._wire,
                                                   on_poll=on_poll, first_delay=first_delay))


# ---------------------------------------------------------------------------------------------
# helpers shared by both
# ---------------------------------------------------------------------------------------------


def _source_path(path: StorageTarget) -> Path | Location:
    if not isinstance(path, (str, os.PathLike, Location)) and not storage.is_path_object(path):
        raise _bad_argument("path", f"path is a {type(path).__name__}",
                            "pass the path of a local file, or an s3:// (gs://, az://) URL")
    return storage.location(path)


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"No such file to upload: {p} (check the path; it must be a local JSONL file)")
    return p


def _target(path: StorageTarget) -> Path | Location:
    valid = isinstance(path, (str, os.PathLike, Location)) or storage.is_path_object(path)
    if not valid or not str(path).strip():
        raise _bad_argument("path", f"path is {storage.display(path)!r}",
                            "pass the local path (or s3:// URL, ObjectStoragePath) to write the file to")
    return storage.location(path)


@contextlib.asynccontextmanager
async def _staged(path: Path | Location) -> AsyncIterator[Path]:
    """:func:`storage.local_copy` without blocking the event loop (copies run in a thread)."""
    if isinstance(path, Path):
        yield path
        return
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_stage_"))
    try:
        yield await asyncio.to_thread(storage.stage, path, tmp / path.name)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


@contextlib.asynccontextmanager
async def _published(target: Path | Location) -> AsyncIterator[Path]:
    """:func:`storage.local_output` without blocking the event loop (the put runs in a thread)."""
    if isinstance(target, Path):
        yield target
        return
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "batch_ops_stage_"))
    try:
        local = tmp / target.name
        yield local
        await asyncio.to_thread(storage.publish, local, target)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


def _bad_argument(param: str, message: str, fix: str) -> InputValidationError:
    return InputValidationError([Problem(rule="invalid_argument", message=message, fix=fix, param=param)],
                                source="batch parameters")

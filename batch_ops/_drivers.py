"""The two drivers of the plans: each performs the effects a plan yields and sends back what came of them.

A plan (:mod:`batch_ops._plans`) decides everything and does nothing; a driver does, and decides
nothing. :class:`SyncDriver` sends each :class:`~batch_ops.effects.Send` with a blocking
``httpx.Client`` and sleeps with ``time.sleep``; :class:`AsyncDriver` sends with our aiohttp
transport (or the caller's ``httpx.AsyncClient``), sleeps with ``asyncio.sleep`` (or on the webhook
events subscription) and runs file work in worker threads. ``BatchClient`` and ``AsyncBatchClient``
(:mod:`batch_ops.client`) each hold one and only build plans for it.

What the drivers own, and nothing else does:

* the request on the wire: URL, headers and query of each ``Send`` (what the dialect asked for,
  plus the credentials only where the plan allows them), a JSON body or a streamed upload;
* the deadline of each exchange (``Send.deadline``): a server that answers a byte at a time cannot
  hold a wait past it;
* streaming: uploads are read from disk and downloads written to it in 1 MiB pieces, never whole;
* what a transport failure means (:func:`transport_reply`): above all whether the request may have
  reached the server, which decides whether a failed create may be sent again;
* our key redacted from every error that leaves a plan.

Examples:
    >>> import httpx
    >>> from batch_ops.effects import Send
    >>> from batch_ops.settings import ClientSettings
    >>> settings = ClientSettings(api_key="sk-1", base_url="http://127.0.0.1:9/v1")
    >>> with httpx.Client(timeout=http_timeout(settings)) as http:
    ...     driver = SyncDriver(settings, settings.dialect, http, sleep=lambda seconds: None)
    ...     prepared = driver.prepare(Send("GET", "/batches/b1"))
    >>> str(prepared.url), prepared.headers["Authorization"]
    ('http://127.0.0.1:9/v1/batches/b1', 'Bearer sk-1')
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from batch_ops import _plans
from batch_ops._files import atomic_file
from batch_ops._http import USER_AGENT, MultipartBody
from batch_ops._transport import READ_EAGERLY, AiohttpTransport
from batch_ops.aio import within
from batch_ops.dialects import Dialect
from batch_ops.effects import Notify, Reply, Send, Sleep, Work, same_origin
from batch_ops.errors import BatchOpsError
from batch_ops.settings import ClientSettings

__all__ = ["AsyncDriver", "Driver", "Prepared", "SyncDriver", "http_timeout", "not_sent", "transport_reply"]

_CHUNK = 1024 * 1024
_log = logging.getLogger("batch_ops")
#: Parsed URLs kept per driver (one per batch being polled: a triggerer may hold ten thousand); the
#: cache starts over when full.
_URL_CACHE_SIZE = 16384


# ---------------------------------------------------------------------------------------------
# transport failures, as the plans see them
# ---------------------------------------------------------------------------------------------


def not_sent(exc: httpx.TransportError) -> bool:
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


def transport_reply(exc: httpx.TransportError, url: str) -> Reply:
    """The :class:`~batch_ops.effects.Reply` for an exchange that failed below HTTP: what failed and
    where, whether it was a timeout, and whether the request may have reached the server."""
    kind = type(exc.__cause__ or exc).__name__
    detail = f"{kind}: {exc}" if str(exc) else kind
    return Reply(
        error=f"{detail} (reaching {url})",
        timed_out=_timed_out(exc),
        sent=not not_sent(exc),
    )


def _headers(response: httpx.Response) -> dict[str, str]:
    """The answer's headers as a plain dict with lower-case names, in one pass.

    ``dict(response.headers)`` looks every name up again in httpx's header list: measurable at a
    thousand polls a second.
    """
    return dict(response.headers.items())


# ---------------------------------------------------------------------------------------------
# what both drivers share: the request
# ---------------------------------------------------------------------------------------------


def http_timeout(settings: ClientSettings) -> httpx.Timeout:
    """httpx's timeouts for one exchange: ``settings.timeout`` for each step, ``connect_timeout`` to connect."""
    return httpx.Timeout(settings.timeout, connect=settings.connect_timeout)


@dataclass(frozen=True)
class Prepared:
    """One request, ready for httpx: URL (without the query), headers, query, and a JSON body or an
    upload's multipart frame."""

    url: httpx.URL
    headers: dict[str, str]
    params: dict[str, Any] | None
    content: bytes | None
    frame: MultipartBody | None


class Driver:
    """What both drivers share: one client's settings and dialect, and how a ``Send`` becomes a request.

    Settings are frozen, so the headers and query every request carries are built once; the
    credentials are added per request (from the dialect), so no plain-text key lives on a driver.
    """

    def __init__(self, settings: ClientSettings, dialect: Dialect) -> None:
        self.settings = settings
        self.dialect = dialect
        self._base_headers = {"User-Agent": USER_AGENT, "Accept": "application/json",
                              "Accept-Encoding": "gzip, deflate"}
        self._base_params = dialect.default_params(settings)
        self._urls: dict[str, httpx.URL] = {}

    def url(self, path: str) -> httpx.URL:
        """The URL of an API path, parsed once per driver: httpx parses a string URL on every
        request, a third of the CPU of a status poll (1,000 Airflow triggers poll ~900 times/s)."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(self.settings.url(path))
        return url

    def headers(self, send: Send) -> dict[str, str]:
        """The headers of ``send``: ours, and the credentials only where the plan says they may go
        (``send.auth``: not to another origin after a redirect). A new dict: the caller may add to it."""
        # An absolute URL the API handed out (Anthropic's results_url) gets the key only on the API's own origin.
        if send.auth and (send.url is None or same_origin(send.url, self.settings.base_url)):
            return {**self._base_headers, **(send.headers or {}), **self.dialect.auth_headers(self.settings)}
        return {**self._base_headers, **(send.headers or {})}

    def params(self, send: Send) -> dict[str, Any] | None:
        """The query of ``send``: the dialect's query on every call (an api-version) and the call's
        own; a redirect's target (``send.url``) keeps the query it came with. None when empty
        (httpx re-parses the URL to merge even empty params)."""
        if send.url is not None:
            params: dict[str, Any] = dict(send.params or {})
        else:
            params = {**self._base_params, **send.params} if send.params else dict(self._base_params)
        return params or None

    def prepare(self, send: Send) -> Prepared:
        """URL, headers, query and body of a request: JSON, or an upload's multipart frame.

        A redirect's target (``send.url``) is used as it is, query included; the credentials go
        only where the plan says they may (``send.auth``: same origin).
        """
        headers = self.headers(send)
        content = frame = None
        if send.stream is not None:
            headers.setdefault("Content-Type", "application/octet-stream")
            headers["Content-Length"] = str(send.stream.stat().st_size)
            url = httpx.URL(send.url) if send.url is not None else self.url(send.path)
            return Prepared(url, headers, self.params(send), None, None)
        if send.upload is not None:
            size = send.upload.stat().st_size
            frame = MultipartBody.for_file(filename=send.filename or send.upload.name, size=size,
                                           fields=dict(send.json or {}))
            headers.update({"Content-Type": frame.content_type, "Content-Length": str(frame.content_length)})
        elif send.json is not None:
            content = json.dumps(send.json).encode()
            headers["Content-Type"] = "application/json"
        url = httpx.URL(send.url) if send.url is not None else self.url(send.path)
        return Prepared(url, headers, self.params(send), content, frame)

    def secrets(self) -> list[str]:
        """What must never appear in an error we raise: our own key."""
        key = self.settings.api_key
        return [key.get_secret_value()] if key is not None else []

    @staticmethod
    def log_retry(sleep: Sleep) -> None:
        if sleep.reason:
            _log.warning("%s", sleep.reason)


# ---------------------------------------------------------------------------------------------
# the blocking driver
# ---------------------------------------------------------------------------------------------


def _iter_upload(frame: MultipartBody | None, path: Path) -> Iterator[bytes]:
    """The file in pieces, inside the multipart frame when there is one (else the bare bytes)."""
    if frame is not None:
        yield frame.head
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk
    if frame is not None:
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


class SyncDriver(Driver):
    """Drives plans with a blocking ``httpx.Client`` and ``sleep`` (``BatchClient``'s driver).

    Args:
        settings: the client's settings.
        dialect: the batch API spoken.
        http: the client every request goes through (its pool, proxies and hooks apply).
        sleep: how to wait (``BatchClient`` passes one that tests can shorten).
    """

    def __init__(self, settings: ClientSettings, dialect: Dialect, http: httpx.Client, *,
                 sleep: Callable[[float], None]) -> None:
        super().__init__(settings, dialect)
        self.http = http
        self._sleep = sleep

    def run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        try:
            return self.drive(plan)
        except BatchOpsError as exc:
            exc.redact(self.secrets())
            raise

    def drive(self, plan: Any) -> Any:
        """Perform each effect the plan yields and send back its result (or throw its error)."""
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
                    value = self.send(effect)
                elif isinstance(effect, Sleep):
                    self.log_retry(effect)
                    self._sleep(effect.pause(events=False))  # no events subscription here: the ordinary pause
                elif isinstance(effect, Work):
                    value = effect.fn()
                elif isinstance(effect, Notify):
                    effect.callback(effect.batch)
            except Exception as exc:
                error = exc

    def send(self, send: Send) -> Reply:
        """One exchange (no retry): the answer, or what went wrong on the way, as a :class:`Reply`."""
        prepared = self.prepare(send)
        content: Any = prepared.content
        if send.upload is not None and prepared.frame is not None:
            content = _iter_upload(prepared.frame, send.upload)
        elif send.stream is not None:
            content = _iter_upload(None, send.stream)
        request = self.http.build_request(send.method, prepared.url, params=prepared.params,
                                          headers=prepared.headers, content=content)
        where = str(request.url)
        if send.deadline is not None:
            remaining = send.deadline - _plans.clock()
            if remaining <= 0:
                return Reply(error="the deadline passed", timed_out=True, url=where)
            # Each blocking step (connect, write, wait for the answer, read a piece) is bounded by what
            # is left; between pieces of the body the deadline is checked again (a server trickling a
            # byte at a time cannot hold the call past it).
            request.extensions["timeout"] = _capped_timeouts(http_timeout(self.settings), remaining)
        try:
            response = self.http.send(request, stream=True)
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
            return transport_reply(exc, where)


# ---------------------------------------------------------------------------------------------
# the async driver
# ---------------------------------------------------------------------------------------------


async def _aiter_upload(frame: MultipartBody | None, path: Path) -> AsyncIterator[bytes]:
    if frame is not None:
        yield frame.head
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)
    if frame is not None:
        yield frame.tail


@dataclass(frozen=True)
class _Target:
    """Where an API call goes, resolved once per path: the URL as errors name it (no query), and
    what the transport takes (the parsed URL with its query, and its proxy)."""

    where: str
    url: Any
    proxy: str | None


class AsyncDriver(Driver):
    """Drives plans without ever blocking the event loop (``AsyncBatchClient``'s driver).

    Every ``Send`` is bounded by its deadline (:func:`~batch_ops.aio.within`); a ``Sleep`` that
    may end on a batch's webhook event waits on the events subscription when the settings name a
    receiver; ``Work`` (file work) runs in a worker thread.

    Args:
        settings: the client's settings.
        dialect: the batch API spoken.
        http: the httpx client for what the transport below does not take directly (the caller's
            own client: its defaults, hooks and proxies apply).
        transport: our aiohttp transport when we own the pool: API calls go to it directly.
        sleep: how to wait (``AsyncBatchClient`` passes one that tests can shorten).
    """

    def __init__(self, settings: ClientSettings, dialect: Dialect, http: httpx.AsyncClient,
                 transport: AiohttpTransport | None, *, sleep: Callable[[float], Awaitable[Any]]) -> None:
        super().__init__(settings, dialect)
        self.http = http
        #: Set when we own the transport: API calls then go to it directly, without httpx's
        #: per-request client machinery (cookie jar, auth and redirect loops, header merging),
        #: which cost more CPU per status poll than the HTTP exchange itself.
        self.transport = transport
        self._sleep = sleep
        self._timeout_extension = http_timeout(settings).as_dict()
        self._aio_timeout = transport.timeout(self._timeout_extension) if transport is not None else None
        self._targets: dict[str, _Target] = {}

    async def run(self, plan: Any) -> Any:
        """Drive a plan; every batch_ops error leaves with our key redacted from its text."""
        try:
            return await self.drive(plan)
        except BatchOpsError as exc:
            exc.redact(self.secrets())
            raise

    async def drive(self, plan: Any) -> Any:
        """Perform each effect the plan yields and send back its result (or throw its error)."""
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
                    value = await self.send_within(effect)
                elif isinstance(effect, Sleep):
                    if effect.wake_on is not None and self.settings.events_url is not None:
                        # The subscription applies the ordinary pause while it is not working.
                        value = await self._events().sleep(effect.wake_on, effect.seconds, polling=effect.polling)
                    else:
                        self.log_retry(effect)
                        await self._sleep(effect.pause(events=False))
                        value = "timer"
                elif isinstance(effect, Work):
                    value = await asyncio.to_thread(effect.fn)
                elif isinstance(effect, Notify):
                    outcome = effect.callback(effect.batch)
                    if inspect.isawaitable(outcome):
                        await outcome
            except Exception as exc:
                error = exc

    def _events(self) -> Any:
        """This event loop's subscription to the webhook receiver (``settings.events_url``)."""
        from batch_ops.webhooks.subscription import EventSubscription

        assert self.settings.events_url is not None
        token = self.settings.events_token.get_secret_value() if self.settings.events_token else None
        return EventSubscription.shared(self.settings.events_url, token=token)

    async def send_within(self, send: Send) -> Reply:
        """One exchange, abandoned at ``send.deadline`` whatever the server is doing (cancelling the
        exchange closes its connection).

        Bounded by :func:`~batch_ops.aio.within`, not ``asyncio.wait_for``: before Python 3.12,
        ``wait_for`` loses a cancellation that arrives in the same loop iteration as the reply,
        and the cancelled wait would go on polling.
        """
        if send.deadline is None:
            return await self.send(send)
        remaining = send.deadline - _plans.clock()
        if remaining <= 0:
            return Reply(error="the deadline passed", timed_out=True)
        try:
            return await within(self.send(send), remaining)
        except TimeoutError:
            return Reply(error="the deadline passed before the answer was complete", timed_out=True)

    def send(self, send: Send) -> Awaitable[Reply]:
        """One exchange (no retry): the answer, or what went wrong on the way, as a :class:`Reply`.

        A call whose answer is small JSON goes straight to our transport (:meth:`_exchange`: a status
        poll builds no httpx object); an upload, a download, or a caller's own httpx client go through
        httpx (:meth:`_send_httpx`).
        """
        if self.transport is not None and send.sink is None and send.upload is None and send.stream is None:
            return self._exchange(send, self.transport)
        return self._send_httpx(send)

    # -- small JSON answers: our transport, no httpx objects ------------------------------------
    def _target(self, send: Send, transport: AiohttpTransport) -> _Target:
        """Where ``send`` goes: resolved once per API path for calls with no query of their own
        (a poll), else now (a redirect, a list page); the query merged as httpx merges it."""
        cached = send.url is None and not send.params
        if cached and (target := self._targets.get(send.path)) is not None:
            return target
        url = httpx.URL(send.url) if send.url is not None else self.url(send.path)
        params = self.params(send)
        target = _Target(str(url), *transport.target(url.copy_merge_params(params) if params else url))
        if cached:
            if len(self._targets) >= _URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[send.path] = target
        return target

    async def _exchange(self, send: Send, transport: AiohttpTransport) -> Reply:
        target = self._target(send, transport)
        headers = self.headers(send)
        body = None
        if send.json is not None:
            body = json.dumps(send.json).encode()
            headers["Content-Type"] = "application/json"
        assert self._aio_timeout is not None
        try:
            status, answer, content = await transport.exchange(send.method, target.url, proxy=target.proxy,
                                                                headers=headers, body=body, timeout=self._aio_timeout)
        except httpx.TransportError as exc:
            return transport_reply(exc, target.where)
        return Reply(status=status, headers=answer, body=content, url=target.where)

    # -- everything else: httpx ---------------------------------------------------------------
    async def _send_httpx(self, send: Send) -> Reply:
        prepared = self.prepare(send)
        url, headers = prepared.url, prepared.headers
        where = str(url)
        content: bytes | AsyncIterator[bytes] | None = prepared.content
        if send.upload is not None and prepared.frame is not None:
            content = _aiter_upload(prepared.frame, send.upload)
        elif send.stream is not None:
            content = _aiter_upload(None, send.stream)
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
            return transport_reply(exc, where)

    async def _open(self, method: str, url: httpx.URL, *, params: dict[str, Any] | None, headers: dict[str, str],
                    content: bytes | AsyncIterator[bytes] | None, eager: bool) -> httpx.Response:
        """Send a request; the response's body is not read yet (unless ``eager``: then it is)."""
        if self.transport is not None:
            request = httpx.Request(method, url, params=params, headers=headers, content=content,
                                    extensions={"timeout": self._timeout_extension, READ_EAGERLY: eager})
            return await self.transport.handle_async_request(request)
        # A caller's own httpx client (or httpx's pool): its defaults, hooks and proxies apply.
        request = self.http.build_request(method, url, params=params, headers=headers, content=content)
        return await self.http.send(request, stream=True)

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

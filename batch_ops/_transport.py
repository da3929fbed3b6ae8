"""The async HTTP transport: httpx's interface over aiohttp's connection pool.

Why not httpx's own async pool: it degrades past ~100 concurrent requests (a triggerer with
1,000 deferred batches keeps ~100 polls in flight); aiohttp's holds. Why not the
``httpx-aiohttp`` package's transport, which we used first: measured with
``benchmarks/bench_triggers.py``, the CPU of a status poll went to httpx's client layer and
that transport's streaming wrapper rather than to aiohttp, and it

* maps *every* aiohttp connection error, a connection dropped after the request was sent
  included, to ``httpx.ConnectTimeout`` ("never sent"), which a create must not believe;
* ignores ``HTTP(S)_PROXY`` / ``NO_PROXY`` (httpx reads them only for its own transports),
  while the sync client honours them;
* builds its SSL context (reading the CA bundle, tens of ms) on the event loop.

:class:`AiohttpTransport` is an ``httpx.AsyncBaseTransport``: requests and responses stay httpx
objects, and the async driver (:mod:`batch_ops._drivers`) calls it directly (no cookie jar, auth
flow or redirect loop to run per poll). A request with the ``READ_EAGERLY`` extension gets its
body read and its connection released inside the transport; otherwise the body streams.

An API call whose answer is small JSON (every call but uploads and downloads: a status poll above
all) skips httpx's objects altogether: :meth:`AiohttpTransport.exchange` takes the URL, headers and
body and returns the status, headers and decoded body. Building an ``httpx.Request`` and an
``httpx.Response`` around aiohttp's own (headers normalised, re-decoded and re-joined three times)
cost more CPU per poll than the rest of the wait (``benchmarks/bench_triggers.py``).

Examples:
    >>> import httpx
    >>> transport = AiohttpTransport(limits=httpx.Limits(max_connections=200))
    >>> transport.max_connections
    200
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from batch_ops.errors import ConfigurationError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ASYNC_POOL_LIMITS", "READ_EAGERLY", "AiohttpTransport", "aiohttp_available", "decoded_headers",
           "default_async_transport"]

#: Request extension: read the whole body in the transport (small JSON answers).
READ_EAGERLY = "batch_ops.read_eagerly"
#: The async connection pool: a triggerer's thousand waiters keep ~100 polls in flight at a 1 s
#: interval and 100 ms latency, so a pool of 100 (aiohttp's default) would queue them.
ASYNC_POOL_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=100)


def aiohttp_available() -> bool:
    """True when aiohttp can be imported (the ``airflow``, ``prefect`` and ``fast`` extras)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def default_async_transport(limits: httpx.Limits = ASYNC_POOL_LIMITS) -> AiohttpTransport | None:
    """Our aiohttp transport when aiohttp is installed, else None (httpx's own pool).

    httpx's own async pool degrades past ~100 concurrent requests (``benchmarks/bench_triggers.py``);
    ``BATCH_OPS_ASYNC_TRANSPORT=httpx`` chooses it anyway. The API is httpx either way.
    """
    if os.environ.get("BATCH_OPS_ASYNC_TRANSPORT", "auto") == "httpx" or not aiohttp_available():
        return None
    return AiohttpTransport(limits=limits)


def decoded_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Response headers as ``dict(httpx.Headers(raw).items())`` has them, without building httpx's
    ``Headers``: lower-case names, a repeated header's values joined with ", ", every name and value
    decoded as ASCII, else UTF-8, else Latin-1 (httpx's choice, made for the whole set at once).

    Examples:
        >>> decoded_headers([(b"Content-Type", b"application/json"), (b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2")])
        {'content-type': 'application/json', 'set-cookie': 'a=1, b=2'}
    """
    for encoding in ("ascii", "utf-8", "iso-8859-1"):
        try:
            pairs = [(key.lower().decode(encoding), value.decode(encoding)) for key, value in raw]
        except UnicodeDecodeError:
            continue
        break
    headers: dict[str, str] = {}
    for key, value in pairs:
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``...).

    The same variables httpx's own transports honour, read the standard library's way.

    Examples:
        >>> import os
        >>> os.environ["HTTPS_PROXY"], os.environ["NO_PROXY"] = "http://proxy:3128", "internal.example"
        >>> env_proxy(httpx.URL("https://api.openai.com/v1")), env_proxy(httpx.URL("https://internal.example/v1"))
        ('http://proxy:3128', None)
        >>> del os.environ["HTTPS_PROXY"], os.environ["NO_PROXY"]
    """
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    # proxy_bypass_environment: NO_PROXY matching as urllib does it (not in typeshed's stubs).
    if not proxy or urllib.request.proxy_bypass_environment(url.host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


#: Timeouts: on Python 3.10 asyncio's (which aiohttp's timeouts derive from) is not the built-in one.
_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)


def _map_error(exc: BaseException) -> httpx.TransportError:
    """The httpx error for an aiohttp failure, keeping "never sent" apart from "maybe sent".

    ``ConnectError`` / ``ConnectTimeout`` only when no connection was made: that is what lets a
    failed create be sent again without a lookup. Everything else may have reached the server.
    """
    import aiohttp

    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx.ProxyError(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake: nothing sent
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no pooled connection, or connecting took too long
        return httpx.ConnectTimeout(message)
    if isinstance(exc, _TIMEOUTS):  # waiting for the answer: the request may have been handled
        return httpx.ReadTimeout(message)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.ReadError(message)
    return httpx.NetworkError(message)


def _aiohttp_errors() -> tuple[type[BaseException], ...]:
    """What aiohttp raises for network trouble (its own errors, OS errors, timeouts)."""
    import aiohttp

    return (aiohttp.ClientError, OSError, *_TIMEOUTS)


class _Body(httpx.AsyncByteStream):
    """A streamed response body; closing it returns the connection to the pool."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _aiohttp_errors() as exc:
            raise _map_error(exc) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx async transport on one aiohttp session (created in the loop of its first request).

    Args:
        limits: ``max_connections`` bounds the pool; ``keepalive_expiry`` is how long an idle
            connection is kept.
        verify: TLS verification: True (httpx's CA bundle, ``SSL_CERT_FILE`` honoured), False, a
            CA bundle path or an ``ssl.SSLContext``.
        trust_env: use ``HTTP(S)_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY``, looked up once per host.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = httpx.Limits(max_connections=200, max_keepalive_connections=100),
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
    ) -> None:
        self.max_connections = limits.max_connections or 0  # aiohttp: 0 = no limit
        self.keepalive_expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else 5.0
        self._verify = verify
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._opening: asyncio.Future[aiohttp.ClientSession] | None = None
        self._proxies: dict[tuple[str, str, int | None], str | None] = {}
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    async def _open(self) -> aiohttp.ClientSession:
        """The session, created once; the SSL context is built in a worker thread, off the loop."""
        if self._session is not None:
            return self._session
        if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
            # A failed attempt (a CA bundle that cannot be read) is not kept: the next request retries.
            self._opening = asyncio.ensure_future(self._create_session())
        return await asyncio.shield(self._opening)

    async def _create_session(self) -> aiohttp.ClientSession:
        import aiohttp

        verify = self._verify
        try:
            context = verify if isinstance(verify, ssl.SSLContext) else await asyncio.to_thread(
                httpx.create_ssl_context, verify=verify, trust_env=self._trust_env
            )
        except (OSError, ssl.SSLError) as exc:  # retrying cannot help: say what to fix
            raise ConfigurationError(
                f"Cannot load the CA certificates for TLS ({type(exc).__name__}: {exc}); check SSL_CERT_FILE "
                "and SSL_CERT_DIR, or the verify setting"
            ) from exc
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=self.keepalive_expiry,
                                         ssl=context)
        # trust_env stays False in aiohttp: it would read the environment and ~/.netrc on every
        # request (a third of the CPU of a poll); proxies are looked up here, once per host.
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        return self._session

    def proxy(self, url: httpx.URL) -> str | None:
        """The proxy for ``url`` (from the environment, looked up once per host), or None."""
        if not self._trust_env:
            return None
        key = (url.scheme, url.host, url.port)
        if key not in self._proxies:
            self._proxies[key] = env_proxy(url)
        return self._proxies[key]

    def target(self, url: httpx.URL) -> tuple[Any, str | None]:
        """What :meth:`exchange` takes for ``url``: the URL parsed as aiohttp parses it (a
        ``yarl.URL``; parsing a string per request is a measurable share of a poll), and its proxy."""
        import yarl

        return yarl.URL(str(url)), self.proxy(url)

    def timeout(self, given: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for httpx's timeout dict (``connect``, ``read``, ``pool``), made once per value."""
        import aiohttp

        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            # aiohttp's `connect` covers waiting for a pooled connection plus connecting.
            total_connect = None if connect is None and pool is None else (connect or 0) + (pool or 0)
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, connect=total_connect,
                                                                  sock_connect=connect, sock_read=read)
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or await self._open()
        try:
            data: Any = request.content or None
        except httpx.RequestNotRead:  # a streamed body (an upload); Content-Length is set by the caller
            data = _chunks(request.stream)
        headers = request.headers.multi_items()
        if not any(name == "accept-encoding" for name, _ in headers):  # names are lower case here
            # aiohttp would offer br/zstd when their packages are installed; httpx decodes gzip and
            # deflate always (the body is decoded by httpx: aiohttp's auto_decompress is off).
            headers.append(("Accept-Encoding", "gzip, deflate"))
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=headers,
                data=data,
                allow_redirects=False,
                proxy=self.proxy(request.url),
                timeout=self.timeout(request.extensions.get("timeout") or {}),
            )
            if request.extensions.get(READ_EAGERLY):
                try:
                    body = await response.read()
                finally:
                    response.release()
                return httpx.Response(response.status, headers=response.raw_headers, content=body,
                                      request=request, extensions={"http_version": b"HTTP/1.1"})
        except _aiohttp_errors() as exc:
            raise _map_error(exc) from exc
        return httpx.Response(response.status, headers=response.raw_headers, stream=_Body(response),
                              request=request, extensions={"http_version": b"HTTP/1.1"})

    async def exchange(
        self,
        method: str,
        url: Any,
        *,
        proxy: str | None,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request whose answer is read whole: its status, headers (see :func:`decoded_headers`)
        and body, decoded as httpx decodes it (``Content-Encoding``). ``url`` and ``proxy`` come from
        :meth:`target`. Raises the httpx error of a failure, as :meth:`handle_async_request` does.

        The same exchange as an httpx request with ``READ_EAGERLY``, without httpx's objects.
        """
        session = self._session or await self._open()
        try:
            response = await session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                             proxy=proxy, timeout=timeout)
            try:
                content = await response.read()
            finally:
                response.release()
        except _aiohttp_errors() as exc:
            raise _map_error(exc) from exc
        raw = response.raw_headers
        answer = decoded_headers(raw)
        if "content-encoding" in answer:  # gzip, deflate...: decoded by httpx's own decoders, as ever
            content = httpx.Response(response.status, headers=raw, content=content).read()
        return response.status, answer, content

    async def aclose(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk

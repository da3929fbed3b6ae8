"""The async client's aiohttp transport (``batch_ops._transport``), over real HTTP on loopback.

What the triggerer relies on: a pool big enough for a thousand waiters, failures classified
so that a create is never re-sent blindly, and the same proxy settings as the sync client.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from batch_ops import APIConnectionError, AsyncBatchClient, BatchClient, ClientSettings, ConfigurationError
from batch_ops._drivers import not_sent as _not_sent
from batch_ops._transport import AiohttpTransport, _map_error, env_proxy
from batch_ops.server import ServerURL

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound, never listened: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_the_pool_is_not_aiohttps_default_of_100(server_url: ServerURL) -> None:
    # 1,000 triggers polling every second with 100 ms answers keep ~100 requests in flight; a
    # pool of 100 queued them (httpx.AsyncClient(limits=...) never reached the transport).
    async with AsyncBatchClient(api_key="local", base_url=server_url) as client:
        await client.batches.list(limit=1)
        transport = client._transport
        assert isinstance(transport, AiohttpTransport)
        assert transport._session is not None
        assert transport._session.connector is not None
        assert transport._session.connector.limit == 200


def _settings(url: str) -> ClientSettings:
    return ClientSettings(api_key="local", base_url=url, max_retries=0)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_proxy_environment_applies_to_both_clients(
    kind: str, server_url: ServerURL, dead_port: int, clean_proxy_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY sends requests to the proxy (here a refused port); NO_PROXY exempts a host."""

    async def list_batches() -> int:
        if kind == "sync":
            with BatchClient(settings=_settings(server_url)) as client:
                return len(client.batches.list(limit=1).data)
        async with AsyncBatchClient(settings=_settings(server_url)) as client:
            return len((await client.batches.list(limit=1)).data)

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead_port}")
    with pytest.raises(APIConnectionError):
        await list_batches()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await list_batches() >= 0


def test_env_proxy_reads_scheme_all_and_no_proxy(clean_proxy_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert env_proxy(httpx.URL("https://api.openai.com/v1")) == "http://proxy.internal:3128"
    assert env_proxy(httpx.URL("https://llm.corp.example/v1")) is None
    assert env_proxy(httpx.URL("http://localhost:8765/v1")) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://tls-proxy:8080")
    assert env_proxy(httpx.URL("https://api.openai.com/v1")) == "http://tls-proxy:8080"


def _connector_error() -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey("api.example", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("failure", "expected", "never_sent"),
    [
        (_connector_error(), httpx.ConnectError, True),
        (aiohttp.ConnectionTimeoutError("no connection within 5 s"), httpx.ConnectTimeout, True),
        # After the request went out: the server may have acted on it.
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError, False),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout, False),
        (aiohttp.ClientPayloadError("truncated"), httpx.ReadError, False),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), httpx.NetworkError, False),
    ],
)
def test_failures_keep_never_sent_apart_from_maybe_sent(
    failure: Exception, expected: type[httpx.TransportError], never_sent: bool
) -> None:
    # Decides whether a failed create is looked up before it is sent again: "never sent" by
    # mistake would bill a second batch (the httpx-aiohttp package said so for every error).
    mapped = _map_error(failure)
    try:
        raise mapped from failure
    except httpx.TransportError as exc:
        assert type(exc) is expected
        assert _not_sent(exc) is never_sent


async def test_a_refused_connection_is_reported_with_the_url(dead_port: int, clean_proxy_env: None) -> None:
    url = f"http://127.0.0.1:{dead_port}/v1"
    async with AsyncBatchClient(settings=_settings(url)) as client:
        with pytest.raises(APIConnectionError, match=f"127.0.0.1:{dead_port}"):
            await client.batches.list(limit=1)


async def test_an_unreadable_ca_bundle_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, clean_proxy_env: None
) -> None:
    # Retrying cannot fix it, and a bare FileNotFoundError from deep inside ssl names no fix.
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca-bundle.pem")
    async with AsyncBatchClient(api_key="local", base_url="https://127.0.0.1:9/v1") as client:
        with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
            await client.batches.list(limit=1)


@pytest.mark.parametrize("how", ["httpx pool (no aiohttp)", "caller's own httpx client"])
async def test_the_httpx_paths_run_the_whole_lifecycle(
    how: str, make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_proxy_env: None
) -> None:
    """Without aiohttp (or with the caller's client) requests go through httpx.AsyncClient.send:
    upload, create, wait, a gzipped download and the joined results must work the same."""
    requests = [{"custom_id": f"h-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}}
                for i in range(15)]
    own = None
    if how.startswith("httpx pool"):
        monkeypatch.setenv("BATCH_OPS_ASYNC_TRANSPORT", "httpx")
    else:
        own = httpx.AsyncClient(timeout=30)
    with make_server(gzip=True) as url:
        async with AsyncBatchClient(api_key="local", base_url=url, http_client=own) as client:
            assert client._transport is None
            batch = await client.submit(requests, endpoint="/v1/chat/completions")
            done = await client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
            saved = await client.files.download(done.output_file_id or "", tmp_path / "out.jsonl")
            results = [r async for r in client.results(done)]
        assert saved.read_bytes().startswith(b"{")  # decoded, not gzip's 0x1f 0x8b
    if own is not None:
        assert not own.is_closed, "a caller's client is the caller's to close"
        await own.aclose()
    assert [r.custom_id for r in results] == [f"h-{i}" for i in range(15)]

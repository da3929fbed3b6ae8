"""HTTP fault injection for the local server: latency, 429 with Retry-After, 500, dropped connections.

Faults apply to ``/v1`` routes only, so ``/healthz`` stays a reliable readiness probe. One seeded
RNG draws once per call: with the same ``seed`` and the same sequence of calls, the same calls
fail. A drop closes the TCP connection without writing a byte, which is what a client sees when a
load balancer or the network gives up: the middleware must be the outermost ASGI app so that
``send`` is uvicorn's own, whose ``__self__`` holds the transport.

Examples:
    >>> plan = FaultPlan(http_429=0.5, seed=1)
    >>> [plan.draw() for _ in range(6)]
    ['429', None, None, '429', '429', '429']
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from typing import Any

from batch_ops.server.engines import api_error_body
from batch_ops.server.options import ServerOptions

__all__ = ["FaultPlan", "abort_connection", "losing_response"]

log = logging.getLogger(__name__)


class FaultPlan:
    """Which calls fail, and how: one uniform draw per call, split into drop / 429 / 500 shares.

    Examples:
        >>> FaultPlan().active, FaultPlan(latency=0.1).active
        (False, True)
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        http_429: float = 0.0,
        http_500: float = 0.0,
        drop: float = 0.0,
        retry_after: float = 0.2,
        seed: int | None = None,
    ) -> None:
        self.latency = latency
        self.http_429 = http_429
        self.http_500 = http_500
        self.drop = drop
        self.retry_after = retry_after
        self._rng = random.Random(seed)

    @classmethod
    def from_options(cls, options: ServerOptions) -> FaultPlan:
        return cls(
            latency=options.latency,
            http_429=options.http_429,
            http_500=options.http_500,
            drop=options.drop,
            retry_after=options.retry_after,
            seed=options.seed,
        )

    @property
    def active(self) -> bool:
        return bool(self.latency or self.http_429 or self.http_500 or self.drop)

    def draw(self) -> str | None:
        """``"drop"``, ``"drop_after"``, ``"429"``, ``"500"`` or None for one call.

        Half the drops happen before the call is handled, half after it was handled (the
        response is lost). The second kind is the one that makes a naive client create a batch
        twice: the server did the work, the client never heard.
        """
        if not (self.http_429 or self.http_500 or self.drop):
            return None
        u = self._rng.random()
        if u < self.drop / 2:
            return "drop"
        if u < self.drop:
            return "drop_after"
        if u < self.drop + self.http_429:
            return "429"
        if u < self.drop + self.http_429 + self.http_500:
            return "500"
        return None

    async def apply(self, send: Any) -> str | None:
        """Delay, then maybe fail the call.

        Returns ``"handled"`` when the call was answered (or dropped) here, ``"drop_after"``
        when the caller must handle it and then lose the response (see :func:`losing_response`),
        or None.
        """
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self.draw()
        if fault is None or fault == "drop_after":
            return fault
        if fault == "drop":
            await abort_connection(send)
            return "handled"
        if fault == "429":
            seconds = self.retry_after
            await _send_json(
                send,
                429,
                api_error_body(
                    "Rate limit reached for requests (injected by batch_ops server --http-429). "
                    f"Please try again in {seconds:g}s.",
                    type="requests",
                    code="rate_limit_exceeded",
                ),
                # Retry-After is whole seconds (rounded up, never promising too early); the SDKs
                # read retry-after-ms first, which carries the exact delay.
                [
                    (b"retry-after", str(math.ceil(seconds)).encode()),
                    (b"retry-after-ms", str(round(seconds * 1000)).encode()),
                ],
            )
            return "handled"
        message = "The server had an error while processing your request (injected by --http-500)."
        await _send_json(send, 500, api_error_body(message, type="server_error"), [])
        return "handled"


async def _send_json(send: Any, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def losing_response(send: Any) -> Any:
    """Wrap uvicorn's ``send`` so the response is never delivered: the connection is aborted
    when the app starts its response, after the app did all its work."""

    async def lose(message: Any) -> None:
        if message["type"] == "http.response.start":
            await abort_connection(send)
            return
        await send(message)  # uvicorn ignores sends on a connection it knows is gone

    return lose


async def abort_connection(send: Any) -> None:
    """Close the client's TCP connection at once, without any HTTP response.

    uvicorn's ``send`` is a bound method of its request cycle (httptools and h11 alike), which
    holds the asyncio transport. ``abort()`` drops the socket; yielding once lets uvicorn's
    ``connection_lost`` mark the cycle disconnected, so it does not try to write a 500 afterwards.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Not under uvicorn (or wrapped): the closest we can get is an exception, which the
        # server turns into a 500 or a reset.
        raise ConnectionAbortedError("drop fault: this ASGI server does not expose its transport")
    transport.abort()
    for _ in range(3):
        await asyncio.sleep(0)

"""Verifying OpenAI's webhook deliveries (Standard Webhooks), replays included.

The signature scheme is the ``standardwebhooks`` library's: ``webhook-signature`` carries
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under the ``whsec_`` secret (the library
signs; each ``v1`` signature is compared in constant time), and ``webhook-timestamp`` must be
within five minutes of the verifier's clock (the standard's tolerance). On top of it,
:class:`WebhookVerifier` remembers the ids it accepted for twice that window: a delivery whose id
it has seen is a replay (or OpenAI retrying one that already arrived) and is never handed on
twice. Older replays fail the timestamp check; OpenAI's own retries, signed anew for up to 72
hours, are caught by the receiver's hub, which publishes a batch's ending once.

Examples:
    >>> import base64, time
    >>> secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    >>> body = '{"id": "evt_1", "object": "event", "created_at": 1, "type": "batch.completed", "data": {"id": "b"}}'
    >>> v = WebhookVerifier(secret)
    >>> headers = sign(secret, "evt_1", body)
    >>> v.verify(body, headers).batch_id
    'b'
    >>> v.verify(body, headers)
    Traceback (most recent call last):
    ...
    batch_ops.errors.WebhookVerificationError: webhook evt_1 was already received (a replay)
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timezone

from batch_ops.errors import WebhookVerificationError
from batch_ops.webhooks.events import BatchEvent, parse_event

__all__ = ["TOLERANCE", "WebhookVerifier", "sign"]

#: Seconds a delivery's timestamp may differ from now (fixed by the standardwebhooks library).
TOLERANCE = 300.0
#: Ids remembered at most; beyond this the oldest are forgotten first (memory stays bounded even
#: under a flood: at 10,000 ids per ten minutes, some 17 deliveries a second, nothing is forgotten early).
MAX_REMEMBERED = 10_000


def _webhook(secret: str) -> object:
    try:
        from standardwebhooks.webhooks import Webhook
    except ImportError as exc:  # pragma: no cover - the extra names it
        from batch_ops.errors import ConfigurationError

        raise ConfigurationError('verifying webhooks needs the "webhooks" extra: '
                                 'pip install "openai-batch-ops[webhooks]"') from exc
    try:
        return Webhook(secret)
    except Exception:
        from batch_ops.errors import ConfigurationError

        # Never repeat the secret: it would reach a log.
        raise ConfigurationError("the webhook secret is not a whsec_... secret (base64 after the prefix); "
                                 "copy it from the endpoint's page in the OpenAI dashboard") from None


def sign(secret: str, event_id: str, body: str, *, at: float | None = None) -> dict[str, str]:
    """The three headers a delivery of ``body`` carries (for tests and for forwarding)."""
    webhook = _webhook(secret)
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return {"webhook-id": event_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": webhook.sign(event_id, when, body)}  # type: ignore[attr-defined]


class WebhookVerifier:
    """Check deliveries against one secret (or several, while rotating one); thread-safe.

    Args:
        secrets: the endpoint's ``whsec_`` secret; give two while rotating (old and new).
    """

    def __init__(self, *secrets: str) -> None:
        if not secrets or not all(secrets):
            from batch_ops.errors import ConfigurationError

            raise ConfigurationError("a webhook secret is needed (OPENAI_WEBHOOK_SECRET: whsec_...)")
        self._webhooks = [_webhook(s) for s in secrets]
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, body: bytes | str, headers: Mapping[str, str], *, now: float | None = None) -> BatchEvent | None:
        """The batch event of a genuine, first-seen delivery; None for a genuine non-batch event.

        Raises:
            WebhookVerificationError: ``reason`` is ``headers``, ``signature``, ``timestamp``,
                ``replay`` or ``malformed``.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        event_id = lowered.get("webhook-id", "")
        if not (event_id and lowered.get("webhook-timestamp") and lowered.get("webhook-signature")):
            raise WebhookVerificationError("the delivery lacks webhook-id, webhook-timestamp or webhook-signature",
                                           reason="headers")
        try:
            text = body.decode() if isinstance(body, bytes) else body
        except UnicodeDecodeError:  # OpenAI sends JSON in UTF-8; anything else is not one of its deliveries
            raise WebhookVerificationError("the webhook body is not UTF-8", reason="malformed") from None
        clock = time.time() if now is None else now
        try:
            stamp = float(lowered["webhook-timestamp"])
        except ValueError:
            raise WebhookVerificationError("webhook-timestamp is not a number", reason="timestamp") from None
        if not math.isfinite(stamp):  # "nan" would pass the tolerance check below (every comparison is False)
            raise WebhookVerificationError("webhook-timestamp is not a number", reason="timestamp")
        if abs(clock - stamp) > TOLERANCE:
            raise WebhookVerificationError(f"webhook {event_id[:64]} is {clock - stamp:+.0f} s off the clock "
                                           f"(tolerance {TOLERANCE:.0f} s)", reason="timestamp")
        signatures = lowered["webhook-signature"]
        if not any(self._matches(w, event_id, stamp, text, signatures) for w in self._webhooks):
            raise WebhookVerificationError(f"webhook {event_id[:64]}: the signature does not match the secret",
                                           reason="signature")
        event = parse_event(text, received_at=clock, event_id=event_id)
        with self._lock:
            self._forget(clock)
            if event_id in self._seen:
                raise WebhookVerificationError(f"webhook {event_id[:64]} was already received (a replay)",
                                               reason="replay")
            self._seen[event_id] = clock
        return event

    @staticmethod
    def _matches(webhook: object, event_id: str, stamp: float, text: str, signatures: str) -> bool:
        # The library signs (its HMAC over "id.timestamp.body"); the comparison is here so that the
        # timestamp is judged once, by this verifier's clock (`now`): the library's own verify()
        # would judge it again by datetime.now().
        try:
            when = datetime.fromtimestamp(stamp, tz=timezone.utc)
            expected = webhook.sign(event_id, when, text).partition(",")[2]  # type: ignore[attr-defined]
        except Exception:  # the library raises ValueError, OverflowError, ... on what it cannot sign
            return False
        for versioned in signatures.split(" "):
            version, _, signature = versioned.partition(",")
            if version == "v1" and hmac.compare_digest(signature.encode(), expected.encode()):
                return True
        return False

    def _forget(self, now: float) -> None:
        while self._seen:
            oldest_id, at = next(iter(self._seen.items()))
            if now - at <= 2 * TOLERANCE and len(self._seen) < MAX_REMEMBERED:
                break
            del self._seen[oldest_id]

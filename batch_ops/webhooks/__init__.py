"""OpenAI batch webhooks: wake waiters within seconds instead of a poll interval later.

The pieces, from OpenAI to the waiting task:

1. OpenAI (or ``batch-ops serve --webhook-url``) POSTs a signed event when a batch ends.
2. The receiver (:func:`create_receiver_app`; ``batch-ops webhooks serve`` runs it) verifies it
   (:class:`WebhookVerifier`: signature, timestamp, replays) and keeps it in order.
3. Each triggerer event loop, Prefect worker or client holds one long-poll on the receiver
   (:class:`EventSubscription`, shared by all its waits) and wakes the wait for that batch,
   which retrieves the batch once and ends. A long safety poll still ends a wait whose event
   was lost.

Examples:
    >>> from batch_ops.webhooks import BatchEvent, create_receiver_app
    >>> # app = create_receiver_app(secret=os.environ["OPENAI_WEBHOOK_SECRET"],
    >>> #                           events_token=os.environ["BATCH_OPS_EVENTS_TOKEN"])  # else /events is open
    >>> # from batch_ops.webhooks.serve import run_receiver   # uvicorn with read timeouts and a connection cap
    >>> # run_receiver(app, host="0.0.0.0", port=8780)        # or mount it in a FastAPI/Starlette app
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batch_ops.errors import WebhookVerificationError
from batch_ops.webhooks.events import BATCH_EVENT_TYPES, BatchEvent, parse_event

if TYPE_CHECKING:
    from batch_ops.webhooks.hub import EventHub
    from batch_ops.webhooks.receiver import create_receiver_app
    from batch_ops.webhooks.subscription import EventSubscription
    from batch_ops.webhooks.verify import WebhookVerifier

__all__ = [
    "BATCH_EVENT_TYPES",
    "BatchEvent",
    "EventHub",
    "EventSubscription",
    "WebhookVerificationError",
    "WebhookVerifier",
    "create_receiver_app",
    "parse_event",
]

_LAZY = {
    "EventHub": "hub",
    "EventSubscription": "subscription",
    "WebhookVerifier": "verify",
    "create_receiver_app": "receiver",
}


def __getattr__(name: str) -> Any:
    # Starlette and standardwebhooks load only for the parts that need them.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batch_ops.webhooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"batch_ops.webhooks.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

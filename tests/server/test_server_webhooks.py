"""The local server sends OpenAI's batch webhooks: signed, one per batch that ends, at least once.

Every event is checked by the official ``openai`` SDK (``client.webhooks.unwrap``), the
independent judge of the signature scheme and the event's shape.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

#: The secret the ``webhook_secret`` fixture hands out (tests/conftest.py): a dummy, base64 of 32 bytes.
WEBHOOK_SECRET = "whsec_YmF0Y2gtb3BzLXRlc3Qtd2ViaG9vay1zZWNyZXQtMzI="
Inbox = Any


@pytest.fixture(autouse=True)
def _same_secret(webhook_secret: str) -> None:
    assert webhook_secret == WEBHOOK_SECRET


def _oracle() -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-unused", webhook_secret=WEBHOOK_SECRET)


def _finish(kit: Any, url: str, n: int = 3) -> Any:
    client = kit.sdk(url)
    batch = kit.submit(client, kit.chat_file(n))
    return kit.wait(client, batch.id)


def test_each_batch_that_ends_sends_one_signed_event(make_server: Any, kit: Any, inbox: Inbox) -> None:
    with make_server(webhook_urls=[inbox.url], webhook_secret=WEBHOOK_SECRET) as url:
        done = _finish(kit, url)
        (delivery,) = inbox.wait_for(1)
        event = _oracle().webhooks.unwrap(delivery.body.decode(), delivery.headers)
        assert event.type == "batch.completed" and event.data.id == done.id and event.object == "event"
        assert delivery.headers["webhook-id"] == event.id and event.id.startswith("evt_")
        assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 30
        # Cancelled and expired batches send their own events.
        client = kit.sdk(url)
        slow = kit.submit(client, kit.chat_file(50, prefix="slow"))
        client.batches.cancel(slow.id)
        kit.wait(client, slow.id)
        second = inbox.wait_for(2)[1]
        cancelled = _oracle().webhooks.unwrap(second.body.decode(), second.headers)
        assert (cancelled.type, cancelled.data.id) == ("batch.cancelled", slow.id)
        time.sleep(0.5)
        assert len(inbox.deliveries) == 2, "one event per batch that ended, nothing for the transitions between"


def test_expired_batch_event(make_server: Any, kit: Any, inbox: Inbox) -> None:
    with make_server(webhook_urls=[inbox.url], webhook_secret=WEBHOOK_SECRET, expire_after=0.5,
                     request_latency=0.5, concurrency=1) as url:
        done = _finish(kit, url, 5)
        assert done.status == "expired"
        (delivery,) = inbox.wait_for(1)
        event = _oracle().webhooks.unwrap(delivery.body.decode(), delivery.headers)
        assert (event.type, event.data.id) == ("batch.expired", done.id)


def test_a_failing_endpoint_gets_the_same_event_again_with_back_off(make_server: Any, kit: Any, inbox: Inbox) -> None:
    inbox.fail_next = 2  # answered 500 twice; the server retries after 1 s, then 2 s
    with make_server(webhook_urls=[inbox.url], webhook_secret=WEBHOOK_SECRET) as url:
        done = _finish(kit, url)
        ended = time.time()
        (delivery,) = inbox.wait_for(1, timeout=30)
        assert delivery.at - ended >= 2.5, "delivered before two back-off pauses (1 s + 2 s)"
        event = _oracle().webhooks.unwrap(delivery.body.decode(), delivery.headers)
        assert event.data.id == done.id


def test_the_outbox_survives_kill_9(make_server: Any, kit: Any, inbox: Inbox) -> None:
    """The endpoint is down when the batch ends; the server is killed before it could deliver;
    started again on the same data dir, it delivers the event."""
    inbox.stop()
    with make_server(webhook_urls=[inbox.url], webhook_secret=WEBHOOK_SECRET) as url:
        done = _finish(kit, url)
        time.sleep(0.5)  # at least one refused attempt
        url.kill()
        inbox.start()
        url.restart()
        (delivery,) = inbox.wait_for(1, timeout=30)
        event = _oracle().webhooks.unwrap(delivery.body.decode(), delivery.headers)
        assert (event.type, event.data.id) == ("batch.completed", done.id)


def test_dropped_events_are_never_sent(make_server: Any, kit: Any, inbox: Inbox) -> None:
    with make_server(webhook_urls=[inbox.url], webhook_secret=WEBHOOK_SECRET, webhook_drop=1.0) as url:
        _finish(kit, url)
        time.sleep(1.0)
        assert inbox.deliveries == []


def test_every_endpoint_gets_each_event(make_server: Any, kit: Any, make_inbox: Any) -> None:
    inbox, other = make_inbox(), make_inbox()
    with make_server(webhook_urls=[inbox.url, other.url], webhook_secret=WEBHOOK_SECRET) as url:
        done = _finish(kit, url)
        (a,), (b,) = inbox.wait_for(1), other.wait_for(1)
        assert json.loads(a.body) == json.loads(b.body) and json.loads(a.body)["data"]["id"] == done.id


@pytest.mark.parametrize(("options", "needle"), [
    ({"webhook_urls": ["http://127.0.0.1:9/hooks"]}, "need webhook_secret"),
    ({"webhook_urls": ["http://127.0.0.1:9/hooks"], "webhook_secret": "plain"}, "whsec_"),
    ({"webhook_drop": 1.5}, "share between 0 and 1"),
])
def test_bad_webhook_options_are_refused(options: dict[str, Any], needle: str) -> None:
    from batch_ops.server.options import ServerOptions

    with pytest.raises(ValueError, match=needle):
        ServerOptions(**options)


def test_the_secret_travels_in_the_environment_not_the_command_line() -> None:
    from batch_ops.server.options import WEBHOOK_SECRET_ENV, ServerOptions

    opts = ServerOptions(webhook_urls=("http://a/h", "http://b/h"), webhook_secret=WEBHOOK_SECRET)
    argv = opts.to_argv()
    assert WEBHOOK_SECRET not in " ".join(argv) and argv.count("--webhook-url") == 2
    assert opts.to_env()[WEBHOOK_SECRET_ENV] == WEBHOOK_SECRET
    again = ServerOptions.from_argv(argv, environ=opts.to_env())
    assert again.webhook_urls == opts.webhook_urls and again.webhook_secret == WEBHOOK_SECRET

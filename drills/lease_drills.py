"""Suite ``lease_drills`` (drill 24l): racing tries of one key, with and without the key ledger's lease, per provider.

On a provider whose batches carry our key (OpenAI, Gemini, the OpenAI-shaped profiles), tries of one
key that start at the same moment each look the key up before any of them has created: without a
key ledger each creates, and the reconcile keeps the earliest batch and cancels the others, which
ran (and were billed) until their cancel. With ``key_ledger`` set, each try takes the key's lease
before its lookup and holds it until its batch exists: the others wait, find it and attach.

* ``money-lease``: four processes submit one key at the same moment, against OpenAI's wire,
  Gemini's and Together's (the OpenAI-shaped profile whose key rides in the input's file name),
  without and with a key ledger (a local folder: ``flock``).

"Paid" is what the server ran successfully: the success lines of every batch it holds, read back
through the provider's own dialect. "Needed" is the number of requests. With the lease, paid must
equal needed and one batch be made; without it, the extra must equal what the cancelled duplicates
finished (printed: the figure the lease removes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drills._common import CANARY, Drill
from drills._racers import race

__all__ = ["run"]

RACERS = 4
NEEDED = 60


def run(names: list[str], work: Path) -> list[Drill]:
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, "paid vs needed: racing tries with and without the key's lease").run(
            lambda d: money_lease(d, work / "lease")))
    return results


def _chat(i: int) -> dict[str, Any]:
    return {"custom_id": f"race-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": f"race {i}"}]}}


def _openai(i: int) -> dict[str, Any]:
    return {**_chat(i), "method": "POST", "url": "/v1/chat/completions"}


def _gemini(i: int) -> dict[str, Any]:
    return {"key": f"race-{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"race {i}"}]}]}}


#: name: (provider, the local server's wire, a request line, the batch's endpoint, the base URL from the server's)
PROVIDERS: dict[str, tuple[str, str, Callable[[int], dict[str, Any]], str, Callable[[str], str]]] = {
    "OpenAI": ("openai", "openai", _openai, "/v1/chat/completions", str),
    "Gemini": ("gemini", "openai", _gemini, "gemini-2.5-flash", lambda url: url.removesuffix("/v1") + "/v1beta"),
    "Together": ("together", "together", _chat, "/v1/chat/completions", str),
}


def _paid(settings: dict[str, Any], source: Path) -> tuple[int, int, int]:
    """(successes over every batch on the server, batches, batches cancelled), once every batch has ended."""
    from batch_ops import BatchClient, ClientSettings
    from batch_ops.models import BatchStatus

    paid = cancelled = 0
    with BatchClient(settings=ClientSettings(**settings)) as client:
        made = list(client.batches.iter_all())
        for batch in made:
            ended = client.batches.wait(batch.id, poll_interval=0.1, timeout=120)
            cancelled += ended.status is BatchStatus.CANCELLED
            paid += sum(r.ok for r in client.results(ended, input_path=source))
    return paid, len(made), cancelled


def money_lease(d: Drill, work: Path) -> None:
    from batch_ops.server import serve_in_background

    work.mkdir(parents=True, exist_ok=True)
    for name, (provider, wire, line, endpoint, base) in PROVIDERS.items():
        source = work / f"{provider}.jsonl"
        source.write_text("".join(json.dumps(line(i)) + "\n" for i in range(NEEDED)))
        for ledger in (None, work / f"ledger-{provider}"):
            # One request at a time, 20 ms each: a duplicate gets some work done before it cancels itself.
            with serve_in_background(api_key=CANARY, wire=wire, concurrency=1, request_latency=0.02) as url:
                settings = {"api_key": CANARY, "provider": provider, "base_url": base(str(url)),
                            "backoff_initial": 0.05, "backoff_max": 0.5}
                leased = {**settings, "key_ledger": str(ledger)} if ledger else settings
                said = race(d, RACERS, settings=leased, source=source,
                            spec={"endpoint": endpoint, "idempotency_key": f"race-{provider}"})
                paid, made, cancelled = _paid(settings, source)
            ids = {s["batch"] for s in said}
            d.check(len(ids) == 1, f"{name}: {RACERS} tries agree on one batch ({len(ids)} distinct answers)")
            d.check(made - cancelled == 1, f"{name}: one batch kept ({made} made, {cancelled} cancelled)")
            scenario = f"{name}: {RACERS} concurrent tries of one key, " + ("key ledger lease" if ledger else
                                                                             "no key ledger")
            extra = paid - NEEDED
            if ledger:
                d.check(made == 1 and paid == NEEDED, f"{scenario}: {made} batches, paid {paid} for {NEEDED}")
                detail = f"{made} batch created; {RACERS - 1} tries waited for the key's lease and attached"
            else:
                d.check(extra >= 0, f"{scenario}: paid {paid} for {NEEDED}")
                detail = f"{made} created, {cancelled} cancelled themselves"
            d.figure(scenario, f"paid {paid} / needed {NEEDED}" + (f" (+{extra} dup)" if extra else "") + f"; {detail}")

"""A try that finds the key's batch attaches to the batch the racing creators keep.

Tries of one key race without a key ledger: each lists the key's batches, and one that finds none
creates, then reconciles (the earliest by ``(created_at, id)`` stays, the others cancel). A try that
found a batch created in the same second as a racing create could attach to the one that create then
beats by id: it waited on a cancelled batch while the others used the winner (seen as "the tries did
not agree on one batch" in ``test_tries_racing_on_one_key_collapse_to_one_batch[4]`` on a loaded machine).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import Any, Final

import openai
import pytest

from batch_ops import BatchClient, Source, SubmitSpec
from batch_ops._plans import Send
from batch_ops._submit import submit_plan
from batch_ops.identity.fingerprint import fingerprint_file
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY, attempt_key

CHAT: Final = "/v1/chat/completions"


def requests_file(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}]}
            fh.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": body}) + "\n")
    return path


def after_first_list(plan: Generator[Any, Any, Any], act: Callable[[], None]) -> Generator[Any, Any, Any]:
    """``plan`` as it is, but ``act()`` runs once its first batch list has been answered (a racing try
    creating between this try's lookup and its next step)."""
    value: Any = None
    error: BaseException | None = None
    acted = False
    while True:
        try:
            effect = plan.throw(error) if error is not None else plan.send(value)
        except StopIteration as done:
            return done.value
        value, error = None, None
        try:
            value = yield effect
        except Exception as exc:  # handed back to the plan, as the driver would
            error = exc
        if not acted and isinstance(effect, Send) and effect.method == "GET" and effect.path.endswith("batches"):
            acted = True
            act()


def create(sdk: openai.OpenAI, file_id: str, attempt: str) -> Any:
    """A batch of ``attempt`` made as a racing try's create makes it."""
    return sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                              metadata={IDEMPOTENCY_METADATA_KEY: attempt})


def racing_creates(sdk: openai.OpenAI, file_id: str, attempt: str, found: Any, rivals: list[Any]) -> None:
    """Creates of the same attempt landing after the try looked, until one beats ``found`` by id."""
    for _ in range(8):
        rivals.append(create(sdk, file_id, attempt))
        if rivals[-1].id < found.id:
            return


def test_a_try_that_finds_a_young_batch_attaches_to_the_one_a_racing_create_beats_it_with(
    make_server: Callable[..., Any], tmp_path: Path
) -> None:
    path = requests_file(tmp_path / "in.jsonl", 3)
    with make_server() as url, openai.OpenAI(api_key="local", base_url=str(url), max_retries=3) as sdk, \
            BatchClient(api_key="local", base_url=url) as client:
        file_id = sdk.files.create(file=("in.jsonl", path.read_bytes()), purpose="batch").id
        for setup in range(6):
            key = f"racewin-{setup}"
            attempt = attempt_key(key, 0, fingerprint_file(path).value)

            time.sleep(1.02 - time.time() % 1)  # at the start of a second: the whole scene fits in it
            found = create(sdk, file_id, attempt)  # the batch the try finds: young, and (as it turns out) a loser
            rivals: list[Any] = []
            plan = submit_plan(SubmitSpec.of(endpoint=CHAT, idempotency_key=key), Source.of(path),
                               workdir=tmp_path / f"w{setup}", lookback=3600.0, **client._wire)
            (tmp_path / f"w{setup}").mkdir()
            sub = client._driver.drive(after_first_list(plan, partial(racing_creates, sdk, file_id, attempt, found,
                                                                      rivals)))
            scene = [found, *rivals]
            winner = min(scene, key=lambda b: (b.created_at, b.id))
            if winner.id == found.id or {b.created_at for b in scene} != {found.created_at}:
                continue  # the scene did not happen (no rival beat it, or a second passed): set it up again
            assert sub.fingerprint is not None and attempt_key(key, 0, sub.fingerprint) == attempt
            assert not sub.created
            assert sub.batch.id == winner.id, (
                f"attached to {sub.batch.id}, which a racing create beat ({winner.id}, same second, smaller id)")
            losers = {b.id for b in scene} - {winner.id}
            assert {d.id for d in sub.chain.attempts[0].duplicates} == losers
            return
        pytest.fail("could not set the scene up: no racing create beat the found batch in its second")

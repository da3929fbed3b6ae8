"""The orphan sweep owns batches of APIs that keep no metadata (Anthropic, Gemini, Together) through the key ledger.

The Airflow and Prefect adapters name a batch's owner in its metadata; an Anthropic, Gemini or
Together batch has none, so before, every one of them was ``unowned`` to the sweep (reported, never cancelled),
even when its run had died. A submit with a key ledger now records the owner there, and the sweep
reads it for each unfinished batch whose metadata names no owner. Real HTTP against the local
server; the orchestrator's answer is a plain function (as in ``tests/test_orphan_proof.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from batch_ops import BatchClient, ClientSettings, SubmitSpec
from batch_ops.identity.owners import Owner, prefect_owner_metadata
from batch_ops.orphans import OwnerState, sweep

MakeServer = Callable[..., AbstractContextManager[Any]]


def _ended(owners: list[Owner]) -> Mapping[str, OwnerState]:
    """Prefect's answer: every flow run named has ended (crashed without its batches)."""
    return {o.id: OwnerState.ENDED for o in owners}


def _gemini(tmp_path: Path) -> tuple[str, Callable[[str], str], str]:
    tmp_path.joinpath("r.jsonl").write_text(json.dumps(
        {"key": "a", "request": {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}}) + "\n")
    return str(tmp_path / "r.jsonl"), lambda url: str(url).removesuffix("/v1") + "/v1beta", "gemini-2.5-flash"


def _anthropic(tmp_path: Path) -> tuple[str, Callable[[str], str], str]:
    tmp_path.joinpath("r.jsonl").write_text(json.dumps(
        {"custom_id": "a", "params": {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}})
        + "\n")
    return str(tmp_path / "r.jsonl"), str, "/v1/messages"


def _together(tmp_path: Path) -> tuple[str, Callable[[str], str], str]:
    tmp_path.joinpath("r.jsonl").write_text(json.dumps(
        {"custom_id": "a", "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}) + "\n")
    return str(tmp_path / "r.jsonl"), str, "/v1/chat/completions"


@pytest.mark.parametrize("provider", ["gemini", "anthropic", "together"])
def test_a_dead_runs_batch_without_metadata_is_swept_through_the_ledger(provider: str, make_server: MakeServer,
                                                                         tmp_path: Path) -> None:
    source, base, endpoint = {"gemini": _gemini, "anthropic": _anthropic, "together": _together}[provider](tmp_path)
    # Every request takes 10 minutes: the batches run while the sweep looks.
    with make_server(request_latency=600, wire="together" if provider == "together" else "openai") as url:
        settings = ClientSettings(api_key="k", provider=provider, base_url=base(url),
                                  key_ledger=str(tmp_path / "ledger"))
        with BatchClient(settings=settings) as client:
            dead = client.submit_spec(source, SubmitSpec(endpoint=endpoint, idempotency_key="dead-run",
                                                         metadata=prefect_owner_metadata("flow-run-dead"))).batch
            assert "prefect_flow_run_id" not in (client.batches.retrieve(dead.id).metadata or {})  # nowhere to go
            report = sweep(client, _ended, cancel=True, min_age=0, systems=["prefect"])
            after = client.batches.retrieve(dead.id)
    (judged,) = report.judgements
    assert (judged.verdict, judged.owner and judged.owner.label) == ("orphan", "prefect:flow-run-dead"), \
        report.as_dict()
    # The cancel was accepted (Gemini has no "cancelling" state: its batch reads running until the cancel lands).
    seen = ("cancelling", "cancelled") + (("in_progress",) if provider == "gemini" else ())
    assert judged.cancelled and after.status.value in seen


def test_without_a_ledger_a_gemini_batch_stays_unowned(make_server: MakeServer, tmp_path: Path) -> None:
    source, base, endpoint = _gemini(tmp_path)
    with make_server(request_latency=600) as url, \
            BatchClient(settings=ClientSettings(api_key="k", provider="gemini", base_url=base(url))) as client:
        batch = client.submit_spec(source, SubmitSpec(endpoint=endpoint, idempotency_key="no-ledger",
                                                      metadata=prefect_owner_metadata("flow-run-dead"))).batch
        report = sweep(client, _ended, cancel=True, min_age=0, systems=["prefect"])
        still = client.batches.retrieve(batch.id)
    assert [j.verdict for j in report.judgements] == ["unowned"]  # reported, never cancelled: nothing proves it ours
    assert not still.status.is_terminal

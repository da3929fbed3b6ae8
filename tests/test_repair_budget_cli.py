"""A repair round under a budget on the command line, as real processes: ``batch-ops submit --response-schema
FILE --repair-rounds 1 --wait --max-cost-usd X --json``.

The server spoils a fifth of the structured answers; output dominates the price and each request's output limit
is exactly the valid answer's 15 tokens, so attempt 0's actual cost is close to its upper bound. With a budget
just above that bound the repair round is refused before anything of it is uploaded (counted on the server): the
command exits 0 with a warning naming the budget, and its JSON carries the rounds (the refusal and its numbers),
the estimate and the bill (for people: a warning on stderr); ``batch-ops results`` gives the valid answers
typed and the invalid ones marked. With room for both the round runs, and the bill covers the repair batch too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from batch_ops.server import serve_in_background

KEY = "sk-repair-budget-cli-0123456789"
MODEL = "gpt-4o-mini"
PRICES = {MODEL: {"input": 0.001, "output": 100}}  # USD per 1M tokens: the answers are what costs
ANSWER_TOKENS = 15  # cl100k tokens of the server's valid answer {"name": "", "population": 0, "tags": []}
N = 20
TIGHT, ROOMY = 0.0301, 0.05  # attempt 0's upper bound is ~$0.03001; the repair round adds a few x $0.0015
CITY = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


def cli(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "batch_ops.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert KEY not in done.stdout + done.stderr and "Traceback" not in done.stderr, done.stderr
    return done


def requests(path: Path, prefix: str) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"model": MODEL, "max_tokens": ANSWER_TOKENS,
                                                 "messages": [{"role": "user", "content": f"City {i}?"}]}}) + "\n"
                            for i in range(N)))
    return path


def test_a_budget_the_repair_round_would_cross_stops_it_and_the_paid_answers_arrive(tmp_path: Path) -> None:
    schema, prices = tmp_path / "city.json", tmp_path / "prices.json"
    schema.write_text(json.dumps(CITY))
    prices.write_text(json.dumps(PRICES))
    with serve_in_background(api_key=KEY, invalid_share=0.2, invalid_kind="mixed", seed=11) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "BATCH_OPS_"))}
        env.update(NO_COLOR="1", COLUMNS="300", PYTHONWARNINGS="ignore", OPENAI_API_KEY=KEY, OPENAI_BASE_URL=str(url))

        def submit(prefix: str, budget: float, *more: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
            path = requests(tmp_path / f"{prefix}.jsonl", prefix)
            return path, cli("submit", path, "--endpoint", "/v1/chat/completions", "--response-schema", schema,
                             "--repair-rounds", "1", "--repair-feedback", "--wait", "--poll-interval", "0.1",
                             "--max-cost-usd", str(budget), "--prices", prices, "--idempotency-key", prefix, *more,
                             env=env)

        tight_in, tight = submit("t", TIGHT, "--json")
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
        assert calls.get("POST /v1/files") == 1 and calls.get("POST /v1/batches") == 1, calls  # no repair upload
        assert tight.returncode == 0, tight.stderr
        _, human = submit("t", TIGHT)  # the same work again, for people: re-attached, refused again, a warning
        assert human.returncode == 0, human.stderr
        assert "warning: Repair round 1" in human.stderr and "refused by the budget" in human.stderr
        result = json.loads(tight.stdout)
        out = tmp_path / "tight-results.jsonl"
        got = cli("results", ",".join(result["batch_ids"]), "--output", out, "--response-schema", schema,
                  "--input", tight_in, "--json", env=env)
        assert got.returncode == 0, got.stderr
        typed = [json.loads(x) for x in out.read_text().splitlines()]
        _, roomy = submit("r", ROOMY, "--json")
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    assert calls.get("POST /v1/files") == 3 and calls.get("POST /v1/batches") == 3, calls

    # tight: a warning naming the budget; the JSON has the refused round with its numbers, the estimate, the bill.
    (refused,) = result["structured"]["rounds"]
    invalid = sum(refused["invalid"].values())
    assert invalid > 0 and refused["batch_id"] is None and len(result["batch_ids"]) == 1
    message = refused["refused"]
    assert message.startswith("Budget: attempt 1 would cost up to $") and "Nothing was uploaded" in message
    assert f"max_cost_usd ${TIGHT:.6f}" in message and "the chain's earlier attempts $" in message
    output = invalid * ANSWER_TOKENS * PRICES[MODEL]["output"] / 1e6
    assert output <= refused["upper_usd"] < output * 1.01 and f"up to ${refused['upper_usd']:.6f}" in message
    assert result["cost"]["cost_usd"] <= result["estimate"]["upper_usd"] <= TIGHT
    # The paid-for answers: the valid typed, the invalid marked.
    assert len(typed) == N and sum(line["parsed"] is not None for line in typed) == N - invalid
    assert sum(line["invalid"] is not None for line in typed) == invalid

    # roomy: the round ran; the bill covers both batches, within the estimate plus the round's upper bound.
    assert roomy.returncode == 0, roomy.stderr
    done: dict[str, Any] = json.loads(roomy.stdout)
    (ran,) = done["structured"]["rounds"]
    assert ran["refused"] is None and ran["carried"] == sum(ran["invalid"].values()) > 0
    assert done["batch_ids"][1] == ran["batch_id"] == done["id"]
    cost, estimate = done["cost"], done["estimate"]
    assert cost["models"][0]["requests"] == N + ran["carried"]
    assert estimate["upper_usd"] < cost["cost_usd"] <= estimate["upper_usd"] + ran["upper_usd"] <= ROOMY

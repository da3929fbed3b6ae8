"""The cost commands of ``batch-ops``, as real processes: ``estimate`` offline, ``submit --max-cost-usd`` refusing
with no upload, and ``submit --wait`` putting the estimate and the actual bill side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai

CHAT = "/v1/chat/completions"


def _run(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "BATCH_OPS"))}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "OPENAI_API_KEY": "local-key-123456"})
    return subprocess.run([sys.executable, "-m", "batch_ops.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def _requests(path: Path, n: int, **body: Any) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"q-{i}", "method": "POST", "url": CHAT, "body": {
        "model": "gpt-4", "messages": [{"role": "user", "content": f"question {i} 数字 12345678901234"}], **body}},
        ensure_ascii=False) + "\n" for i in range(n)))
    return path


def test_estimate_command_offline(tmp_path: Path) -> None:
    path = _requests(tmp_path / "in.jsonl", 4, max_tokens=10)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4": {"input": 10, "output": 30}}))
    done = _run("estimate", path, "--prices", prices, "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["requests"] == 4 and found["models"][0]["input_kind"] == "exact"
    assert found["models"][0]["output_bound"] == 40 and found["upper_usd"] > found["lower_usd"] > 0
    human = _run("estimate", path, "--prices", prices)
    assert "gpt-4" in human.stdout and "exact" in human.stdout and "dated" in human.stdout
    unknown = _run("estimate", _requests(tmp_path / "odd.jsonl", 1, model="my-own-model"))
    assert unknown.returncode == 1 and "No batch price for model 'my-own-model'" in unknown.stderr
    assert "--prices" in unknown.stderr


def test_submit_budget_refuses_then_wait_shows_estimate_and_actual(make_server: Any, tmp_path: Path) -> None:
    path = _requests(tmp_path / "in.jsonl", 6, max_tokens=20)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4": {"input": 10, "output": 30}}))
    with make_server() as url:
        refused = _run("submit", path, "-e", CHAT, "--base-url", url, "--max-cost-usd", "0.000001",
                       "--prices", prices, "--json")
        assert refused.returncode == 1, refused.stderr
        error = json.loads(refused.stdout)["error"]
        assert error["type"] == "BudgetExceededError" and "Nothing was uploaded" in error["message"]
        with openai.OpenAI(api_key="x", base_url=str(url)) as sdk:
            assert not list(sdk.files.list()) and not list(sdk.batches.list())
        done = _run("submit", path, "-e", CHAT, "--base-url", url, "--max-cost-usd", "1", "--prices", prices,
                    "--wait", "--poll-interval", "0.1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    estimate, cost = result["estimate"], result["cost"]
    assert estimate["models"][0]["input_tokens"] == cost["models"][0]["input_tokens"]
    assert estimate["lower_usd"] <= cost["cost_usd"] <= estimate["upper_usd"]

"""Structured outputs on the command line, as real processes: ``batch-ops submit --response-schema FILE
--repair-rounds N --wait`` pays for exactly the invalid answers once more, then ``batch-ops results b1,b2
--response-schema FILE`` writes every answer typed; a schema the provider refuses is refused before upload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops.server import serve_in_background

KEY = "sk-structured-cli-0123456789"
CITY = {"type": "object", "additionalProperties": False, "required": ["name", "population", "tags"],
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"},
                       "tags": {"type": "array", "items": {"type": "string"}}}}


def cli(*args: str | Path, provider: str = "openai", env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "batch_ops.cli", "--provider", provider, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert KEY not in done.stdout + done.stderr and "Traceback" not in done.stderr, done.stderr
    return done


def environment(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GEMINI_", "GOOGLE_", "BATCH_OPS_"))}
    env.update(NO_COLOR="1", COLUMNS="300", PYTHONWARNINGS="ignore", **more)
    return env


def requests(path: Path, shape: str, n: int) -> Path:
    def line(i: int) -> dict[str, Any]:
        if shape == "gemini":
            return {"key": f"k-{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"city {i}"}]}]}}
        return {"custom_id": f"k-{i}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"city {i}"}]}}
    path.write_text("".join(json.dumps(line(i)) + "\n" for i in range(n)))
    return path


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_submit_repairs_the_invalid_and_results_are_typed(provider: str, tmp_path: Path) -> None:
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY))
    path = requests(tmp_path / "in.jsonl", provider, 20)
    endpoint = "gemini-2.5-flash" if provider == "gemini" else "/v1/chat/completions"
    with serve_in_background(api_key=KEY, invalid_share=0.2, invalid_kind="mixed", seed=3) as url:
        env = environment(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=str(url), GEMINI_API_KEY=KEY,
                          GOOGLE_GEMINI_BASE_URL=str(url).removesuffix("/v1"))
        sub = cli("submit", path, "--endpoint", endpoint, "--response-schema", schema, "--repair-rounds", "1",
                  "--repair-feedback", "--idempotency-key", "cities", "--wait", "--poll-interval", "0.1", "--json",
                  provider=provider, env=env)
        assert sub.returncode == 0, sub.stderr
        repaired = json.loads(sub.stdout)  # the chain's latest batch: the repair round's, with the rounds
        (round_one,) = repaired["structured"]["rounds"]
        invalid = sum(round_one["invalid"].values())
        assert invalid > 0 and round_one["carried"] == invalid and round_one["batch_id"] == repaired["id"]
        assert repaired["request_counts"]["total"] == invalid  # paid == needed, counted on the server
        assert len(repaired["batch_ids"]) == 2 and repaired["batch_ids"][1] == repaired["id"]
        ids = ",".join(repaired["batch_ids"])
        out = tmp_path / "results.jsonl"
        got = cli("results", ids, "--output", out, "--response-schema", schema, "--input", path, "--json",
                  provider=provider, env=env)
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["invalid"] == 0
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [line["custom_id"] for line in lines] == [f"k-{i}" for i in range(20)]
        assert all(line["parsed"] == {"name": "", "population": 0, "tags": []} and line["invalid"] is None
                   for line in lines)
        human = cli("submit", path, "--endpoint", endpoint, "--response-schema", schema, "--repair-rounds", "1",
                    "--repair-feedback", "--idempotency-key", "cities", "--wait", "--poll-interval", "0.1",
                    provider=provider, env=env)  # the same work again: re-attached, nothing paid twice
        assert human.returncode == 0, human.stderr
        assert f"Re-attaching to batch {repaired['id']}" in human.stderr
        assert "Repair round 1: every answer follows the schema; nothing to repair" in human.stderr
        if provider == "openai":
            calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
            assert calls.get("POST /v1/batches") == 2  # the batch and its one repair round, over both runs


def test_a_schema_openai_refuses_uploads_nothing(tmp_path: Path) -> None:
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}}))
    path = requests(tmp_path / "in.jsonl", "openai", 2)
    with serve_in_background(api_key=KEY) as url:
        env = environment(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=str(url))
        sub = cli("submit", path, "--endpoint", "/v1/chat/completions", "--response-schema", loose, env=env)
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    assert sub.returncode == 1, sub.stdout + sub.stderr
    said = sub.stdout + sub.stderr
    assert "additionalProperties: false" in said and "'n' is not in required" in said
    assert not calls.get("POST /v1/files") and not calls.get("POST /v1/batches")


def test_repair_rounds_need_a_schema_and_a_wait(tmp_path: Path) -> None:
    path = requests(tmp_path / "in.jsonl", "openai", 1)
    done = cli("submit", path, "--endpoint", "/v1/chat/completions", "--repair-rounds", "1",
               env=environment(OPENAI_API_KEY=KEY))
    assert done.returncode == 2 and "--repair-rounds needs --wait and --response-schema" in done.stderr


def test_a_pydantic_model_named_module_colon_class_types_the_answers(tmp_path: Path) -> None:
    """``--response-schema cities:City``: a user's pydantic model, importable from their project, instead of a JSON
    Schema file; a name that imports nothing is refused before upload, naming the fix."""
    (tmp_path / "cities.py").write_text("from pydantic import BaseModel\n\n\nclass City(BaseModel):\n"
                                        "    name: str\n    population: int\n    tags: list[str]\n")
    path = requests(tmp_path / "in.jsonl", "openai", 3)
    with serve_in_background(api_key=KEY) as url:
        env = environment(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=str(url), PYTHONPATH=str(tmp_path))
        sub = cli("submit", path, "--endpoint", "/v1/chat/completions", "--response-schema", "cities:City", "--wait",
                  "--poll-interval", "0.1", "--json", env=env)
        assert sub.returncode == 0, sub.stderr
        batch = json.loads(sub.stdout)
        assert batch["structured"]["response_schema"]["name"] == "City"
        assert batch["structured"]["response_schema"]["model"] == "cities:City"
        out = tmp_path / "results.jsonl"
        got = cli("results", batch["id"], "--output", out, "--response-schema", "cities:City", "--json", env=env)
        assert got.returncode == 0 and json.loads(got.stdout)["invalid"] == 0, got.stderr
        assert all(json.loads(x)["parsed"] == {"name": "", "population": 0, "tags": []}
                   for x in out.read_text().splitlines())
        missing = cli("submit", path, "--endpoint", "/v1/chat/completions", "--response-schema", "cities:Town",
                      env=env)
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
    assert missing.returncode != 0 and "'cities:Town' names no pydantic model" in missing.stdout + missing.stderr
    assert calls.get("POST /v1/batches") == 1  # the refused one uploaded nothing

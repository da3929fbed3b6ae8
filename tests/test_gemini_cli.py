"""The CLI on Gemini: ``batch-ops --provider gemini`` validates by Gemini's line rules (offline), submits,
waits and writes the results, against the local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batch_ops.server.background import serve_in_background

KEY = "gemini-local-key"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batch_ops.cli", "--provider", "gemini", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_validates_submits_and_collects_gemini(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "request": {
        "contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]}}) + "\n" for i in range(3)))
    env = {k: v for k, v in os.environ.items() if k not in ("BATCH_OPS_PROVIDER", "OPENAI_API_KEY")}
    env.update(GEMINI_API_KEY=KEY, NO_COLOR="1", COLUMNS="300")
    valid = _cli("validate", str(path), "--endpoint", "gemini-2.5-flash", env=env)
    assert valid.returncode == 0 and "valid: 3 requests" in valid.stdout + valid.stderr, valid.stdout + valid.stderr
    with serve_in_background(api_key=KEY) as url:
        env["GOOGLE_GEMINI_BASE_URL"] = str(url).removesuffix("/v1")  # the host, as the SDK reads it
        sub = _cli("submit", str(path), "--endpoint", "gemini-2.5-flash", "--idempotency-key", "cli", "--wait",
                   "--json", env=env)
        assert sub.returncode == 0, sub.stderr
        batch = json.loads(sub.stdout)
        batch_id = batch.get("id") or batch["batch"]["id"]
        out = tmp_path / "results.jsonl"
        got = _cli("results", batch_id, "--input", str(path), "--output", str(out), env=env)
        assert got.returncode == 0, got.stderr
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [line["custom_id"] for line in lines] == ["k0", "k1", "k2"]
        assert lines[1]["response"]["body"]["candidates"][0]["content"]["parts"][0]["text"] == "q1"

"""One eval set, three vendors: the same provider-neutral requests, no endpoint, a model per connection.

The settings name the provider and its model (an Airflow connection's or a Prefect block's
fields); the requests name neither. The submit writes each provider's own lines (OpenAI chat
completions, Anthropic Messages, Gemini GenerateContent), goes to the provider's own chat
endpoint (Gemini's is the model), and every result reads the same way (``text``, ``usage``).
One local server speaks all three wires.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_ops import BatchClient, ClientSettings, InputValidationError
from batch_ops.models import BatchStatus
from batch_ops.server import ServerURL

#: Nothing vendor-specific: no endpoint, no model.
NEUTRAL = [{"custom_id": f"q-{i}", "system": "Answer briefly.", "max_tokens": 32,
            "messages": [{"role": "user", "content": f"what is {i} + {i}?"}]} for i in range(3)]


def _connections(url: ServerURL, tmp_path: Path) -> dict[str, ClientSettings]:
    root = str(url).removesuffix("/v1")
    fast = {"backoff_initial": 0.05, "backoff_max": 0.2}
    return {
        "openai": ClientSettings(api_key="sk-o", base_url=str(url), model="gpt-4o-mini", **fast),
        "anthropic": ClientSettings(api_key="sk-ant", base_url=str(url), provider="anthropic",
                                    model="claude-sonnet-4-5", key_ledger=str(tmp_path / "ledger"), **fast),
        "gemini": ClientSettings(api_key="g-key", base_url=root + "/v1beta", provider="gemini",
                                 model="gemini-2.5-flash", **fast),
    }


def test_the_same_requests_run_on_three_providers(server_url: ServerURL, tmp_path: Path) -> None:
    bodies = {}
    for provider, settings in _connections(server_url, tmp_path).items():
        with BatchClient(settings=settings) as client:
            batch = client.submit(NEUTRAL, idempotency_key=f"one-eval-set-{provider}")
            done = client.batches.wait(batch.id, poll_interval=0.1, timeout=60)
            assert done.status is BatchStatus.COMPLETED, (provider, done.status)
            results = {r.custom_id: r for r in client.results(done)}
        assert sorted(results) == ["q-0", "q-1", "q-2"], provider
        for result in results.values():
            assert result.ok and result.text, (provider, result)
            assert result.usage is not None and result.usage.output_tokens is not None, (provider, result.usage)
        bodies[provider] = results["q-1"].body
    # Each provider was spoken to in its own words, with the connection's model.
    assert bodies["openai"]["model"] == "gpt-4o-mini" and "choices" in bodies["openai"]
    assert bodies["anthropic"]["model"] == "claude-sonnet-4-5" and bodies["anthropic"]["content"]
    assert "candidates" in bodies["gemini"]


def test_without_a_model_anywhere_the_submit_says_where_to_name_one(server_url: ServerURL, tmp_path: Path) -> None:
    root = str(server_url).removesuffix("/v1")
    with BatchClient(settings=ClientSettings(api_key="g", base_url=root + "/v1beta", provider="gemini")) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError, match=r"set the connection's .* model"):
            client.submit(NEUTRAL)
        assert len(client.files.list().data) == before  # refused before anything was sent
    # OpenAI-shaped: the lines need a model; the finding names the request.
    with BatchClient(settings=ClientSettings(api_key="k", base_url=str(server_url))) as client:
        with pytest.raises(InputValidationError, match="model"):
            client.submit(NEUTRAL)


def test_a_model_in_the_requests_wins_over_the_connections(server_url: ServerURL, tmp_path: Path) -> None:
    settings = _connections(server_url, tmp_path)["anthropic"]
    named = [{**r, "model": "claude-haiku-4-5"} for r in NEUTRAL]
    with BatchClient(settings=settings) as client:
        batch = client.submit(named)
        done = client.batches.wait(batch.id, poll_interval=0.1, timeout=60)
        assert {r.body["model"] for r in client.results(done)} == {"claude-haiku-4-5"}

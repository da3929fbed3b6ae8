"""The example flow ``flows/compare_providers.py`` runs the same neutral requests on three providers at
once, each from a saved ``OpenAIBatchCredentials`` block that differs only in provider, model and key
(one local server speaking OpenAI's, Anthropic's and Gemini's batch APIs; Prefect's test server)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from batch_ops.prefect import OpenAIBatchCredentials
from batch_ops.server import serve_in_background

pytestmark = pytest.mark.asyncio(loop_scope="session")
FLOW = Path(__file__).resolve().parents[2] / "flows" / "compare_providers.py"


def _load_flow_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("compare_providers_flow", FLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_compare_providers_flow_runs_on_three_blocks(tmp_path: Path) -> None:
    module = _load_flow_module()
    with serve_in_background(request_latency=0.05) as url:
        root = str(url).removesuffix("/v1")
        blocks = {
            "cmp-openai": OpenAIBatchCredentials(api_key="sk-o", base_url=str(url), provider="openai",
                                                 model="gpt-4o-mini"),
            "cmp-anthropic": OpenAIBatchCredentials(api_key="sk-ant", base_url=str(url), provider="anthropic",
                                                    model="claude-sonnet-4-5", key_ledger=str(tmp_path / "ledger")),
            "cmp-gemini": OpenAIBatchCredentials(api_key="g-key", base_url=root + "/v1beta", provider="gemini",
                                                 model="gemini-2.5-flash"),
        }
        for name, block in blocks.items():
            await block.save(name, overwrite=True)
        module.POLL_INTERVAL = 0.2
        summary = await module.compare_providers(blocks=list(blocks))
    assert sorted(summary["answers"]) == ["q-0", "q-1", "q-2"]
    for answers in summary["answers"].values():
        assert sorted(answers) == sorted(blocks)
        assert all(text and not text.startswith("error") for text in answers.values()), answers
    assert all(summary["tokens"][name] > 0 for name in blocks), summary["tokens"]

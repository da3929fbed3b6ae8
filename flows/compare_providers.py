"""Compare providers, as a Prefect flow: one eval set as a batch on several vendors at once, then one table.

The same steps as ``dags/compare_providers.py``:

1. ``run_batch`` (batch_ops' flow, as a subflow), once per credentials block and all at once:
   the same provider-neutral chat requests, written in each provider's own words and sent to its
   batch API; each wait is async, so the three hold no thread while the batches run.
2. ``read_batch_results`` reads each provider's results in one shape (custom_id, ok, text, usage,
   error); the flow returns, per request, what each provider answered, and the tokens each used.

Nothing here names a vendor, an endpoint or a model: each ``OpenAIBatchCredentials`` block names
its *Provider* (``openai``, ``anthropic``, ``gemini``, …) and its *Model*; adding a vendor is
adding a block. Anthropic keeps no batch metadata: its block's *Key ledger* must be a folder or
``s3://`` URL every worker shares (docs/providers.md).

Run once:  python flows/compare_providers.py --once
Serve:     python flows/compare_providers.py
Blocks:    BATCH_OPS_COMPARE_BLOCKS, block names, comma separated (default
           batch-ops-openai,batch-ops-anthropic,batch-ops-gemini).
"""

import asyncio
import os
import sys
from typing import Any

from prefect import flow

from batch_ops.prefect import OpenAIBatchCredentials, read_batch_results, run_batch

BLOCKS = [b.strip() for b in os.environ.get(
    "BATCH_OPS_COMPARE_BLOCKS", "batch-ops-openai,batch-ops-anthropic,batch-ops-gemini").split(",") if b.strip()]
POLL_INTERVAL = float(os.environ.get("BATCH_OPS_COMPARE_POLL_INTERVAL", "60"))

#: The eval set, said once for every vendor: no model, no endpoint (the blocks name them).
QUESTIONS = ["What is 2 + 2? Answer with a number.", "Name the capital of France in one word.",
             "Is 17 a prime number? Answer yes or no."]
REQUESTS = [{"custom_id": f"q-{i}", "system": "Answer as briefly as possible.", "max_tokens": 16,
             "messages": [{"role": "user", "content": question}]} for i, question in enumerate(QUESTIONS)]


async def _one(block: str) -> tuple[str, list[dict[str, Any]]]:
    credentials = await OpenAIBatchCredentials.load(block)
    done = await run_batch(requests=REQUESTS, credentials=credentials, poll_interval=POLL_INTERVAL)
    return block, await read_batch_results(done, credentials=credentials)


@flow(name="compare-providers")
async def compare_providers(blocks: list[str] | None = None) -> dict[str, Any]:
    """The same requests on every block's provider, at once; what each answered, side by side."""
    outcomes = await asyncio.gather(*(_one(block) for block in (blocks or BLOCKS)))
    answers: dict[str, dict[str, Any]] = {}
    tokens: dict[str, int] = {}
    for block, records in outcomes:
        tokens[block] = sum((r["usage"] or {}).get("total_tokens", 0) for r in records)
        for record in records:
            answers.setdefault(record["custom_id"], {})[block] = (
                record["text"] if record["ok"] else f"error: {record['error']}")
    return {"answers": answers, "tokens": tokens}


if __name__ == "__main__":
    if "--once" in sys.argv:
        print(asyncio.run(compare_providers()))
    else:
        compare_providers.serve(name="compare-providers")

"""batch_ops for Prefect 3: a credentials block, async tasks and the ``run_batch`` flow.

Register the block type with ``prefect block register -m batch_ops.prefect``.

Examples:
    ```python
    import asyncio
    from prefect import flow
    from batch_ops.prefect import run_batch

    @flow
    async def nightly(paths: list[str]) -> list[str | None]:
        results = await asyncio.gather(*(run_batch(input_path=p, endpoint="/v1/chat/completions") for p in paths))
        return [r.output_file_id for r in results]
    ```
"""

from __future__ import annotations

from batch_ops.prefect.credentials import OpenAIBatchCredentials
from batch_ops.prefect.flows import cancel_flow_run_batches, run_batch
from batch_ops.prefect.jobs import run_batch_job
from batch_ops.prefect.orphans import sweep_orphan_batches
from batch_ops.prefect.storage import block_target
from batch_ops.prefect.tasks import (
    BatchResult,
    cancel_batch,
    create_batch,
    download_batch_file,
    read_batch_results,
    submit_batch,
    upload_batch_file,
    wait_for_batch,
)

__all__ = [
    "BatchResult",
    "OpenAIBatchCredentials",
    "block_target",
    "cancel_batch",
    "cancel_flow_run_batches",
    "create_batch",
    "download_batch_file",
    "read_batch_results",
    "run_batch",
    "run_batch_job",
    "submit_batch",
    "sweep_orphan_batches",
    "upload_batch_file",
    "wait_for_batch",
]

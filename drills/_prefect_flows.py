"""The Prefect flows of the drills, at module level so Prefect can resolve their parameter types.

Imported only after ``prefect_drills`` has pointed PREFECT_HOME at a throwaway directory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow

from batch_ops.prefect import BatchResult, OpenAIBatchCredentials, create_batch, run_batch, upload_batch_file

__all__ = ["bad_inputs", "secure", "ten_batches"]

CHAT = "/v1/chat/completions"


@flow(name="drill-ten-batches")
async def ten_batches(paths: list[str], credentials: OpenAIBatchCredentials) -> list[BatchResult]:
    """Ten ``run_batch`` subflows, awaited concurrently on one event loop."""
    return list(await asyncio.gather(*(
        run_batch(input_path=p, endpoint=CHAT, credentials=credentials, poll_interval=0.3,
                  metadata={"drill": "prefect-faults"})
        for p in paths)))


@flow(name="drill-bad-input")
async def bad_inputs(files: dict[str, str], params: dict[str, dict[str, Any]],
                     credentials: OpenAIBatchCredentials) -> dict[str, str]:
    """Each bad file through ``upload_batch_file``, each bad parameter set through ``create_batch``;
    returns what each task failed with."""
    seen: dict[str, str] = {}

    async def attempt(name: str, call: Any) -> None:
        try:
            await call
        except Exception as exc:  # the task failed: keep what it said
            seen[name] = f"{type(exc).__name__}: {exc}"
        else:
            seen[name] = "NO ERROR"

    for name, path in files.items():
        await attempt(f"upload, {name}", upload_batch_file(path, endpoint=CHAT, credentials=credentials))
    for name, kw in params.items():
        await attempt(f"create, {name}", create_batch("file-none", credentials=credentials, **{"endpoint": CHAT, **kw}))
    return seen


@flow(name="drill-security")
async def secure(path: str, credentials: OpenAIBatchCredentials) -> BatchResult:
    """One ordinary batch with the canary key, passed in as an (unsaved) credentials block."""
    return await run_batch(input_path=path, endpoint=CHAT, credentials=credentials, poll_interval=0.2)

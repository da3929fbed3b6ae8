"""The Prefect flow of the money drill, deployed to a process work pool on ``prefect server start``.

A parent flow starts ``run_batch`` subflows one after another (``stagger`` seconds apart) and
awaits them all. The drill runs it twice:

* it kills the worker and this flow's process with ``kill -9`` once five of ten batches exist, then
  retries the parent flow run (Prefect picks the killed subflow runs up again);
* with ``give_up_after`` the first run's subflows stop waiting after that many seconds (their
  batches run on), so the parent fails; retried, Prefect makes *new* subflow runs.

Either way the retried parent's subflows must find the batches already paid for.
The API and its key come from the worker's environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``).
"""

from __future__ import annotations

import asyncio

from prefect import flow
from prefect.context import FlowRunContext

from batch_ops.prefect import BatchResult, run_batch

CHAT = "/v1/chat/completions"


@flow(name="drill-money-fanout")
async def money_fanout(paths: list[str], stagger: float = 1.0, give_up_after: float | None = None
                       ) -> list[BatchResult]:
    ctx = FlowRunContext.get()
    first = ctx is not None and ctx.flow_run is not None and ctx.flow_run.run_count <= 1
    timeout = give_up_after if first and give_up_after else None
    running = []
    for path in paths:
        running.append(asyncio.ensure_future(run_batch(input_path=path, endpoint=CHAT, poll_interval=0.5,
                                                       timeout=timeout)))
        await asyncio.sleep(stagger)
    outcomes = await asyncio.gather(*running, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [o for o in outcomes if not isinstance(o, BaseException)]

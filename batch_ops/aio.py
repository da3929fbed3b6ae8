"""Awaiting with a time limit without ever swallowing a cancellation.

``asyncio.wait_for`` before Python 3.12 returns the inner result when the inner awaitable
finishes in the same loop iteration as the caller is cancelled: the cancellation is lost and the
caller goes on as if nothing happened. A wait driven that way lives on after its Airflow trigger
was cancelled and keeps polling (issue 22: in a triggerer, 1 to 4 of 1,000 cancelled triggers in
4 of 17 runs; with short polls, a tenth of 1,000 waits in one round). Every await with a time limit
in the drivers, the trigger and the events subscription goes through :func:`within` instead:

* Python >= 3.11: ``asyncio.timeout``. The awaitable runs in the caller's own task, so a
  cancellation is delivered into it (a reply that arrived in the same iteration is dropped, as
  it must be); the timeout tells its own cancellation from anyone else's by the task's cancel
  count (``Task.uncancel``).
* Python 3.10 has neither: the awaitable runs in a task of its own, awaited with
  ``asyncio.wait``, which never converts or swallows the caller's cancellation; on it the inner
  task is cancelled too.

Examples:
    >>> import asyncio
    >>> async def slow() -> str:
    ...     await asyncio.sleep(10)
    ...     return "late"
    >>> async def main() -> str:
    ...     try:
    ...         return await within(slow(), 0.01)
    ...     except TimeoutError:
    ...         return "gave up"
    >>> asyncio.run(main())
    'gave up'
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``seconds``; a cancellation of the caller
    always propagates (as ``CancelledError``), whatever the awaitable was doing at that moment."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except BaseException:  # the caller was cancelled: so is the inner work, and the caller ends now
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        task.cancel()
        # Let it close what it holds (a connection) before we report the timeout, as wait_for does.
        await asyncio.wait((task,))
        if task.cancelled():
            raise TimeoutError
    return task.result()  # what it returned or raised (it may have finished in spite of the cancel)


def _retrieve(task: asyncio.Future[object]) -> None:
    """Mark a finished abandoned task's exception as seen (asyncio would log "never retrieved")."""
    if not task.cancelled():
        task.exception()

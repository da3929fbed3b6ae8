"""Suite ``hostile_drills`` (drill 9): a wait against a server that misbehaves, for each way it can.

For each fault of ``batch_ops.server.hostile`` (an HTML page with 200, JSON cut off, a status the
client has never heard of, a redirect to another origin, silence, a body trickling a byte every
half second, an error message repeating the key) the sync and the async client wait for a batch
with a 3 s deadline. The table shows what each raised, how many seconds after the deadline it
returned (at most 2), and that the key appeared in no exception, no log line, and no request to
another origin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from drills._common import Drill

__all__ = ["run"]

KEY = "sk-drill-HOSTILE-CANARY-91c2e7"
DEADLINE = 3.0
MODES = ("html", "truncated", "unknown_status", "redirect", "silent", "trickle", "echo_key")


def run(names: list[str], work: Path) -> list[Drill]:
    results = []
    for name in names:
        print(f"-- {name}", flush=True)
        results.append(Drill(name, "waits against a hostile server").run(hostile_wire))
    return results


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _wait_sync(url: str) -> BaseException | Any:
    from batch_ops import BatchClient

    try:
        with BatchClient(api_key=KEY, base_url=url) as client:
            return client.batches.wait("batch_1", poll_interval=0.5, timeout=DEADLINE)
    except Exception as exc:
        return exc


def _wait_async(url: str) -> BaseException | Any:
    from batch_ops import AsyncBatchClient

    async def wait() -> Any:
        async with AsyncBatchClient(api_key=KEY, base_url=url) as client:
            return await client.batches.wait("batch_1", poll_interval=0.5, timeout=DEADLINE)

    try:
        return asyncio.run(wait())
    except Exception as exc:
        return exc


def hostile_wire(d: Drill) -> None:
    from batch_ops import BatchOpsError
    from batch_ops.server.hostile import serve_hostile

    capture = _Capture()
    logging.getLogger("batch_ops").addHandler(capture)
    logging.getLogger("batch_ops").setLevel(logging.DEBUG)
    try:
        for mode in MODES:
            cells = []
            for label, wait in (("sync", _wait_sync), ("async", _wait_async)):
                capture.lines.clear()
                with serve_hostile(mode, trickle_interval=0.5) as hostile:
                    started = time.monotonic()
                    outcome = wait(hostile.url)
                    took = time.monotonic() - started
                    elsewhere = list(hostile.seen_elsewhere)
                kind = type(outcome).__name__
                late = max(0.0, took - DEADLINE)
                text = f"{outcome!s} {outcome!r} " + " ".join(capture.lines)
                d.check(isinstance(outcome, BatchOpsError),
                        f"{mode}/{label}: the wait ends with a BatchOpsError (got {kind}: {str(outcome)[:120]})")
                d.check(late <= 2.0, f"{mode}/{label}: ended {late:.1f} s after its deadline")
                d.check(KEY not in text, f"{mode}/{label}: the key appears in no exception or log line")
                if mode == "redirect":
                    leaked = [h for _m, _p, h in elsewhere if "authorization" in h or "api-key" in h]
                    d.check(bool(elsewhere) and not leaked,
                            f"{mode}/{label}: the redirect was followed without the key ({len(elsewhere)} calls)")
                cells.append(f"{label} {kind} +{late:.1f} s")
            d.figure(mode, ", ".join(cells) + "; key hidden")
    finally:
        logging.getLogger("batch_ops").removeHandler(capture)

"""The background worker that moves batches through their lifecycle.

``validating`` (the shared ``batch_ops.jsonl.check_file`` rules) → ``failed`` with ``errors`` or
``in_progress`` → chunks of requests answered by the engine, the partial output and error files
fsynced and the checkpoint committed after each chunk → ``finalizing`` → ``completed``.
``cancelling`` → ``cancelled`` and deadline → ``expired`` keep the finished work and write one
``batch_cancelled`` / ``batch_expired`` line per request not run, so no request is ever dropped.

At most ``max_running`` batches are processed at once; the others wait as ``validating``, as the
real API queues them, and start in creation order as running ones end. A batch that must end (a
cancel, or a deadline passed while it waited) never waits for a place: ending it is short, and a
cancel must not queue behind hour-long batches. A running batch holds no file open between its
chunks: each chunk opens the input, reads its lines and closes it, then appends its answers to the
partial output and error files and closes them (before, three files per running batch stayed open
for its whole run, and 500 running batches under a 1,024 file limit failed 164 of them).

Durability: the partial files live at their final ``files/<file id>`` path but are only published
(a ``files`` row) when the batch ends. A restarted server truncates them to the last checkpoint
and carries on from the checkpoint's input offset, so a ``kill -9`` loses and repeats nothing.
Every random choice (which requests fail, the order within a chunk) is derived from the seed, the
batch ordinal and the request index, so a resumed run makes the same choices.

Examples:
    >>> chance(7, "1", 0) == chance(7, "1", 0), 0 <= chance(7, "1", 1) < 1
    (True, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batch_ops.jsonl import MAX_LINE_BYTES, OPENAI_LINES, check_file, read_lines
from batch_ops.server.engines import Answer, Engine, api_error_body, usage_of
from batch_ops.server.options import ServerOptions
from batch_ops.server.store import ACTIVE_STATUSES, BatchRow, Store, new_id
from batch_ops.server.structured import InvalidAnswers, wanted
from batch_ops.server.together import TOGETHER_LINES

__all__ = ["FAST_CHUNK", "Processor", "chance"]

log = logging.getLogger(__name__)

#: Requests per chunk when the engine answers without I/O (one worker-thread call per chunk).
FAST_CHUNK = 2000
_BOM = b"\xef\xbb\xbf"
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def chance(seed: int, batch_key: str, index: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, batch, request index): repeatable across restarts."""
    digest = hashlib.blake2b(f"{seed}:{batch_key}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _error(code: str, message: str, *, line: int | None = None, param: str | None = None) -> dict[str, Any]:
    """One entry of a failed batch's ``errors.data``."""
    return {"code": code, "line": line, "param": param, "message": message}


def _failure(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"failed_at": int(time.time()), "errors": {"object": "list", "data": errors}}


def _server_error_reply() -> Answer:
    return Answer(
        500,
        api_error_body(
            "The server had an error processing your request (injected by --fail-requests). Retry the request.",
            type="server_error",
            code="server_error",
        ),
    )


def _result_line(custom_id: Any, reply: Answer) -> str:
    response = None
    if reply.status_code is not None:
        response = {"status_code": reply.status_code, "request_id": "req_" + os.urandom(16).hex(), "body": reply.body}
    return (
        json.dumps(
            {
                "id": "batch_req_" + os.urandom(16).hex(),
                "custom_id": custom_id,
                "response": response,
                "error": reply.error,
            }
        )
        + "\n"
    )


class _Run:
    """One batch being processed: where its input stands, and its partial files truncated to the checkpoint.

    No file stays open: :meth:`read_chunk` and :func:`_append` open, use and close theirs, so a
    batch waiting for its requests' answers costs no file descriptor.
    """

    def __init__(self, store: Store, row: BatchRow) -> None:
        assert row.out_id is not None and row.err_id is not None
        self.id = row.id
        # Random choices are keyed by the batch's ordinal in this data dir, not its random id, so
        # the same seed and the same sequence of batches repeat the same faults and order.
        self.key = f"{row.seq}"
        self.deadline = row.deadline
        self.out_id, self.err_id = row.out_id, row.err_id
        self.total = row.total
        self.next_index, self.next_offset = row.next_index, row.next_offset
        self.out_bytes, self.err_bytes = row.out_bytes, row.err_bytes
        self.completed, self.failed = row.completed, row.failed
        self.usage = list(row.usage)
        self.input = store.file_path(row.input_file_id)
        self.endpoint = row.endpoint
        self.out = _partial(store.file_path(row.out_id), row.out_bytes)
        self.err = _partial(store.file_path(row.err_id), row.err_bytes)

    @property
    def done(self) -> bool:
        return self.next_index >= self.total

    def read_chunk(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` of the requests not run yet, with their indexes (the caller advances).

        Never past ``total`` and never empty while the batch is not done: files are written once,
        atomically, so a short file means a hand-edited data dir, and failing the batch beats
        waiting for ever on a line that will not come.
        """
        lines: list[tuple[int, bytes]] = []
        index = self.next_index
        wanted = min(limit, self.total - self.next_index)
        if wanted <= 0:
            return lines
        with open(self.input, "rb") as fh:
            fh.seek(self.next_offset)
            for raw in read_lines(fh, limit=MAX_LINE_BYTES):
                if raw is None:  # validation measured every line: only a file changed since gets here
                    raise RuntimeError(f"line {index + 1} of the input file is over {MAX_LINE_BYTES:,} bytes")
                lines.append((index, raw))
                index += 1
                if len(lines) == wanted:
                    return lines
        raise RuntimeError(f"the input file ended after {index} of {self.total} requests")


def _partial(path: Path, size: int) -> Path:
    """Create ``path`` if missing and drop whatever was written after the last checkpoint."""
    with open(path, "ab") as fh:
        fh.truncate(size)
    return path


class Processor:
    """Runs every active batch as its own task; resumes them all when the server starts.

    Examples:
        >>> import tempfile
        >>> from batch_ops.server.engines import EchoEngine
        >>> p = Processor(store=Store(tempfile.mkdtemp()), engine=EchoEngine(), options=ServerOptions())
        >>> p.running
        []
    """

    def __init__(self, *, store: Store, engine: Engine, options: ServerOptions) -> None:
        self.store = store
        self.engine = engine
        self.options = options
        self.seed = options.seed if options.seed is not None else random.getrandbits(63)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Batches holding one of the ``max_running`` places (not those only being ended).
        self._holding: set[str] = set()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        #: The ``--invalid-share`` fault: structured answers spoiled on purpose (``server.structured``).
        self.invalid = InvalidAnswers(share=options.invalid_share, kind=options.invalid_kind,
                                      rounds=options.invalid_rounds, seed=self.seed)

    @property
    def running(self) -> list[str]:
        return sorted(self._tasks)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.options.concurrency)
        self._supervisor = asyncio.create_task(self._supervise(), name="batch-supervisor")

    async def stop(self, *, grace: float = 3.0) -> None:
        """Let each batch finish its current chunk (so its checkpoint lands), then stop."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()  # a crash-equivalent: the next start resumes from the checkpoint
        await asyncio.gather(*(t for t in (self._supervisor, *tasks) if t is not None), return_exceptions=True)
        await self.engine.aclose()

    def wake(self) -> None:
        """Look for new work now (a batch was created or cancelled)."""
        if self._wake is not None:
            self._wake.set()

    async def _supervise(self) -> None:
        assert self._wake is not None
        while True:
            self._start_what_may_run()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()

    def _start_what_may_run(self) -> None:
        """Start a task for each active batch that may run now; the rest keep waiting (see the module docstring)."""
        now = time.time()
        for batch_id, status, deadline in self.store.active_batches():
            if batch_id in self._tasks:
                continue
            ending = status == "cancelling" or deadline <= now
            if not ending and len(self._holding) >= self.options.max_running:
                continue  # queued: it stays as it is until a running batch ends
            task = asyncio.create_task(self._guarded(batch_id), name=f"batch-{batch_id}")
            self._tasks[batch_id] = task
            if not ending:
                self._holding.add(batch_id)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        ended = [b for b, t in self._tasks.items() if t is task]
        for batch_id in ended:
            del self._tasks[batch_id]
            self._holding.discard(batch_id)
        self.wake()  # a place is free: start the next batch now, not at the next tick

    async def _guarded(self, batch_id: str) -> None:
        try:
            await self._run(batch_id)
        except Exception as exc:
            # A bug or a vanished file must not leave a batch active for ever: fail it, visibly.
            log.exception("batch %s failed inside the server", batch_id)
            self.store.transition(
                batch_id,
                expect=ACTIVE_STATUSES,
                status="failed",
                fields=_failure(
                    [
                        _error(
                            "server_error", f"The local server could not process the batch: {type(exc).__name__}: {exc}"
                        )
                    ]
                ),
            )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def _run(self, batch_id: str) -> None:
        row = self.store.load(batch_id)
        # No output file reserved yet: still validating (or cancelled while validating, then the
        # server died): validate first, so the cancel can account for every request.
        if row.out_id is None and not await self._validate(row):
            return
        while True:
            run = _Run(self.store, self.store.load(batch_id))
            if await self._drive(run):
                return

    async def _drive(self, run: _Run) -> bool:
        """Process until the batch ends; False when a status race means: reload and go again."""
        while True:
            if self._stopping:
                return True
            status = self.store.status(run.id)
            if status == "cancelling":
                return await self._end(run, "cancelled", "batch_cancelled", _CANCELLED_MESSAGE)
            if status == "finalizing":
                return await self._publish(run, expect="finalizing", status="completed", stamp="completed_at")
            if status != "in_progress":
                return True
            if time.time() >= run.deadline:
                return await self._end(run, "expired", "batch_expired", _EXPIRED_MESSAGE)
            if run.done:
                self.store.transition(
                    run.id, expect=("in_progress",), status="finalizing", fields={"finalizing_at": int(time.time())}
                )
                continue  # a cancel may have won the race: read the status again
            if self.engine.has_fast_path and not self.options.request_latency:
                await asyncio.to_thread(self._fast_chunk, run)
            else:
                await self._async_chunk(run)

    async def _validate(self, row: BatchRow) -> bool:
        """Check the input file; True when the batch moved on (``in_progress`` or ``cancelling``)."""
        path = self.store.file_path(row.input_file_id)
        checked = row.obj.get("request_total")
        if isinstance(checked, int):  # another wire's route checked every request at create (Anthropic's)
            lines, model = checked, None
        else:
            try:
                # Lines as the wire's vendor writes them (Together's: no method or url).
                shape = TOGETHER_LINES if self.options.wire == "together" else OPENAI_LINES
                report, problems = await asyncio.to_thread(check_file, path, endpoint=row.endpoint, azure=True,
                                                           shape=shape)
            except OSError as exc:
                message = f"The input file {row.input_file_id} could not be read: {exc.strerror}."
                self._fail(row.id, [_error("file_not_found", message, param="input_file_id")])
                return False
            if problems:
                self._fail(row.id, [_error(p.rule, p.message, line=p.line, param=p.param) for p in problems])
                return False
            lines, model = report.lines, report.model
        limit = self.options.token_limit_failures
        if limit and self.store.take_token_limit_failure(limit):
            message = (
                f"Enqueued token limit reached for {model or 'the model'} in organization org-local. "
                "Limit: 90,000 enqueued tokens. Please try again once some in_progress batches have been completed."
            )
            self._fail(row.id, [_error("token_limit_exceeded", message)])
            return False
        columns = {"total": lines, "out_id": new_id("file-"), "err_id": new_id("file-")}
        fields = {"in_progress_at": int(time.time()), "model": model}
        if self.store.transition(row.id, expect=("validating",), status="in_progress", fields=fields, columns=columns):
            return True
        # Cancelled while validating: keep the status, but record what the cancel must account for.
        return self.store.transition(row.id, expect=("cancelling",), status="cancelling", columns=columns)

    def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        self.store.transition(batch_id, expect=("validating", "cancelling"), status="failed", fields=_failure(errors))

    async def _end(self, run: _Run, status: str, code: str, message: str) -> bool:
        """Cancel or expire: keep what finished, one error line per request not run, then publish."""
        if status == "cancelled":
            requested = self.store.load(run.id).cancel_requested_at or time.time()
            # Real cancels take a while; keep ``cancelling`` observable for at least one poll.
            await asyncio.sleep(max(0.0, requested + self.options.cancel_delay - time.time()))
        await asyncio.to_thread(self._drain, run, code, message)
        expect = "cancelling" if status == "cancelled" else "in_progress"
        return await self._publish(run, expect=expect, status=status, stamp=f"{status}_at")

    async def _publish(self, run: _Run, *, expect: str, status: str, stamp: str) -> bool:
        """End the batch: publish the files that hold lines and set the final status, atomically."""
        now = int(time.time())
        row = self.store.load(run.id)
        expires_at = None
        oea = row.obj.get("output_expires_after")
        if isinstance(oea, dict) and isinstance(oea.get("seconds"), int):
            expires_at = int(row.obj["created_at"]) + oea["seconds"]
        files = []
        fields: dict[str, Any] = {stamp: now, "output_file_id": None, "error_file_id": None}
        for file_id, size, kind, field in (
            (run.out_id, run.out_bytes, "output", "output_file_id"),
            (run.err_id, run.err_bytes, "error", "error_file_id"),
        ):
            if size:
                fields[field] = file_id
                files.append(
                    {
                        "id": file_id,
                        "bytes": size,
                        "created_at": now,
                        "filename": f"{run.id}_{kind}.jsonl",
                        "purpose": "batch_output",
                        "expires_at": expires_at,
                    }
                )
        columns = {
            "next_index": run.next_index,
            "next_offset": run.next_offset,
            "out_bytes": run.out_bytes,
            "err_bytes": run.err_bytes,
            "completed": run.completed,
            "failed": run.failed,
            "usage": run.usage,
        }
        if not self.store.transition(
            run.id, expect=(expect,), status=status, fields=fields, columns=columns, add_files=tuple(files)
        ):
            return False  # the status changed under us (a cancel raced an expiry): start over
        for file_id, size in ((run.out_id, run.out_bytes), (run.err_id, run.err_bytes)):
            if not size:
                self.store.file_path(file_id).unlink(missing_ok=True)
        return True

    # ---- chunks ------------------------------------------------------------------------------

    def _prepare(self, run: _Run, index: int, raw: bytes) -> tuple[Any, dict[str, Any] | None, Answer | None]:
        """Parse one request line; decide up front when a fault fails it (no engine call then)."""
        request = _parse(index, raw)
        if request is None:  # validation passed, so only a file changed on disk gets here
            bad = api_error_body("The request line is not a JSON object.", code="invalid_json")
            return None, None, Answer(400, bad)
        custom_id = request.get("custom_id")
        if "url" not in request:
            request["url"] = run.endpoint  # a line without one (Together's) goes to the batch's endpoint
        rate = self.options.fail_requests
        if rate and chance(self.seed, run.key, index) < rate:
            return custom_id, None, _server_error_reply()
        return custom_id, request, None

    def _spoiled(self, custom_id: Any, request: Mapping[str, Any], reply: Answer) -> Answer:
        """``reply`` spoiled by the ``--invalid-share`` fault when it answers a structured request drawn for it."""
        body = request.get("body")
        if not (self.invalid.active and reply.ok and isinstance(reply.body, dict) and reply.body.get("choices")
                and isinstance(body, Mapping)):
            return reply
        want = wanted(body)
        if want is None:
            return reply
        return Answer(reply.status_code, self.invalid.spoil(custom_id, want, reply.body), reply.error)

    def _fast_chunk(self, run: _Run) -> None:
        """Read, answer and write one chunk in this (worker) thread: no I/O in the engine."""
        lines = run.read_chunk(FAST_CHUNK)
        answer = self.engine.answer_now
        results = []
        for index, raw in lines:
            custom_id, request, reply = self._prepare(run, index, raw)
            if reply is None:
                assert request is not None
                reply = answer(request) or Answer(500, api_error_body("engine gave no answer", type="server_error"))
                reply = self._spoiled(custom_id, request, reply)
            results.append((custom_id, reply))
        self._commit(run, lines, results)

    async def _async_chunk(self, run: _Run) -> None:
        """One chunk of requests answered concurrently (upstream engine, or simulated request latency)."""
        assert self._slots is not None
        slots, latency = self._slots, self.options.request_latency
        lines = await asyncio.to_thread(run.read_chunk, 2 * self.options.concurrency)

        async def one(index: int, raw: bytes) -> tuple[Any, Answer]:
            custom_id, request, reply = self._prepare(run, index, raw)
            if reply is not None:
                return custom_id, reply
            assert request is not None
            async with slots:
                if latency:
                    await asyncio.sleep(latency)
                reply = self.engine.answer_now(request) or await self.engine.answer(request)
                return custom_id, self._spoiled(custom_id, request, reply)

        results = await asyncio.gather(*(one(i, raw) for i, raw in lines))
        await asyncio.to_thread(self._commit, run, lines, results)

    def _commit(self, run: _Run, lines: list[tuple[int, bytes]], results: list[tuple[Any, Answer]]) -> None:
        """Append a chunk's lines (shuffled: output order is not input order), fsync, checkpoint."""
        if not lines:
            return
        out: list[str] = []
        err: list[str] = []
        usage = run.usage
        for custom_id, reply in results:
            if reply.ok:
                run.completed += 1
                out.append(_result_line(custom_id, reply))
            else:
                run.failed += 1
                err.append(_result_line(custom_id, reply))
            found = usage_of(reply.body) if reply.status_code is not None else None
            if found is not None:
                for k in range(5):
                    usage[k] += found[k]
        start = lines[0][0]
        rng = random.Random(f"{self.seed}:{run.key}:{start}")
        rng.shuffle(out)
        rng.shuffle(err)
        run.out_bytes += _append(run.out, out)
        run.err_bytes += _append(run.err, err)
        run.next_index = lines[-1][0] + 1
        run.next_offset += sum(len(raw) for _, raw in lines)
        self._checkpoint(run)

    def _drain(self, run: _Run, code: str, message: str) -> None:
        """Write an error line for every request not run yet (the batch was cancelled or expired)."""
        error = {"code": code, "message": message}
        while not run.done:
            lines = run.read_chunk(FAST_CHUNK)
            err = []
            for index, raw in lines:
                request = _parse(index, raw)
                custom_id = request.get("custom_id") if request is not None else None
                err.append(_result_line(custom_id, Answer(None, None, error)))
            run.failed += len(err)
            run.err_bytes += _append(run.err, err)
            run.next_index = lines[-1][0] + 1
            run.next_offset += sum(len(raw) for _, raw in lines)

    def _checkpoint(self, run: _Run) -> None:
        self.store.checkpoint(
            run.id,
            next_index=run.next_index,
            next_offset=run.next_offset,
            out_bytes=run.out_bytes,
            err_bytes=run.err_bytes,
            completed=run.completed,
            failed=run.failed,
            usage=(run.usage[0], run.usage[1], run.usage[2], run.usage[3], run.usage[4]),
        )


def _parse(index: int, raw: bytes) -> dict[str, Any] | None:
    """One input line as a dict (a UTF-8 BOM before the first line is allowed), or None."""
    if index == 0 and raw.startswith(_BOM):
        raw = raw[3:]
    try:
        request = json.loads(raw)
    except ValueError:
        return None
    return request if isinstance(request, dict) else None


def _append(path: Path, lines: list[str]) -> int:
    """Append lines durably (flush + fsync before the checkpoint that counts them); bytes written.

    The file is opened for this chunk only: between chunks a running batch holds no descriptor.
    """
    if not lines:
        return 0
    data = "".join(lines).encode()
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data)

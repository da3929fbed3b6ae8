"""Durable state of the local server: SQLite (WAL) for files and batches, contents under ``data_dir/files``.

A batch row keeps the public object (``obj`` JSON) next to its processing checkpoint: the next
input line and byte offset, the sizes of the partial output and error files, the counts and the
usage. The processor writes the checkpoint only after the partial files are fsynced, so after a
crash (even ``kill -9``) it truncates them to the checkpoint and carries on: no line is lost or
written twice.

Every method takes one lock and runs one short statement or transaction, so the event loop may
call them directly and the processor's worker threads may too.

Examples:
    >>> import tempfile
    >>> store = Store(tempfile.mkdtemp())
    >>> f = store.add_file(file_id="file-1", size=10, filename="in.jsonl", purpose="batch")
    >>> b = store.create_batch(input_file_id=f["id"], endpoint="/v1/embeddings", window_seconds=86400.0)
    >>> b["status"], b["request_counts"], store.active_batch_ids() == [b["id"]]
    ('validating', {'total': 0, 'completed': 0, 'failed': 0}, True)
    >>> store.close()
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_ops.models import Batch

__all__ = ["ACTIVE_STATUSES", "WEBHOOK_EVENTS", "BatchRow", "OutboxRow", "Store", "Usage5", "new_id", "usage_json"]

#: Statuses the processor still has work for (resumed after a restart).
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")

#: Usage as five counters: input, cached input, output, reasoning output, total.
Usage5 = tuple[int, int, int, int, int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    obj TEXT NOT NULL,
    deadline REAL NOT NULL,
    cancel_requested_at REAL,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    usage TEXT NOT NULL DEFAULT '[0, 0, 0, 0, 0]',
    next_index INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    out_bytes INTEGER NOT NULL DEFAULT 0,
    err_bytes INTEGER NOT NULL DEFAULT 0,
    out_id TEXT,
    err_id TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, dropped, abandoned
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (state, next_at);
"""

#: The statuses a batch ends in, and the webhook event each one sends.
WEBHOOK_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}

#: A batch's fields, in the order the server sends them: the model's (a field added there is sent too).
_BATCH_FIELDS = tuple(Batch.model_fields)


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A fresh random id such as ``file-3f2a…`` or ``batch_9c1e…``."""
    return prefix + secrets.token_hex(nbytes)


def usage_json(usage: Usage5) -> dict[str, Any]:
    """The wire form of a batch ``usage``."""
    inp, cached, out, reasoning, total = usage
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": total,
    }


@dataclass(frozen=True)
class BatchRow:
    """A batch as the processor sees it: status, public fields and checkpoint."""

    id: str
    seq: int
    status: str
    obj: dict[str, Any]
    deadline: float
    cancel_requested_at: float | None
    total: int
    completed: int
    failed: int
    usage: Usage5
    next_index: int
    next_offset: int
    out_bytes: int
    err_bytes: int
    out_id: str | None
    err_id: str | None

    @property
    def endpoint(self) -> str:
        return str(self.obj["endpoint"])

    @property
    def input_file_id(self) -> str:
        return str(self.obj["input_file_id"])


@dataclass(frozen=True)
class OutboxRow:
    """One webhook event for one endpoint, waiting to be delivered."""

    seq: int
    event_id: str
    url: str
    body: str
    created: float
    attempts: int


class Store:
    """SQLite metadata plus file contents under ``data_dir``.

    With ``webhook_urls``, the transaction that ends a batch also writes one webhook event per
    endpoint to the outbox, so an event is never lost between the two (not even by ``kill -9``).

    Examples:
        >>> import tempfile
        >>> s = Store(tempfile.mkdtemp())
        >>> s.get_batch("batch_missing") is None
        True
        >>> s.close()
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, webhook_urls: tuple[str, ...] = ()) -> None:
        self.root = Path(data_dir)
        self.webhook_urls = tuple(webhook_urls)
        #: Wires that write a batch's ending event otherwise than OpenAI (Gemini): each is asked
        #: ``(event id, OpenAI event type, batch id, now)`` and answers the body, or None (not its batch).
        self.event_renderers: list[Callable[[str, str, str, float], str | None]] = []
        self.files_dir = self.root / "files"
        self.work_dir = self.root / "work"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "state.sqlite3", check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        # WAL keeps readers (HTTP routes) from blocking on the processor's checkpoints; NORMAL
        # sync survives a killed process (the OS still holds the pages), which is what we promise.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- files -------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        """Where a file's content lives (whether or not it exists yet)."""
        return self.files_dir / file_id

    def add_file(
        self,
        *,
        file_id: str,
        size: int,
        filename: str,
        purpose: str,
        created_at: int | None = None,
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        """Record a file whose content is already at ``file_path(file_id)``."""
        created = int(time.time()) if created_at is None else created_at
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO files (id, bytes, created_at, filename, purpose, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, size, created, filename, purpose, expires_at),
            )
        found = self.get_file(file_id)
        assert found is not None
        return found

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return _file_json(row) if row is not None else None

    def list_files(
        self, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of files; None when the ``after`` cursor names no file."""
        desc = order == "desc"
        where, args = [], []
        with self._lock:
            if after is not None:
                cursor = self._db.execute("SELECT seq FROM files WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    return None
                where.append("seq < ?" if desc else "seq > ?")
                args.append(cursor["seq"])
            if purpose is not None:
                where.append("purpose = ?")
                args.append(purpose)
            sql = "SELECT * FROM files" + (" WHERE " + " AND ".join(where) if where else "")
            sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?"
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        return [_file_json(r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> bool:
        with self._lock, self._db:
            gone = self._db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0
        if gone:
            # An open reader (a download, a running batch) keeps its handle: POSIX unlink semantics.
            self.file_path(file_id).unlink(missing_ok=True)
        return gone

    # ---- batches: API side ---------------------------------------------------------------------

    def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        window_seconds: float,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after: dict[str, Any] | None = None,
        batch_id: str | None = None,
        id_prefix: str = "batch_",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new batch, ``validating``. ``id_prefix``/``extra``: another wire's batch (Anthropic's
        ``msgbatch_``) whose route already checked its requests (``extra["request_total"]``)."""
        now = time.time()
        # A wire with ids of its own (Together: UUIDs) gives one; another names its prefix (Anthropic: msgbatch_).
        batch_id = batch_id or new_id(id_prefix, 16)
        # What a new batch knows; every other field of Batch is null until the processor sets it
        # (_batch_json sends them all, from the model's list).
        obj: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "created_at": int(now),
            "expires_at": int(now + window_seconds),
            "metadata": metadata,
        }
        if output_expires_after is not None:
            obj["output_expires_after"] = output_expires_after
        obj.update(extra or {})
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO batches (id, status, obj, deadline) VALUES (?, 'validating', ?, ?)",
                (batch_id, json.dumps(obj), now + window_seconds),
            )
        found = self.get_batch(batch_id)
        assert found is not None
        return found

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return _batch_json(row) if row is not None else None

    #: Id prefixes of the batches other wires made (Anthropic's, Gemini's): never in OpenAI's list.
    OTHER_WIRES = ("msgbatch_", "gbatch_")

    def list_batches(self, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool] | None:
        """The OpenAI-shaped wire's batches (``batch_…``, or a wire's own ids such as Together's UUIDs),
        newest first; None when the ``after`` cursor names no batch."""
        return self.page_batches(prefix=None, exclude=self.OTHER_WIRES, after=after, before=None, limit=limit)

    def page_batches(
        self, *, prefix: str | None, after: str | None, before: str | None, limit: int,
        exclude: tuple[str, ...] = (),
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of the batches whose id starts with ``prefix`` (one wire's) and with none of
        ``exclude``, newest first: those older than ``after``, or the ``limit`` newer ones nearest
        ``before``; None when a cursor names no batch. ``has_more``: more in the direction of the cursor."""
        clauses: list[str] = []
        args: list[Any] = []
        for value, op in ((prefix, "="), *((other, "!=") for other in exclude)):
            if value is not None:
                clauses.append(f"substr(id, 1, ?) {op} ?")
                args += [len(value), value]
        where, order = " AND ".join(clauses) or "1", "DESC"
        with self._lock:
            for cursor_id, op in ((after, "<"), (before, ">")):
                if cursor_id is None:
                    continue
                cursor = self._db.execute("SELECT seq FROM batches WHERE id = ?", (cursor_id,)).fetchone()
                if cursor is None:
                    return None
                where += f" AND seq {op} ?"
                args.append(cursor["seq"])
                if op == ">":
                    order = "ASC"  # the nearest newer ones first, turned newest first below
            rows = self._db.execute(f"SELECT * FROM batches WHERE {where} ORDER BY seq {order} LIMIT ?",
                                    (*args, limit + 1)).fetchall()
        page = rows[:limit]
        if order == "ASC":
            page.reverse()
        return [_batch_json(r) for r in page], len(rows) > limit

    def delete_batch(self, batch_id: str) -> None:
        """Forget a batch that has ended, and remove its input and result files."""
        with self._lock, self._db:
            row = self._db.execute("SELECT obj, out_id, err_id FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            ids = [json.loads(row["obj"]).get("input_file_id"), row["out_id"], row["err_id"]]
            self._db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in ids if i])
        for file_id in ids:
            if file_id:
                self.file_path(file_id).unlink(missing_ok=True)

    def request_cancel(self, batch_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """Move a running batch to ``cancelling``; return (batch, None) or (batch|None, refusal)."""
        with self._lock, self._db:
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                return None, None
            status = row["status"]
            if status in ("cancelling", "cancelled"):
                return _batch_json(row), None  # cancelling twice is harmless: answer with the batch
            if status not in ("validating", "in_progress"):
                return _batch_json(row), f"Cannot cancel a batch with status '{status}'."
            now = time.time()
            obj = json.loads(row["obj"])
            obj["cancelling_at"] = int(now)
            self._db.execute(
                "UPDATE batches SET status = 'cancelling', obj = ?, cancel_requested_at = ? WHERE id = ?",
                (json.dumps(obj), now, batch_id),
            )
        return self.get_batch(batch_id), None

    # ---- batches: processor side ---------------------------------------------------------------

    def active_batch_ids(self) -> list[str]:
        return [batch_id for batch_id, _status, _deadline in self.active_batches()]

    def active_batches(self) -> list[tuple[str, str, float]]:
        """``(id, status, deadline)`` of every batch with work left: those already started first
        (resumed after a restart), then the queued ones, oldest first."""
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, status, deadline FROM batches WHERE status IN ({marks}) "
                "ORDER BY out_id IS NULL, seq", ACTIVE_STATUSES
            ).fetchall()
        return [(r["id"], r["status"], r["deadline"]) for r in rows]

    def load(self, batch_id: str) -> BatchRow:
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            raise KeyError(batch_id)
        return BatchRow(
            id=row["id"],
            seq=row["seq"],
            status=row["status"],
            obj=json.loads(row["obj"]),
            deadline=row["deadline"],
            cancel_requested_at=row["cancel_requested_at"],
            total=row["total"],
            completed=row["completed"],
            failed=row["failed"],
            usage=tuple(json.loads(row["usage"])),  # type: ignore[arg-type]
            next_index=row["next_index"],
            next_offset=row["next_offset"],
            out_bytes=row["out_bytes"],
            err_bytes=row["err_bytes"],
            out_id=row["out_id"],
            err_id=row["err_id"],
        )

    def status(self, batch_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return str(row["status"]) if row is not None else "missing"

    def transition(
        self,
        batch_id: str,
        *,
        expect: tuple[str, ...],
        status: str,
        fields: dict[str, Any] | None = None,
        columns: dict[str, Any] | None = None,
        add_files: tuple[dict[str, Any], ...] = (),
    ) -> bool:
        """Compare-and-set the status: only from one of ``expect``, so a cancel that raced in wins.

        ``fields`` update the public object, ``columns`` the checkpoint, ``add_files`` publishes
        output files, all in the same transaction.
        """
        marks = ",".join("?" * len(expect))
        with self._lock, self._db:
            row = self._db.execute(
                f"SELECT obj FROM batches WHERE id = ? AND status IN ({marks})", (batch_id, *expect)
            ).fetchone()
            if row is None:
                return False
            obj = json.loads(row["obj"])
            obj.update(fields or {})
            cols = dict(columns or {})
            if "usage" in cols:
                cols["usage"] = json.dumps(list(cols["usage"]))
            sets = "".join(f", {name} = ?" for name in cols)
            self._db.execute(
                f"UPDATE batches SET status = ?, obj = ?{sets} WHERE id = ?",
                (status, json.dumps(obj), *cols.values(), batch_id),
            )
            if status in WEBHOOK_EVENTS and self.webhook_urls:
                self._enqueue_event(WEBHOOK_EVENTS[status], batch_id)
            for f in add_files:
                self._db.execute(
                    "INSERT OR IGNORE INTO files (id, bytes, created_at, filename, purpose, expires_at) "
                    "VALUES (:id, :bytes, :created_at, :filename, :purpose, :expires_at)",
                    f,
                )
        return True

    def _enqueue_event(self, kind: str, batch_id: str) -> None:
        # OpenAI's body: the event names the batch; the receiver retrieves it for the details.
        now = time.time()
        event_id = new_id("evt_")
        body = next((b for render in self.event_renderers if (b := render(event_id, kind, batch_id, now)) is not None),
                    None) or json.dumps({"id": event_id, "object": "event", "created_at": int(now), "type": kind,
                                         "data": {"id": batch_id}}, separators=(",", ":"))
        self._db.executemany(
            "INSERT INTO webhook_outbox (event_id, url, body, created, next_at) VALUES (?, ?, ?, ?, ?)",
            [(event_id, url, body, now, now) for url in self.webhook_urls],
        )

    def due_webhooks(self, *, now: float, limit: int = 64) -> list[OutboxRow]:
        """Pending deliveries whose time has come, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event_id, url, body, created, attempts FROM webhook_outbox "
                "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, seq LIMIT ?", (now, limit)
            ).fetchall()
        return [OutboxRow(**dict(r)) for r in rows]

    def next_webhook_at(self) -> float | None:
        """When the next pending delivery is due (None: nothing pending)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM webhook_outbox WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def settle_webhook(self, seq: int, *, state: str, error: str | None = None, next_at: float | None = None) -> None:
        """Record an attempt: ``delivered``, ``dropped``, ``abandoned``, or ``pending`` again at ``next_at``."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE webhook_outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
                "next_at = COALESCE(?, next_at) WHERE seq = ?", (state, error, next_at, seq)
            )

    def webhook_counts(self) -> dict[str, int]:
        """Deliveries by state (``pending``, ``delivered``, ``dropped``, ``abandoned``)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def checkpoint(
        self,
        batch_id: str,
        *,
        next_index: int,
        next_offset: int,
        out_bytes: int,
        err_bytes: int,
        completed: int,
        failed: int,
        usage: Usage5,
    ) -> None:
        """Record progress; the partial files must already be fsynced up to these sizes."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE batches SET next_index = ?, next_offset = ?, out_bytes = ?, err_bytes = ?, "
                "completed = ?, failed = ?, usage = ? WHERE id = ?",
                (next_index, next_offset, out_bytes, err_bytes, completed, failed, json.dumps(list(usage)), batch_id),
            )

    def take_token_limit_failure(self, limit: int) -> bool:
        """True for each of the first ``limit`` calls over the life of this data dir."""
        return self.take_fault("token_limit_failures", limit)

    def take_fault(self, name: str, limit: int) -> bool:
        """True for each of the first ``limit`` calls with this fault ``name`` over the life of this data dir."""
        with self._lock, self._db:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
            used = row["value"] if row is not None else 0
            if used >= limit:
                return False
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (name, used + 1),
            )
        return True


def _file_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": row["expires_at"],
    }


def _batch_json(row: sqlite3.Row) -> dict[str, Any]:
    obj = json.loads(row["obj"])
    obj["status"] = row["status"]
    obj["request_counts"] = {"total": row["total"], "completed": row["completed"], "failed": row["failed"]}
    obj["usage"] = usage_json(tuple(json.loads(row["usage"])))  # type: ignore[arg-type]
    ordered = {k: obj.get(k) for k in _BATCH_FIELDS}
    ordered.update({k: v for k, v in obj.items() if k not in ordered})
    return ordered

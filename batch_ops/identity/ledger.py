"""The key ledger: where key → batch is kept for a batch API whose batches cannot carry our key.

OpenAI's and Azure's batches carry our idempotency key in their ``metadata``, so any try on any
machine finds a key's batches by listing them. Anthropic's Message Batches have no field to carry
it. For such a dialect (``Dialect.carries_key`` False) the submit keeps the key's record here
instead, in a folder every try of the work can read (a local folder on one machine or a volume all
workers mount; ``s3://`` for workers anywhere): one small JSON file per key, written only while
holding that key's lease (:mod:`batch_ops.leases`: ``flock`` locally, conditional PUTs on S3).

The guarantee, and how it is kept (:mod:`batch_ops._submit` drives it):

1. **One try of a key at a time.** A submit takes the key's lease before it looks at the record
   and holds it until the batch it created is recorded. A second try of the same key (a retry
   while the first still runs, two processes at once) waits for the lease, then finds the batch
   in the record and attaches: one batch, never two.
2. **The intent is written before the create is sent** (the attempt, the number of requests it
   carries, the time), the batch id right after the answer.
3. **A create whose answer was lost** (the process was killed between sending the create and
   recording its id; the lease died with it) leaves an intent without an id. The next try looks
   among the batches created from the intent's time (less the clock skew) to the end of the
   create's retry budget, carrying exactly the intent's request count, and not recorded under any
   key of this ledger. Exactly one: that is the lost batch, recorded and attached. None: the
   create never landed, the intent is dropped and the attempt created. More than one: it cannot
   tell which, and refuses with the ids (nothing is created; cancel and delete the batch that is
   not this run's, then retry).

Owners: a batch of an API that keeps no metadata (Anthropic, Gemini, Together) cannot carry the
owner record the Airflow and Prefect adapters add for the orphan sweep. A keyed or unkeyed submit
with a ledger records it here instead, one small file per batch (``owners/``, written once, right
after the create: :meth:`KeyLedger.own`), and the sweep reads the record of each unfinished batch
whose metadata names no owner (:meth:`KeyLedger.owner`). A batch whose record was never written (a
crash between the create and the record) stays unowned: reported, never cancelled.

Identities: an Airflow deployment's identity is part of every key, and under a race of its first
tasks a try can use one that is then replaced (:mod:`batch_ops.identity`, *Deployments*). Where the
batches carry no owner record (Anthropic, Gemini, Together), nothing on the wire says which task
instance made a batch, so a keyed Airflow submit records here, per task instance, each identity it
creates under (``identities/``, :meth:`KeyLedger.mark_identity`); its next try under the new
identity asks the orchestrator about them and continues the chain of a proven one.

What it cannot promise: a record kept where the other tries cannot read it (a local folder with
workers on several machines) protects nothing across them; a batch of the same size created in
the same minutes by something that does not record it here (another tool, another ledger) makes
a lost create ambiguous (refused, never guessed); a store without conditional writes cannot hold
a lease (refused for keyed submits: ``memory://``, ``gs://``).

Examples:
    >>> import tempfile
    >>> ledger = KeyLedger(tempfile.mkdtemp())
    >>> ledger.intend("k", "k@f", carried=3, at=100.0)
    >>> ledger.entries("k")["k@f"].batch_id is None
    True
    >>> ledger.record("k", "k@f", "msgbatch_1", at=101.0)
    >>> ledger.entries("k")["k@f"].batch_id, ledger.claimed()
    ('msgbatch_1', {'msgbatch_1'})
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from batch_ops import storage
from batch_ops.errors import ConfigurationError, StorageError
from batch_ops.identity.keys import attempt_key, parse_attempt
from batch_ops.leases import DEFAULT_LEASE_TTL, Lease, lease_for

__all__ = ["DEFAULT_LEDGER", "KeyLedger", "LedgerEntry"]

#: Where the ledger is kept when the settings name no place: this machine only.
DEFAULT_LEDGER = "~/.batch_ops/key-ledger"


@dataclass(frozen=True)
class LedgerEntry:
    """One attempt of a key: when its create was about to be sent, what it carried, the batch it made."""

    attempt: str
    intent_at: float
    carried: int
    batch_id: str | None = None
    recorded_at: float | None = None
    host: str = ""
    pid: int = 0


class KeyLedger:
    """Records key → batch in ``where`` (a local folder or a URL); see the module docstring.

    Every method is blocking file work (a plan runs it as a ``Work`` effect). The record of a key is
    changed only while holding :meth:`lease`.
    """

    def __init__(self, where: storage.StorageTarget | None = None, *, ttl: float = DEFAULT_LEASE_TTL) -> None:
        if where is None or (isinstance(where, str) and not where.strip()):
            where = os.path.expanduser(DEFAULT_LEDGER)
        elif isinstance(where, str) and not storage.is_url(where):
            where = os.path.expanduser(where)
        self.where = where
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"KeyLedger({storage.display(self.where)!r})"

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"

    def _file(self, key: str) -> Any:
        return storage.join(self.where, self._name(key))

    def describe(self, key: str) -> str:
        """Where ``key``'s record is, for messages."""
        return storage.display(self._file(key))

    def lease(self, key: str) -> Lease:
        """The lease of ``key`` (``<record>.lease``); refused where it could not keep tries apart."""
        found = lease_for(self._file(key), ttl=self.ttl)
        if not found.exclusive:
            raise ConfigurationError(
                f"The key ledger {storage.display(self.where)} cannot hold a lease (no conditional writes), so two "
                "tries of one key could both create a batch. Fix: set the key ledger (ClientSettings.key_ledger, "
                "BATCH_OPS_KEY_LEDGER) to a local folder every worker mounts, or to an s3:// URL.")
        return found

    def _read(self, key: str) -> dict[str, Any]:
        text = storage.read_text(self._file(key))
        if not text:
            return {"key": key, "attempts": {}}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StorageError(f"The key ledger's record {storage.display(self._file(key))} is not JSON ({exc}); "
                               "fix: restore it from a backup, or remove it if no batch of that key exists") from None
        return data if isinstance(data, dict) else {"key": key, "attempts": {}}

    def _write(self, key: str, data: dict[str, Any]) -> None:
        _write_json(self._file(key), data)

    def _owner_file(self, batch_id: str) -> Any:
        return storage.join(self.where, "owners", self._name(batch_id))

    def own(self, batch_id: str, owner: Mapping[str, str]) -> None:
        """Record the owner record (the adapters' metadata pairs) of ``batch_id``, a batch that cannot carry it."""
        _write_json(self._owner_file(batch_id), {"batch_id": batch_id, "owner": dict(owner)})

    def owner(self, batch_id: str) -> dict[str, str] | None:
        """The owner record :meth:`own` kept for ``batch_id``, or None (none kept, or unreadable: unowned).

        Examples:
            >>> import tempfile
            >>> ledger = KeyLedger(tempfile.mkdtemp())
            >>> ledger.own("msgbatch_1", {"prefect_flow_run_id": "f1"})
            >>> ledger.owner("msgbatch_1"), ledger.owner("msgbatch_2")
            ({'prefect_flow_run_id': 'f1'}, None)
        """
        try:
            data = json.loads(storage.read_text(self._owner_file(batch_id)) or "null")
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("batch_id") != batch_id or not isinstance(data.get("owner"), dict):
            return None
        return {str(k): str(v) for k, v in data["owner"].items()}

    def entries(self, key: str) -> dict[str, LedgerEntry]:
        """Every recorded attempt of ``key``, by attempt key."""
        found = {}
        for attempt, raw in (self._read(key).get("attempts") or {}).items():
            if isinstance(raw, dict):
                fields = {k: raw[k] for k in LedgerEntry.__dataclass_fields__ if k in raw}
                found[attempt] = LedgerEntry(**{**fields, "attempt": attempt})
        return found

    def _put(self, key: str, entry: LedgerEntry | None, attempt: str) -> None:
        data = self._read(key)
        attempts = data.setdefault("attempts", {})
        if entry is None:
            attempts.pop(attempt, None)
        else:
            attempts[attempt] = asdict(entry)
        self._write(key, data)

    def intend(self, key: str, attempt: str, *, carried: int, at: float) -> None:
        """Write that ``attempt``'s create, carrying ``carried`` requests, is about to be sent (durably, first)."""
        self._put(key, LedgerEntry(attempt, at, carried, host=socket.gethostname(), pid=os.getpid()), attempt)

    def record(self, key: str, attempt: str, batch_id: str, *, at: float) -> None:
        """Write the batch ``attempt``'s create made."""
        entry = self.entries(key).get(attempt) or LedgerEntry(attempt, at, 0)
        self._put(key, LedgerEntry(entry.attempt, entry.intent_at, entry.carried, batch_id, at, entry.host,
                                   entry.pid), attempt)

    def forget(self, key: str, attempt: str) -> None:
        """Drop an intent whose create never landed."""
        self._put(key, None, attempt)

    def _identities_folder(self, task: str) -> Any:
        return storage.join(self.where, "identities", self._name(task).removesuffix(".json"))

    def mark_identity(self, task: str, identity: str, *, at: float) -> None:
        """Record that ``task`` (a task instance's key without its deployment) creates under ``identity``.

        Written before anything is created, one file per identity (written whole, never merged, so two
        tries need no lease between them): a later try of the task under another identity of its
        deployment finds these (:meth:`identities`), and takes the chain over when its orchestrator
        proves the identity its deployment's own (``_proven_ledger_plan`` and ``_proven_listed_plan`` in
        :mod:`batch_ops._submit`).
        """
        _write_json(storage.join(self._identities_folder(task), self._name(identity)),
                    {"task": task, "identity": identity, "at": at})

    def identities(self, task: str) -> list[str]:
        """The identities ``task`` created under (:meth:`mark_identity`), the latest first.

        Examples:
            >>> import tempfile
            >>> ledger = KeyLedger(tempfile.mkdtemp())
            >>> ledger.mark_identity("d.t.r.-1", "A", at=1.0); ledger.mark_identity("d.t.r.-1", "K", at=2.0)
            >>> ledger.identities("d.t.r.-1"), ledger.identities("other")
            (['K', 'A'], [])
        """
        found: list[tuple[float, str]] = []
        for text in storage.read_all(self._identities_folder(task), suffix=".json"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if (isinstance(data, dict) and data.get("task") == task and isinstance(data.get("identity"), str)
                    and isinstance(data.get("at"), (int, float))):
                found.append((float(data["at"]), data["identity"]))
        return [identity for _, identity in sorted(found, reverse=True)]

    def adopt(self, old_key: str, key: str, fingerprint: str) -> None:
        """Copy the attempts of ``old_key``'s chain of ``fingerprint`` into ``key``'s record, as the same
        attempts of ``key``: its next try finds that chain under its own key. Hold ``key``'s lease.

        Examples:
            >>> import tempfile
            >>> ledger = KeyLedger(tempfile.mkdtemp()); fp = "0123456789abcdef"
            >>> ledger.record("old", "old@" + fp, "msgbatch_1", at=1.0)
            >>> ledger.adopt("old", "new", fp)
            >>> {a: e.batch_id for a, e in ledger.entries("new").items()}
            {'new@0123456789abcdef': 'msgbatch_1'}
        """
        for attempt, entry in self.entries(old_key).items():
            parsed = parse_attempt(attempt, old_key)
            if parsed is not None and parsed[0] == fingerprint:
                moved = attempt_key(key, parsed[1], fingerprint)
                if moved not in self.entries(key):
                    self._put(key, replace(entry, attempt=moved), moved)

    def claimed(self) -> set[str]:
        """Every batch id recorded under any key of this ledger (read when a lost create is looked for)."""
        ids: set[str] = set()
        for text in storage.read_all(self.where, suffix=".json"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            for raw in (data.get("attempts") or {}).values() if isinstance(data, dict) else ():
                if isinstance(raw, dict) and isinstance(raw.get("batch_id"), str):
                    ids.add(raw["batch_id"])
        return ids


def _write_json(target: Any, data: dict[str, Any]) -> None:
    if isinstance(target, str) and not storage.is_url(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(target, json.dumps(data, indent=1, sort_keys=True))

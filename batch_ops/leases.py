"""One worker at a time: a lease held in a store (a job's, beside its output; a key ledger's, beside its record).

The key ledger (:mod:`batch_ops.identity.ledger`) takes the same leases for one idempotency key, so
that two tries of one key never create two batches on an API that cannot carry the key. What
follows is written for jobs; it holds for a ledger's key alike.

Two workers may step one job at the same moment: a Celery redelivery while the first try still
runs, two pods, an Airflow task cleared while its deferred step resumes. Each read the state,
saw the same parts pending and created a batch for every one of them — 4 parts became 8 batches,
every request paid twice. A step is therefore *exclusive*: a worker takes the job's lease before
it reads the state, holds it while it retrieves, harvests and submits, and gives it back at the
end. A worker that finds the lease taken does nothing and says "busy, try again in N s"
(:class:`~batch_ops.jobs.JobProgress` ``busy``; ``run`` simply tries again), never fails.

Why a lease, and not only the key lookups single submits rely on (look the part's key up before
creating, reconcile after): a lookup cannot see a create that is still on its way, so racing tries
each create and then the later batches cancel themselves — by then they may have run and billed
requests (the money drill measures 66 paid for 60 needed with four racing tries). A lease lets
exactly one worker create, so paid == needed. The lookups stay as the second line of defence
where the lease cannot prove exclusivity (see below).

Where the lease lives, next to the job's state:

* **local disk** (:class:`FileLease`): ``OUT.lease``, locked with ``flock``. The kernel holds the
  lock for as long as the process keeps the file open and drops it when the process dies — no
  expiry, no clocks. On a volume every worker mounts, the lock is only as good as the volume's
  (NFSv4 and most cluster file systems honour it).
* **S3 and S3-compatible stores** (:class:`S3Lease`): the object ``OUT.lease``, written with
  conditional PUTs: ``If-None-Match: *`` to take it, ``If-Match: <ETag>`` to renew it, to take
  over an expired one and to give it back. Of two racing workers S3 lets exactly one write win.
  The holder renews it every ``ttl / 4`` from a background thread (a long upload keeps it) and once
  more right before every batch it creates; a worker that died stops renewing, and the lease is
  taken over once it has not been renewed for ``ttl`` seconds — measured on the store's own clock
  (the ``Date`` of a response against the lease's ``Last-Modified``), so clock skew between
  workers does not matter. A holder whose renewal fails (taken over after a long stall) stops
  before its next write or create. Stores that silently ignore conditional writes are detected
  when the lease is taken (a second create-only PUT must be refused) and treated as below.
* **any other store** (``memory://``, ``gs://``, ``az://``, a Prefect block; :class:`NoLease`):
  no conditional write is available through fsspec, so steps are not exclusive. Every part is
  then looked up by its key before it is created and reconciled after (the submission core's
  rules): concurrent steps end with one batch per part, but a duplicate may run briefly before it
  cancels itself. The job says so in its first step's events.

What no lease can close: a worker frozen for longer than ``ttl`` between its last renewal and a
create (a suspended VM) may still send that create after another worker took over. A step that
takes over an expired lease therefore looks every part's key up before creating (and reconciles
after), like the stores without a lease.

Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "out.jsonl.lease")
    >>> a, b = FileLease(path), FileLease(path)
    >>> a.acquire(), b.acquire()
    (True, False)
    >>> a.release(); b.acquire()
    True
    >>> b.release()
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from batch_ops import storage
from batch_ops.errors import JobBusyError, StorageError

try:  # POSIX only; elsewhere a local job falls back to key lookups (NoLease)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DEFAULT_LEASE_TTL", "FileLease", "Lease", "NoLease", "S3Lease", "lease_for"]

#: Seconds a lease on object storage lives without a renewal (the holder renews every quarter of it).
DEFAULT_LEASE_TTL = 120.0
#: Seconds before a busy worker tries again: a step is short, so the holder is usually done by then.
BUSY_RETRY = 2.0
_CONFLICTS = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8), "since": time.time()}


def _who(info: dict[str, Any] | None) -> str:
    if not info:
        return "another worker"
    return f"worker {info.get('host', '?')} pid {info.get('pid', '?')}"


class Lease:
    """The right to step one job. ``acquire`` never blocks; see the module docstring.

    Attributes:
        exclusive: True when holding it proves no other worker steps the job (False: key lookups
            must make concurrent steps safe instead).
        took_over: set by ``acquire`` when it took the lease of a worker that stopped renewing it
            (who, and for how long it was silent); that step looks parts up before creating.
        retry_after: after a refused ``acquire``, seconds worth waiting before trying again.
        note: one line for the job's events about how steps are kept apart (or why they are not).
    """

    exclusive = True
    took_over: str | None = None
    retry_after: float = BUSY_RETRY
    note: str | None = None

    def acquire(self) -> bool:
        """Take the lease now if free (or expired); False when another worker holds it."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`JobBusyError` when a lease this worker held was lost (cheap, no I/O)."""

    def confirm(self) -> None:
        """Prove the lease is still ours right now (before a create); raises :class:`JobBusyError`."""
        self.check()

    def release(self) -> None:
        """Give the lease back (idempotent; never raises)."""

    def holder(self) -> str:
        """Who holds the lease, for messages (after a refused ``acquire``)."""
        return "another worker"


class NoLease(Lease):
    """A store without conditional writes: nothing to hold, steps are not exclusive."""

    exclusive = False

    def __init__(self, where: str) -> None:
        self.note = (f"{where} cannot hold a lease (no conditional writes): steps of this job on several workers "
                     "are not exclusive; every part is looked up by its key before it is created instead")

    def acquire(self) -> bool:
        return True


class FileLease(Lease):
    """``flock`` on a file beside the local output; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self._seen: dict[str, Any] | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.took_over = None
        try:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StorageError(f"Could not take the job's lease {self.path}: {type(exc).__name__}: {exc}; fix: the "
                               "output's folder must be writable by every worker that runs the job") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._seen = _read_fd(fd)
            os.close(fd)
            self.retry_after = BUSY_RETRY
            return False
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message another worker shows; the lock itself is the kernel's.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)

    def holder(self) -> str:
        return _who(self._seen)


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 4096, 0)
        found = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception (s3fs translates botocore's ``ClientError`` and chains it)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        seen = seen.__cause__ or seen.__context__
    return None


class S3Lease(Lease):
    """A lease object on S3 (or an S3-compatible store) written with conditional PUTs; see the module docstring."""

    def __init__(self, where: storage.Location, *, ttl: float = DEFAULT_LEASE_TTL) -> None:
        self.fs = where.fs
        self.name = storage.display(where)
        self.bucket, self.key, _ = where.fs.split_path(where.path)
        self.ttl = float(ttl)
        self._etag: str | None = None
        self._owner: dict[str, Any] = {}
        self._renewals = 0
        self._lost: str | None = None
        self._seen: dict[str, Any] | None = None
        self._renewed = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._probed = False

    # -- the wire ------------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)  # type: ignore[no-any-return]

    def _put(self, **condition: str) -> str:
        # Every write carries a new renewal count, so every write changes the ETag: a renewal and a
        # takeover conditional on the same ETag can never both succeed.
        self._renewals += 1
        body = {**self._owner, "ttl": self.ttl, "renewal": self._renewals}
        meta = {"owner": self._owner["token"], "ttl": str(self.ttl), "host": str(self._owner["host"])[:200],
                "pid": str(self._owner["pid"])}
        answer = self._call("put_object", Body=json.dumps(body).encode(), Metadata=meta,
                            ContentType="application/json", **condition)
        return str(answer.get("ETag", ""))

    def _storage_error(self, action: str, exc: BaseException) -> StorageError:
        return StorageError(f"Could not {action} the job's lease {self.name}: {type(exc).__name__}: "
                            f"{storage.display(exc)}")

    # -- taking it -----------------------------------------------------------------------------
    def acquire(self) -> bool:
        if self._etag is not None and self._lost is None:
            return True
        self._reset()
        for _ in range(3):  # the lease may be released between our create and our look: try again
            try:
                etag = self._put(IfNoneMatch="*")
            except Exception as exc:
                if _s3_code(exc) not in _CONFLICTS:
                    raise self._storage_error("take", exc) from exc
            else:
                return self._held(etag)
            try:
                head = self._call("head_object")
            except FileNotFoundError:
                continue
            except Exception as exc:
                if _s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    continue
                raise self._storage_error("read", exc) from exc
            meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
            self._seen = {"host": meta.get("host"), "pid": meta.get("pid")}
            ttl = _float(meta.get("ttl"), self.ttl)
            age = _age(head)
            if age <= ttl:
                self.retry_after = max(0.5, min(BUSY_RETRY, ttl - age + 1.0))
                return False
            try:  # expired: its holder stopped renewing it (died, or stalled past the ttl)
                etag = self._put(IfMatch=str(head.get("ETag", "")))
            except Exception as exc:
                if _s3_code(exc) in _CONFLICTS:  # renewed, released or taken by someone else meanwhile
                    self.retry_after = BUSY_RETRY
                    return False
                raise self._storage_error("take over", exc) from exc
            self.took_over = f"{_who(self._seen)} (silent for {age:.0f} s, more than its {ttl:.0f} s lease)"
            return self._held(etag)
        self.retry_after = BUSY_RETRY
        return False

    def _reset(self) -> None:
        self._owner = _owner()
        self._renewals = 0
        self._etag = None
        self._lost = None
        self.took_over = None

    def _held(self, etag: str) -> bool:
        self._etag = etag
        if not self._probed:
            try:
                self._probe()
            except BaseException:
                self.release()  # not usable: give it back rather than hold it up for a ttl
                raise
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"batch_ops lease {self.key}", daemon=True)
        self._beat.start()
        return True

    def _probe(self) -> None:
        """A store that ignores ``If-None-Match`` would let every worker "take" the lease: ask once."""
        self._probed = True
        try:
            self._call("put_object", Body=b"{}", IfNoneMatch="*")
        except Exception as exc:
            if _s3_code(exc) in _CONFLICTS:
                return  # refused, as it must be
            raise self._storage_error("check", exc) from exc
        self.exclusive = False
        self.note = (f"{self.name}: the store accepted a create-only write over an existing object (it ignores "
                     "If-None-Match), so the lease cannot keep steps apart; every part is looked up by its key "
                     "before it is created instead")
        with contextlib.suppress(Exception):
            self._etag = self._put()  # put our lease back (the probe overwrote it)

    # -- keeping it ----------------------------------------------------------------------------
    def _renew(self) -> None:
        with self._lock:
            if self._lost is not None or self._etag is None:
                return
            try:
                self._etag = self._put(IfMatch=self._etag)
            except Exception as exc:
                if _s3_code(exc) in _CONFLICTS or isinstance(exc, FileNotFoundError):
                    self._lost = "another worker took the job's lease over (this worker stalled past its lease)"
                    return
                raise
            self._renewed = time.monotonic()

    def _heartbeat(self) -> None:
        self._renewed = time.monotonic()
        while not self._stop.wait(self.ttl / 4):
            try:
                self._renew()
            except Exception:  # the store is unreachable: keep trying until the lease would have expired
                if time.monotonic() - self._renewed > self.ttl * 0.75:
                    with self._lock:
                        self._lost = f"the job's lease {self.name} could not be renewed for {self.ttl * 0.75:.0f} s"
            if self._lost is not None:
                return

    def check(self) -> None:
        if self._lost is not None:
            raise JobBusyError(f"This step stopped before its next write: {self._lost}. Nothing more was created; "
                               "the worker that holds the lease carries the job on", retry_after=BUSY_RETRY)

    def confirm(self) -> None:
        self.check()
        try:
            self._renew()
        except Exception as exc:
            raise self._storage_error("renew", exc) from exc
        self.check()

    def release(self) -> None:
        self._stop.set()
        beat, self._beat = self._beat, None
        if beat is not None and beat is not threading.current_thread():
            beat.join(timeout=30)
        with self._lock:
            etag, self._etag = self._etag, None
            lost = self._lost
        if etag is None or lost is not None:
            return
        # Only our own lease is deleted: If-Match fails when someone else holds it. A release that fails
        # (network) costs others one ttl of waiting, nothing more.
        try:
            self._call("delete_object", IfMatch=etag)
        except Exception as exc:
            if _s3_code(exc) in _CONFLICTS:
                return  # not ours any more
            # A store without conditional deletes: look, then delete if it is still ours.
            with contextlib.suppress(Exception):
                if str(self._call("head_object").get("ETag", "")) == etag:
                    self._call("delete_object")

    def holder(self) -> str:
        return _who(self._seen)


def _float(text: Any, default: float) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _age(head: dict[str, Any]) -> float:
    """Seconds since the lease was last written, on the store's clock (its ``Date`` header) when it sends one."""
    modified = head.get("LastModified")
    if not isinstance(modified, datetime):
        return 0.0
    headers = (head.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    try:
        now = parsedate_to_datetime(headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        now = time.time()  # no Date header: our clock, skew and all
    # Both stamps have one-second resolution: count the lease alive for one more second.
    return now - modified.timestamp() - 1.0


def lease_for(output: Any, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
    """The lease of the job whose merged output is ``output`` (a local path or a :class:`~batch_ops.storage.Location`).

    Examples:
        >>> type(lease_for("memory://bucket/out.jsonl")).__name__, type(lease_for("/tmp/out.jsonl")).__name__
        ('NoLease', 'FileLease')
    """
    where = storage.location(output)
    if isinstance(where, storage.Location):
        lease_at = storage.Location(where.fs, where.path + ".lease")
        if hasattr(where.fs, "call_s3") and hasattr(where.fs, "split_path"):
            return S3Lease(lease_at, ttl=ttl)
        if getattr(where.fs, "local_file", False) and fcntl is not None:
            return FileLease(where.fs._strip_protocol(lease_at.path))
        protocol = where.fs.protocol if isinstance(where.fs.protocol, str) else where.fs.protocol[0]
        return NoLease(f"{protocol}://")
    if fcntl is None:  # pragma: no cover - Windows
        return NoLease("this platform (no flock)")
    return FileLease(f"{os.fspath(where)}.lease")

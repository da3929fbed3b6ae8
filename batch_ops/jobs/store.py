"""Where a job keeps its state and work files: next to its output, on a local disk or object storage.

A job's files (see :mod:`batch_ops.jobs.state`) are the state, the parts and, per part, the final
results. They sit next to the output, wherever that is:

* :class:`LocalJobStore` — the output is a local path: files are read and written in place
  (one machine, or a volume every worker mounts).
* :class:`RemoteJobStore` — the output is on object storage (``s3://…``, an ``ObjectStoragePath``,
  a Prefect block's :class:`~batch_ops.storage.Location`): the job works in a private local cache
  and puts each file next to the output as soon as it is written, the state last. A resume on
  another worker (a Celery task retried elsewhere, a new pod) reads the state from there and
  fetches a part or a results file only when it needs it; nothing is sharded or submitted again.

The order of puts is what keeps money safe across machines: a part's key is in the stored state
*before* its batch is created (``save`` raises :class:`~batch_ops.errors.StorageError` and nothing
is created when the put fails), and a harvested part's results and next-round requests are
stored *before* the state says "harvested" (a crash in between harvests the batch again, which
writes the same files).

Files in a state are named relative to the work folder (``parts/r0-001.jsonl``), so a state can
move; states written by older versions name local paths, which still resolve when they provably
name that same file (their real path is ``<work>/parts/<part>.jsonl``).

A state is data anyone with write access to the store can change, so nothing in it is trusted as
a path: every loaded state is checked before anything is read or uploaded (:meth:`JobStore.load`).
A part's name must be a part name (``r0-001``) and its file must be ``parts/<name>.jsonl`` inside
the work folder; an absolute path (a worker's ``/etc/passwd`` would be uploaded as a batch input),
``..`` (results written outside the folder), another scheme (``file://``, ``s3://``) or a symlink
leading out of the folder is refused with an :class:`~batch_ops.errors.InputValidationError`
naming the field and the fix. Every work file the job reads or writes goes through
:meth:`JobStore.local_path`, which refuses the same.

Each store also gives the job its lease (:mod:`batch_ops.jobs.lease`): ``OUT.lease`` beside the
state, so that one worker at a time steps the job.

Examples:
    >>> store = store_for("memory://batch_ops-doc/jobs/out.jsonl")
    >>> type(store).__name__, store.state_name
    ('RemoteJobStore', 'memory:///batch_ops-doc/jobs/out.jsonl.state.json')
    >>> _ = (store.work / "parts").mkdir(parents=True)
    >>> _ = (store.work / "parts" / "r0-001.jsonl").write_text("{}\\n")
    >>> store.push(store.work / "parts" / "r0-001.jsonl")
    >>> elsewhere = store_for("memory://batch_ops-doc/jobs/out.jsonl")  # another worker
    >>> elsewhere.fetch("parts/r0-001.jsonl").read_text()
    '{}\\n'
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from batch_ops import storage
from batch_ops._files import atomic_write
from batch_ops.errors import InputValidationError, Problem, StorageError
from batch_ops.jobs.lease import DEFAULT_LEASE_TTL, Lease, lease_for
from batch_ops.jobs.state import JobState, save_state, state_path_for, work_dir_for

__all__ = ["JobStore", "LocalJobStore", "RemoteJobStore", "store_for"]


#: What a part's name looks like: its round, then its number (``r0-001``, ``r2-017``).
_PART_NAME = re.compile(r"^r[0-9]{1,6}-[0-9A-Za-z_]{1,64}$")
_FIX = ("the state was changed by something other than batch_ops: restore it, or delete it and the job's work "
        "folder to start the job over")


def _outside(param: str, value: str, work: Any, why: str) -> Problem:
    return Problem(rule="path_outside_job", param=param, fix=_FIX,
                   message=f"{value!r} {why}; a job's files stay inside its work folder {storage.display(work)}, "
                   "so nothing was read or uploaded")


class JobStore:
    """The files of one job. ``work`` is a local folder: write there, then :meth:`push`."""

    #: The local folder the job reads and writes its work files in.
    work: Path
    #: Where the state is, for messages and the job summary.
    state_name: str
    #: The work folder where it is kept (local, or on object storage), for messages.
    work_name: str

    def load(self) -> JobState | None:
        """The stored state, checked (see the module docstring), or None when the job has not started here.

        Raises:
            InputValidationError: the state is not a job state, or a file it names is outside the job's
                work folder (each field named, with the fix); nothing has been read or uploaded.
        """
        error: ValidationError | None = None
        for attempt in range(4):
            text = self._read()
            if text is None:
                return None
            try:
                return self.confine(JobState.model_validate_json(text))
            except ValidationError as exc:
                # A store that shows an object while it is still being written (memory://, some FUSE
                # mounts) can hand out part of a state another worker is saving: look again.
                error = exc
                time.sleep(0.05 * (attempt + 1))
        assert error is not None
        first = error.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "state"
        raise InputValidationError(
            [Problem(rule="invalid_state", param=where, message=f"{first['msg']} ({error.error_count()} problem(s))",
                     fix=_FIX)], source=self.state_name)

    def _read(self) -> str | None:
        raise NotImplementedError

    def confine(self, state: JobState) -> JobState:
        """``state`` with every part file named ``parts/<name>.jsonl``, or an error naming each field that is not."""
        problems: list[Problem] = []
        for i, part in enumerate(state.parts):
            if not _PART_NAME.match(part.name):
                problems.append(_outside(f"parts[{i}].name", part.name, self.work_name,
                                         "is not a part name (r<round>-<number>, e.g. r0-001)"))
                continue
            want = f"parts/{part.name}.jsonl"
            if part.path == want:
                continue
            if self._legacy(part.path) == want:
                part.path = want  # an older version's local path to this very file
                continue
            problems.append(_outside(f"parts[{i}].path", part.path, self.work_name,
                                     f"is not this part's file ({want} in the work folder)"))
        if problems:
            raise InputValidationError(problems, source=self.state_name)
        return state

    def _legacy(self, name: str) -> str | None:
        """How an older version's name for a part file reads today, when it provably is one."""
        return None

    def local_path(self, name: str) -> Path:
        """The local path of the work file ``name`` (``parts/r0-001.jsonl``), refused unless it stays inside ``work``.

        Raises:
            InputValidationError: ``name`` is absolute, climbs out (``..``), names another scheme, or
                leads out of the folder through a symlink.
        """
        rel = PurePosixPath(name)
        if (rel.is_absolute() or not rel.parts or "\\" in name or ":" in name
                or any(p in ("", ".", "..") for p in rel.parts)):
            raise InputValidationError([_outside("path", name, self.work_name, "is not a plain relative path")],
                                       source=self.state_name)
        local = self.work.joinpath(*rel.parts)
        try:
            inside = local.resolve().is_relative_to(self.work.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            raise InputValidationError([_outside("path", name, self.work_name, "leads out of the folder (a symlink)")],
                                       source=self.state_name)
        return local

    def save(self, state: JobState) -> None:
        """Store ``state`` whole (atomically); raises :class:`StorageError` when it could not."""
        raise NotImplementedError

    def fetch(self, name: str) -> Path:
        """The local path of the work file ``name`` (relative to ``work``), fetched when it is elsewhere."""
        raise NotImplementedError

    def push(self, local: Path) -> None:
        """Store the work file ``local`` (written under ``work``) next to the output."""

    def reset(self) -> None:
        """Remove what a job that never saved a state left behind, before starting over."""
        raise NotImplementedError

    def name_of(self, local: Path) -> str:
        """How a state names the work file ``local``: relative to the work folder."""
        return local.relative_to(self.work).as_posix()

    def lease(self, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """The job's lease (see :mod:`batch_ops.jobs.lease`)."""
        raise NotImplementedError


class LocalJobStore(JobStore):
    """A job whose output is a local path: its files sit beside it (``OUT.state.json``, ``OUT.work/``)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.state_path = state_path_for(output)
        self.state_name = str(self.state_path)
        self.work = work_dir_for(output)
        self.work_name = str(self.work)

    def _read(self) -> str | None:
        try:
            return self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def save(self, state: JobState) -> None:
        save_state(state, self.state_path)

    def fetch(self, name: str) -> Path:
        return self.local_path(name)

    def _legacy(self, name: str) -> str | None:
        # Older versions wrote str(<work>/parts/<part>.jsonl): absolute, or relative to the working
        # directory when the output was given so. Accepted only when its real path is that file.
        if storage.is_url(name) or name.startswith("file:"):
            return None
        try:
            real, parts = Path(name).resolve(), (self.work / "parts").resolve()
        except (OSError, RuntimeError):
            return None
        return f"parts/{real.name}" if real.parent == parts else None

    def lease(self, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        return lease_for(self.output, ttl=ttl)

    def reset(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class RemoteJobStore(JobStore):
    """A job whose output is on object storage; see the module docstring.

    The local cache is a private temporary folder, removed when the store is garbage-collected
    (or at interpreter exit): it holds the parts being submitted or harvested, downloads and
    results until they are merged, never more than the job's own files.
    """

    def __init__(self, output: storage.Location) -> None:
        self.output = output
        self.state_at = storage.Location(output.fs, output.path + ".state.json")
        self.work_at = storage.Location(output.fs, output.path + ".work")
        self.state_name = storage.display(self.state_at)
        self.work_name = storage.display(self.work_at)
        self.work = Path(tempfile.mkdtemp(prefix="batch_ops_job_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.work, ignore_errors=True)

    def _read(self) -> str | None:
        # Another worker may have written the state since this process last listed the folder: an
        # fsspec listing cache must not answer "no state" or hand back an older one.
        with contextlib.suppress(Exception):
            self.state_at.fs.invalidate_cache(self.state_at.path)
        return storage.read_text(self.state_at)

    def lease(self, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        return lease_for(self.output, ttl=ttl)

    def save(self, state: JobState) -> None:
        local = self.work / ".state.json"
        atomic_write(local, [state.model_dump_json(indent=1).encode()])
        storage.publish(local, self.state_at)

    def fetch(self, name: str) -> Path:
        local = self.local_path(name)
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                storage.stage(self._remote(name), local)
            except InputValidationError:
                raise StorageError(f"the job file {storage.display(self._remote(name))} is missing: its state names "
                                   "it, so it was written and then removed; fix: restore it, or delete the state "
                                   f"({self.state_name}) to start the job over") from None
        return local

    def push(self, local: Path) -> None:
        storage.publish(local, self._remote(self.name_of(local)))

    def reset(self) -> None:
        if not hasattr(self.work_at.fs, "rm"):  # a block read and written whole: nothing to list or clear
            return
        with contextlib.suppress(FileNotFoundError):
            try:
                self.work_at.fs.rm(self.work_at.path, recursive=True)
            except FileNotFoundError:
                raise
            except Exception as exc:  # the file system's own errors: network, credentials
                storage.fail("clear", self.work_at, exc)

    def _remote(self, name: str) -> storage.Location:
        self.local_path(name)  # the same rules as locally: relative, inside the folder
        return self.work_at.child(*PurePosixPath(name).parts)


def store_for(output: Any) -> JobStore:
    """The store for a job whose merged output goes to ``output`` (any :data:`~batch_ops.storage.StorageTarget`)."""
    where = storage.location(output)
    return RemoteJobStore(where) if isinstance(where, storage.Location) else LocalJobStore(where)

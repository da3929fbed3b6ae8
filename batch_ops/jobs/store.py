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
move; states written by older versions name absolute local paths, which still resolve.

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
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from batch_ops import storage
from batch_ops._files import atomic_write
from batch_ops.errors import InputValidationError, StorageError
from batch_ops.jobs.state import JobState, load_state, save_state, state_path_for, work_dir_for

__all__ = ["JobStore", "LocalJobStore", "RemoteJobStore", "store_for"]


class JobStore:
    """The files of one job. ``work`` is a local folder: write there, then :meth:`push`."""

    #: The local folder the job reads and writes its work files in.
    work: Path
    #: Where the state is, for messages and the job summary.
    state_name: str

    def load(self) -> JobState | None:
        """The stored state, or None when the job has not started here."""
        raise NotImplementedError

    def save(self, state: JobState) -> None:
        """Store ``state`` whole (atomically); raises :class:`StorageError` when it could not."""
        raise NotImplementedError

    def fetch(self, name: str) -> Path:
        """The local path of the work file ``name`` (relative to ``work``, or an older state's absolute path)."""
        raise NotImplementedError

    def push(self, local: Path) -> None:
        """Store the work file ``local`` (written under ``work``) next to the output."""

    def reset(self) -> None:
        """Remove what a job that never saved a state left behind, before starting over."""
        raise NotImplementedError

    def name_of(self, local: Path) -> str:
        """How a state names the work file ``local``: relative to the work folder."""
        return local.relative_to(self.work).as_posix()


class LocalJobStore(JobStore):
    """A job whose output is a local path: its files sit beside it (``OUT.state.json``, ``OUT.work/``)."""

    def __init__(self, output: Path) -> None:
        self.state_path = state_path_for(output)
        self.state_name = str(self.state_path)
        self.work = work_dir_for(output)

    def load(self) -> JobState | None:
        return load_state(self.state_path)

    def save(self, state: JobState) -> None:
        save_state(state, self.state_path)

    def fetch(self, name: str) -> Path:
        return self.work / name  # an absolute name (an older state) stays itself

    def reset(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class RemoteJobStore(JobStore):
    """A job whose output is on object storage; see the module docstring.

    The local cache is a private temporary folder, removed when the store is garbage-collected
    (or at interpreter exit): it holds the parts being submitted or harvested, downloads and
    results until they are merged, never more than the job's own files.
    """

    def __init__(self, output: storage.Location) -> None:
        self.state_at = storage.Location(output.fs, output.path + ".state.json")
        self.work_at = storage.Location(output.fs, output.path + ".work")
        self.state_name = storage.display(self.state_at)
        self.work = Path(tempfile.mkdtemp(prefix="batch_ops_job_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.work, ignore_errors=True)

    def load(self) -> JobState | None:
        text = storage.read_text(self.state_at)
        return None if text is None else JobState.model_validate_json(text)

    def save(self, state: JobState) -> None:
        local = self.work / ".state.json"
        atomic_write(local, [state.model_dump_json(indent=1).encode()])
        storage.publish(local, self.state_at)

    def fetch(self, name: str) -> Path:
        local = self.work / name
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
                raise StorageError(f"Could not clear {storage.display(self.work_at)}: {type(exc).__name__}: "
                                   f"{storage.display(exc)}") from exc

    def _remote(self, name: str) -> storage.Location:
        return self.work_at.child(*Path(name).parts)


def store_for(output: Any) -> JobStore:
    """The store for a job whose merged output goes to ``output`` (any :data:`~batch_ops.storage.StorageTarget`)."""
    where = storage.location(output)
    return RemoteJobStore(where) if isinstance(where, storage.Location) else LocalJobStore(where)

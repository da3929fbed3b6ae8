"""A job: any number of requests, run as many batches until every request is accounted for.

The job shards its input into valid batches, submits them with bounded concurrency, waits,
recovers completed work from every finished batch (including expired and cancelled ones),
resubmits retryable failures for up to ``max_rounds`` more rounds, backs off and resubmits
parts refused with ``token_limit_exceeded``, and finally merges one result per request, in
input order, each carrying its provenance.

Money safety: every batch is created through the submission core (``client.submit`` with the
part's idempotency key). A part's key is written to the state file *before* its first batch is
created, so a job killed mid-submit re-attaches to that batch (or reuses its upload) when resumed
instead of paying for a second one; a part refused with ``token_limit_exceeded`` is submitted
again under the same key, as the next attempt of its chain; a finished part is never submitted
again.

Repair rounds (``JobConfig.repair_rounds``, with a response schema): a part whose batch completed with invalid
answers is ``repairing`` until its rounds end. Each round goes through :func:`batch_ops._repair.repair_plan`
(the client's ``repair``) on the part's chain, read up to the attempt it repairs; it is on record in the
part's state before it is submitted, so a try that dies before recording its batch is attached to, not
paid twice, when the job is stepped again. Its answers replace the invalid ones in the part's results.

One worker steps a job at a time: a step takes the job's lease (:mod:`batch_ops.jobs.lease`:
``flock`` on a local disk, conditional PUTs on S3), reads the state afresh under it, and gives it
back at the end; a worker that finds it taken returns a ``busy`` progress and tries again later.
So two workers resuming one job at once (a Celery redelivery, two pods) create one batch per
part, not two. Where the store cannot hold a lease, and in a step that took over the lease of a
worker that stopped renewing it, every part is looked up by its key before it is created and
reconciled after, as single submits are.

:meth:`BatchJob.advance_plan` is the one implementation of a step, written as a generator of
client calls; ``advance`` / ``run`` drive it with :class:`~batch_ops.BatchClient`,
``aadvance`` / ``arun`` with :class:`~batch_ops.AsyncBatchClient` (file work in a thread).

Examples:
    >>> import tempfile, os
    >>> from batch_ops.jsonl import write_requests, request_line
    >>> d = tempfile.mkdtemp()
    >>> _ = write_requests([request_line(f"q{i}", {"model": "m", "input": "x"}, endpoint="/v1/embeddings")
    ...                     for i in range(5)], os.path.join(d, "in.jsonl"))
    >>> job = BatchJob.open(os.path.join(d, "in.jsonl"), output_path=os.path.join(d, "out.jsonl"),
    ...                     endpoint="/v1/embeddings", max_lines=2)
    >>> [(p.name, p.requests) for p in job.state.parts]
    [('r0-001', 2), ('r0-002', 2), ('r0-003', 1)]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import posixpath
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from batch_ops import storage
from batch_ops._repair import RepairRound
from batch_ops._submit import Submission, SubmitSpec
from batch_ops.chain import AttemptChain
from batch_ops.cost.prices import PriceTable
from batch_ops.dialects import OPENAI, Dialect, dialect_named
from batch_ops.errors import (
    APIConnectionError,
    APIStatusError,
    BatchOpsError,
    BudgetExceededError,
    ConfigurationError,
    InputValidationError,
    JobBusyError,
    Problem,
    UnknownPriceError,
    is_permanent,
)
from batch_ops.identity import RunIdentity
from batch_ops.jobs.config import JobConfig
from batch_ops.jobs.harvest import (
    UsageTotals,
    apply_repair,
    harvest_part,
    invalid_in_results,
    merge,
    synthesize_failures,
)
from batch_ops.jobs.lease import DEFAULT_LEASE_TTL
from batch_ops.jobs.state import JobState, PartState, RepairState
from batch_ops.jobs.store import JobStore, LocalJobStore, store_for
from batch_ops.jsonl import RuleOptions, check_file, shard_file, validate_file
from batch_ops.models import Batch, BatchStatus
from batch_ops.outcomes import OutcomePolicy
from batch_ops.structured import ResponseSchema, schema_problems

__all__ = ["BatchJob", "Call", "JobProgress", "JobSummary"]

#: Longest wait between token-limit resubmissions of one part (the wait doubles per refusal).
TOKEN_LIMIT_BACKOFF_MAX = 3600.0

_clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Call:
    """Effect: call ``client.<target>(**kwargs)`` (``target`` like ``"batches.retrieve"``)."""

    target: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class JobProgress:
    """What one step left behind: batches still running, when to look again, and what it did.

    ``events`` says, one line each, what the step did to the API: batches created, re-attached
    (a part whose create was cut off by a crash, found again under its key) and harvested. The
    adapters log them.

    ``busy`` is True when another worker was stepping the job: this step did nothing (``running``
    and ``pending`` are as last seen here) and ``wake_at`` says when to try again.
    """

    running: list[str]
    pending: int
    done: bool
    wake_at: float | None
    events: tuple[str, ...] = ()
    busy: bool = False


@dataclass(frozen=True)
class JobSummary:
    """The end of a job. ``succeeded + failed == total`` always; ``duplicates`` is 0."""

    total: int
    succeeded: int
    failed: int
    batches: int
    resubmitted: int
    rounds: int
    token_limit_resubmits: int
    duplicates: int
    usage: dict[str, Any]
    output_path: str
    state_path: str
    #: Why the job stopped submitting (its budget) and how far it got; None: it did not.
    budget_stop: str | None = None
    #: The job's actual cost (USD, batch prices; None: a model without a price).
    cost_usd: float | None = None
    #: The repair rounds (``JobConfig.repair_rounds``; None: the job runs none): totals and, per part, each
    #: round (see :meth:`BatchJob._repairs_summary`).
    repairs: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_LOCAL_PROTOCOLS = frozenset({"file", "local"})


def _identity(where: Path | storage.Location) -> tuple[str, str]:
    """Where a file really is: ``("", its real local path)``, or ``(protocol, its normalised path)``.

    Every spelling of one local file gives the same answer — ``file://``, ``local://``, a relative
    path, ``./x/../in.jsonl``, a symlink, an fsspec local file system — and so does every spelling of
    one object (``s3://b/k`` and ``s3a://b//k``).
    """
    if isinstance(where, storage.Location):
        fs = where.fs
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        stripped = str(fs._strip_protocol(where.path)) if hasattr(fs, "_strip_protocol") else where.path
        if not (getattr(fs, "local_file", False) or protocols & _LOCAL_PROTOCOLS):
            return min(protocols), posixpath.normpath("/" + stripped.lstrip("/"))
        where = Path(stripped)
    return "", os.path.realpath(where)


def _same_place(a: Path | storage.Location, b: Path | storage.Location) -> bool:
    """True when ``a`` and ``b`` name one file (however spelled; a hard link counts)."""
    ia, ib = _identity(a), _identity(b)
    if ia == ib:
        return True
    if ia[0] == ib[0] == "":
        with contextlib.suppress(OSError):
            return os.path.samefile(ia[1], ib[1])
    return False


def _own_file(src: Path | storage.Location, out: Path | storage.Location) -> str | None:
    """Which of the job's own files (beside ``out``) ``src`` is, if any: they are rewritten or removed."""
    (proto, path), (out_proto, out_path) = _identity(src), _identity(out)
    if proto != out_proto:
        return None
    if path in (out_path + ".state.json", out_path + ".lease"):
        return "its state" if path.endswith(".state.json") else "its lease"
    if path.startswith(out_path + ".work/"):
        return "a file in its work folder"
    return None


def _name(where: Path | storage.Location) -> str:
    """How a state names a job's input or output: an absolute local path, or a URL without credentials."""
    return str(where.resolve()) if isinstance(where, Path) else storage.display(where)


def _version(where: Path | storage.Location) -> str:
    # What changes when the file is rewritten: size and modification time (and an object's ETag).
    if isinstance(where, Path):
        stat = where.stat()
        return f"{stat.st_size}|{stat.st_mtime_ns}"
    try:
        info = where.fs.info(where.path)
    except Exception:  # looked up again (with a clear error) when the input is staged
        return ""
    return "|".join(str(info.get(k, "")) for k in ("size", "ETag", "LastModified", "mtime"))


def _job_id(src: Path | storage.Location, out: Path | storage.Location) -> str:
    # Stable for the same input and output, so the metadata of its batches is recognisable.
    raw = f"{_name(src)}|{_version(src)}|{_name(out)}"
    return "job_" + hashlib.sha256(raw.encode()).hexdigest()[:16]


class BatchJob:
    """A resumable job over many batches. Open it, then ``run(client)`` (or ``arun``).

    Args (of :meth:`open`):
        input_path: the request file (any size; sharded into valid batches): a local path, or a
            file on object storage (an fsspec URL, an ``ObjectStoragePath``, a ``UPath``, a
            :class:`~batch_ops.storage.Location`).
        output_path: where the merged results go, local or on object storage; the state and the
            work files sit next to it (see :mod:`batch_ops.jobs.store`), so a job whose output is
            on object storage resumes on any machine.
        config: a :class:`~batch_ops.jobs.JobConfig` (endpoint, concurrency, rounds, limits, ...),
            or its fields as keywords.
    """

    def __init__(self, state: JobState, *, store: JobStore, input_path: Any, output_path: Any,
                 max_concurrent: int, prices: Mapping[str, Mapping[str, float]] | None,
                 lease_ttl: float = DEFAULT_LEASE_TTL, max_cost_usd: float | None = None) -> None:
        self.state = state
        self.store = store
        self.work_dir = store.work
        self._input = input_path
        self._output = output_path
        self.max_concurrent = max_concurrent
        self.prices = prices
        self.max_cost_usd = max_cost_usd
        self._events: list[str] = []
        self._lease = store.lease(ttl=lease_ttl)
        self._lease_ttl = lease_ttl
        self._noted = False

    @property
    def state_path(self) -> Path | str:
        """The state file: a local ``Path``, or a URL when the output is on object storage."""
        return self.store.state_path if isinstance(self.store, LocalJobStore) else self.store.state_name

    def _save(self) -> None:
        self._lease.check()  # a worker that lost the lease writes nothing more
        self.store.save(self.state)

    def _reload(self) -> None:
        """Read the state afresh: another worker may have stepped the job since this one last looked."""
        state = self.store.load()
        if state is None or state.job_id != self.state.job_id:
            raise ConfigurationError(
                f"{self.store.state_name} was removed or replaced by another job's state while job "
                f"{self.state.job_id} was open; fix: open the job again (BatchJob.open) to see what is there now")
        self.state = state

    @contextlib.contextmanager
    def _holding(self, what: str, *, wait: float) -> Iterator[None]:
        """Hold the job's lease for the block, waiting up to ``wait`` seconds for it (blocking: run in a thread)."""
        deadline = time.monotonic() + wait
        while not self._lease.acquire():
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobBusyError(
                    f"Could not {what}: {self._lease.holder()} has been stepping job {self.state.job_id} for "
                    f"{wait:.0f} s; try again later (nothing was changed)", retry_after=self._lease.retry_after)
            time.sleep(min(self._lease.retry_after, left))
        try:
            yield
        finally:
            self._lease.release()

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        input_path: str | os.PathLike[str],
        *,
        output_path: str | os.PathLike[str],
        config: JobConfig | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> BatchJob:
        """Start a job, or resume the one whose state file sits next to ``output_path``.

        ``config`` (a :class:`~batch_ops.jobs.JobConfig`, or a dict of its fields) and ``options``
        (its fields as keywords, e.g. ``endpoint=...``) say what to run and how.
        """
        cfg = JobConfig.of(config, **options)
        if cfg.response_schema is not None:  # the provider's schema subset, before anything is sharded or paid
            problems = schema_problems(cfg.response_schema["schema"], cfg.dialect.structured_form)
            if problems:
                raise InputValidationError(problems, source=f"response schema for {cfg.dialect.title}")
        src, out = storage.location(input_path), storage.location(output_path)
        if _same_place(src, out):
            raise InputValidationError(
                [Problem(rule="output_is_input", param="output_path",
                         message=f"the output {storage.display(output_path)} is the input "
                         f"{storage.display(input_path)} (the same file, however spelled, or a link to it): the "
                         "results would overwrite the requests",
                         fix="choose another output path: the job writes its merged results there")],
                source="job parameters",
            )
        own = _own_file(src, out)
        if own is not None:
            raise InputValidationError(
                [Problem(rule="input_is_job_file", param="input_path",
                         message=f"the input {storage.display(input_path)} is {own} of the job writing to "
                         f"{storage.display(output_path)}, which the job rewrites or removes",
                         fix="keep the request file outside the output's .state.json, .lease and .work names")],
                source="job parameters",
            )
        store = store_for(out)
        job_args: dict[str, Any] = {"store": store, "input_path": input_path, "output_path": output_path,
                                    "max_concurrent": cfg.max_concurrent, "prices": cfg.prices,
                                    "lease_ttl": cfg.lease_ttl, "max_cost_usd": cfg.max_cost_usd}
        state = store.load()
        if state is not None:
            return cls(cls._same_job(state, store, cfg, src), **job_args)
        # A new job: one worker shards it and writes its first state; one that comes second waits, then resumes it.
        placeholder = JobState(job_id=_job_id(src, out), endpoint=cfg.endpoint, input_path=_name(src),
                               output_path=_name(out), total=0, created_at=_clock(), max_rounds=cfg.max_rounds)
        job = cls(placeholder, **job_args)
        with job._holding("start the job", wait=cfg.lease_ttl):
            state = store.load()
            if state is not None:
                job.state = cls._same_job(state, store, cfg, src)
                return job
            job.state = cls._start(store, cfg, src, out)
        return job

    @staticmethod
    def _same_job(state: JobState, store: JobStore, cfg: JobConfig, src: Path | storage.Location) -> JobState:
        if state.endpoint != cfg.endpoint or state.input_path != _name(src):
            raise ConfigurationError(
                f"{store.state_name} belongs to a job over {state.input_path} ({state.endpoint}); fix: choose "
                "another output path, or delete the state file to start over"
            )
        return state

    @staticmethod
    def _start(store: JobStore, cfg: JobConfig, src: Path | storage.Location, out: Path | storage.Location) -> JobState:
        """Shard the input and store the parts, then the first state (under the lease)."""
        store.reset()
        with storage.local_copy(src) as local_src:
            # Any size is fine: the limits apply per part, when sharding.
            # The provider's rules (its line shape), and its limits per part (cfg's, within the provider's).
            rules = cfg.dialect.line_rules(cfg.endpoint)
            whole: RuleOptions = {**rules, "max_lines": 2**62, "max_bytes": 2**62, "max_embedding_inputs": 2**62}
            rules["max_lines"], rules["max_bytes"] = cfg.max_lines, cfg.max_bytes
            report = validate_file(local_src, **whole)
            parts = shard_file(local_src, store.work / "parts", **rules, prefix="r0")
        state = JobState(
            job_id=_job_id(src, out), endpoint=cfg.endpoint, input_path=_name(src), output_path=_name(out),
            total=report.lines, created_at=_clock(), max_rounds=cfg.max_rounds,
            metadata=dict(cfg.metadata), token_limit_backoff=cfg.token_limit_backoff, provider=cfg.provider,
            response_schema=cfg.response_schema, repair_rounds=cfg.repair_rounds, repair_feedback=cfg.repair_feedback,
        )
        for part in parts:
            lines = check_file(part, **rules)[0].lines
            store.push(part)  # every part is stored before the state that names it
            state.parts.append(PartState(name=part.stem, round=0, path=store.name_of(part), requests=lines))
        store.save(state)
        return state

    # -- the step, written once ---------------------------------------------------------------
    def advance_plan(self) -> Generator[Call, Any, JobProgress]:
        """One step: take the job's lease, look at running batches, harvest the finished, submit what may start.

        When another worker holds the lease, the step does nothing and returns a ``busy`` progress.
        The lease is given back when the plan ends (or is closed).
        """
        self._events = []
        if not self._lease.acquire():
            return self._busy()
        try:
            self._reload()
            if self._lease.took_over:
                self._events.append(f"took the job's lease over from {self._lease.took_over}: every part is looked "
                                    "up by its key before it is created")
            if self._lease.note and not self._noted:
                self._noted = True
                self._events.append(self._lease.note)
            return (yield from self._step())
        finally:
            self._lease.release()

    def _busy(self) -> JobProgress:
        retry = self._lease.retry_after
        running = self._running()
        event = f"busy: {self._lease.holder()} is stepping this job; trying again in {retry:.0f} s"
        return JobProgress(running=running, pending=sum(1 for p in self.state.parts if p.status == "pending"),
                           done=False, wake_at=_clock() + retry, busy=True, events=(event,))

    def _step(self) -> Generator[Call, Any, JobProgress]:
        state = self.state
        for part in [p for p in state.parts if p.status == "running"]:
            try:
                batch: Batch = yield Call("batches.retrieve", {"batch_id": part.batch_id})
            except (APIConnectionError, APIStatusError) as exc:
                if is_permanent(exc):
                    raise
                continue  # transient: look again next step
            if batch.status.is_terminal:
                yield from self._finish_part(part, batch)
        for part in [p for p in state.parts if p.status == "repairing"]:
            yield from self._repair(part)
        now = _clock()
        for part in state.active():
            if part.status == "submitting":  # a submit interrupted by a crash: re-attach or create
                yield from self._submit(part)
        for part in state.pending(now=now):
            if len(state.active()) >= self.max_concurrent:
                break
            yield from self._submit(part)
        running = self._running()
        pending = sum(1 for p in state.parts if p.status == "pending")
        return JobProgress(running=running, pending=pending, done=state.done, wake_at=state.next_wake(),
                           events=tuple(self._events))

    def _running(self) -> list[str]:
        """The batches that may be running: the parts' and their repair rounds'."""
        parts = [p.batch_id for p in self.state.parts if p.status == "running" and p.batch_id]
        return parts + [b for p in self.state.parts if (b := p.repair_batch) is not None]

    def _spec(self, part: PartState, identity: RunIdentity, *, lookup: bool) -> SubmitSpec:
        """What the part's chain is submitted with: every attempt of it, a repair round's too (the same requests
        and schema, so the same fingerprint and the same chain)."""
        metadata = {**self.state.metadata, "batch_ops_job": self.state.job_id, "batch_ops_part": part.name}
        schema = self.state.response_schema
        return SubmitSpec(endpoint=self.state.endpoint, metadata=metadata, idempotency_key=part.key,
                          reattach=lookup, since=identity.since, prices=self.prices,
                          max_cost_usd=self._budget_left(part),
                          response_schema=None if schema is None else ResponseSchema.from_json(schema))

    def _submit(self, part: PartState) -> Generator[Call, Any, None]:
        # A key never used before needs no lookup: it is on disk before its first create, so a
        # crash leaves the part "submitting" and the resumed job looks the key's chain up. A part
        # sent again after token_limit_exceeded keeps its key: the core makes the next attempt.
        # Under an exclusive lease nobody else can have used a fresh key; without one (or after taking
        # over from a worker that may still be alive) the key is looked up and the create reconciled.
        identity = RunIdentity.job_part(job_id=self.state.job_id, part=part.name, started=self.state.created_at)
        fresh = part.key is None
        if fresh:
            part.key = identity.key
        if part.status != "submitting":
            part.status = "submitting"
            self._save()  # the key is stored before any create
        lookup = not fresh or not self._lease.exclusive or self._lease.took_over is not None
        spec = self._spec(part, identity, lookup=lookup)
        source = str(self.store.fetch(part.path))
        self._lease.confirm()  # still ours right now, or nothing is created
        try:
            submission: Submission = yield Call("submit_spec", {"source": source, "spec": spec})
        except BudgetExceededError as exc:
            self._stop_for_budget(part, exc)
            return
        batch = submission.batch
        if submission.created and submission.estimate is not None:
            part.upper_usd = float(submission.estimate.upper)
        if submission.created:
            self._events.append(f"part {part.name}: created batch {batch.id} ({part.requests} requests)")
        else:
            self._events.append(f"part {part.name}: re-attached to batch {batch.id} ({batch.status.value}; "
                                f"{submission.step.reason})")
        part.batch_id = batch.id
        part.fingerprint = submission.fingerprint or part.fingerprint
        part.status = "running"
        part.submits += 1
        if batch.id not in self.state.batch_ids:
            self.state.batch_ids.append(batch.id)
        self._save()

    def _finish_part(self, part: PartState, batch: Batch) -> Generator[Call, Any, None]:
        state = self.state
        errors = batch.errors.data if batch.errors else []
        if batch.status is BatchStatus.FAILED and any(e.code == "token_limit_exceeded" for e in errors):
            # Refused before running: nothing was billed. Wait, then submit the same part anew.
            delay = min(state.token_limit_backoff * 2 ** max(part.submits - 1, 0), TOKEN_LIMIT_BACKOFF_MAX)
            part.status, part.batch_id = "pending", None  # the key stays: the next try is its next attempt
            part.not_before = _clock() + delay
            state.token_limit_resubmits += 1
            self._save()
            self._events.append(f"part {part.name}: batch {batch.id} refused (token_limit_exceeded); sent again "
                                f"in {delay:.0f} s")
            return
        local = self.store.local_path
        downloads = local("downloads")
        downloads.mkdir(parents=True, exist_ok=True)
        found = yield Call("batches.download_results", {"batch": batch, "directory": downloads})
        out_path, err_path = found.output, found.error
        results = local(f"results/{part.name}.jsonl")
        part_path = self.store.fetch(part.path)
        provenance = {"batch_id": batch.id, "round": part.round, "part": part.name}
        if batch.status is BatchStatus.FAILED:
            part.cost_usd = 0.0  # failed as a whole: nothing completed, nothing billed
            detail = "; ".join(f"{e.code}: {e.message}" for e in errors[:3]) or "batch failed"
            part.failed = synthesize_failures(part_path=part_path, results_path=results, id_field=self._id_field,
                                              code=errors[0].code if errors and errors[0].code else "batch_failed",
                                              message=detail, provenance=provenance)
        else:
            next_round = part.round + 1
            retry_path = None
            if next_round <= state.max_rounds:
                retry_path = local(f"parts/r{next_round}-{part.name.split('-', 1)[1]}.jsonl")
            usage = UsageTotals()
            counts = harvest_part(part_path=part_path, output_path=out_path, error_path=err_path,
                                  results_path=results, retry_path=retry_path, provenance=provenance, usage=usage,
                                  id_field=self._id_field)
            part.succeeded, part.failed, part.retried = counts.succeeded, counts.failed, counts.retried
            part.usage = usage.per_model
            part.cost_usd = self._cost_of(usage.per_model)
            if retry_path is not None and counts.retried:
                self.store.push(retry_path)
                name = retry_path.stem
                if all(p.name != name for p in state.parts):
                    state.parts.append(PartState(name=name, round=next_round, path=self.store.name_of(retry_path),
                                                 requests=counts.retried))
        self.store.push(results)  # the results and the next round are stored before "harvested" is
        part.status = "harvested"
        part.outcome = batch.status.value
        self._events.append(f"part {part.name}: batch {batch.id} {batch.status.value}: {part.succeeded} succeeded, "
                            f"{part.failed} failed, {part.retried} to the next round")
        self._maybe_repair(part, batch, results)
        self._save()

    # -- repair rounds ------------------------------------------------------------------------------
    def _maybe_repair(self, part: PartState, after: Batch, results: Path) -> None:
        """Start the part's next repair round when rounds are left and some answers in ``results`` are invalid.

        Only after a batch the chain accepts (completed): the requests of an expired or cancelled one that got no
        answer go to the job's next round, and the chain's own next attempt would carry them again."""
        state = self.state
        if (state.response_schema is None or len(part.repairs) >= state.repair_rounds
                or not OutcomePolicy().accepts(after)):
            return
        if not invalid_in_results(results, ResponseSchema.from_json(state.response_schema)):
            return
        part.repairs.append(RepairState(round=len(part.repairs) + 1, after=after.id))
        part.status = "repairing"  # saved by the caller: the round is on record before it is submitted

    def _repair(self, part: PartState) -> Generator[Call, Any, None]:
        """Step the part's repair round: submit it (or attach to the attempt a crashed try made), then harvest it."""
        record = part.repairs[-1]
        batch: Batch | None = None
        if record.batch_id is None:
            batch = yield from self._submit_repair(part, record)
        else:
            try:
                batch = yield Call("batches.retrieve", {"batch_id": record.batch_id})
            except (APIConnectionError, APIStatusError) as exc:
                if is_permanent(exc):
                    raise
                return  # transient: look again next step
        if batch is not None and batch.status.is_terminal:
            yield from self._finish_repair(part, record, batch)

    def _submit_repair(self, part: PartState, record: RepairState) -> Generator[Call, Any, Batch | None]:
        """Submit the round through :func:`batch_ops._repair.repair_plan` (the client's ``repair``), reading the
        part's chain up to the attempt ``record.after``: a round made already by a try that did not record it is
        found by the submission core under the part's key and attached to, never paid twice."""
        assert part.key is not None
        identity = RunIdentity.job_part(job_id=self.state.job_id, part=part.name, started=self.state.created_at)
        chain: AttemptChain = yield Call("batches.chain", {"key": part.key, "since": identity.since,
                                                           "fingerprint": part.fingerprint})
        upto = next((a.number for a in chain.attempts
                     if record.after in (a.batch.id, *(d.id for d in a.duplicates))), None)
        if upto is None:
            raise BatchOpsError(f"Repair round {record.round} of part {part.name}: batch {record.after} is not in the "
                                f"chain of key {part.key!r} ({chain.batch_ids or 'no batch'}); nothing was submitted. "
                                "Fix: check that the job's batches were not deleted, or start the job anew")
        chain = replace(chain, attempts=tuple(a for a in chain.attempts if a.number <= upto))
        spec = self._spec(part, identity, lookup=True)
        self._lease.confirm()  # still ours right now, or nothing is created
        done: RepairRound = yield Call("repair", {"source": str(self.store.fetch(part.path)), "spec": spec,
                                                  "chain": chain, "round": record.round,
                                                  "feedback": self.state.repair_feedback})
        record.invalid, record.upper_usd, record.refused = dict(done.invalid), done.upper_usd, done.refused
        if done.refused is not None and self.max_cost_usd is not None and spec.max_cost_usd is not None:
            # The core's message names what it was given: the part's share. Say where that share comes from.
            record.refused = (f"the job's max_cost_usd ${self.max_cost_usd:.6f} less the other parts' spend "
                              f"${self.max_cost_usd - spec.max_cost_usd:.6f} leaves ${spec.max_cost_usd:.6f} for "
                              f"part {part.name}: {done.refused}")
        self._events.append(f"part {part.name}: {done.line()}")
        submission = done.submission
        if submission is None:  # refused by the budget (not an error: the paid answers stand), or nothing invalid
            record.still_invalid = done.count
            part.status = "harvested"
            self._save()
            return None
        batch = submission.batch
        record.batch_id = batch.id
        record.carried = submission.carried if submission.carried is not None else batch.request_counts.total
        if batch.id not in self.state.batch_ids:
            self.state.batch_ids.append(batch.id)
        self._save()
        return batch

    def _finish_repair(self, part: PartState, record: RepairState, batch: Batch) -> Generator[Call, Any, None]:
        """Put the round's answers into the part's results; then the next round, or the part is done."""
        assert self.state.response_schema is not None
        results = self.store.fetch(part.results)  # read before the outcome is set: the file the round repairs
        record.outcome = batch.status.value
        schema = ResponseSchema.from_json(self.state.response_schema)
        if batch.status is BatchStatus.FAILED:
            # Nothing answered, nothing billed: the answers it was to repair stand, invalid.
            record.cost_usd, record.still_invalid = 0.0, invalid_in_results(results, schema)
            part.status = "harvested"
            self._save()
            self._events.append(f"part {part.name}: repair round {record.round}: batch {batch.id} failed; "
                                f"{record.still_invalid} invalid answers delivered as they are")
            return
        downloads = self.store.local_path("downloads")
        downloads.mkdir(parents=True, exist_ok=True)
        found = yield Call("batches.download_results", {"batch": batch, "directory": downloads})
        usage = UsageTotals()
        provenance = {"batch_id": batch.id, "round": part.round, "part": part.name, "repair": record.round}
        repaired = self.store.local_path(part.results)  # a new name: see PartState.results
        counts = apply_repair(part_path=self.store.fetch(part.path), output_path=found.output,
                              error_path=found.error, results_path=results, repaired_path=repaired,
                              provenance=provenance, usage=usage, schema=schema, id_field=self._id_field)
        self.store.push(repaired)  # the repaired results are stored before the state names them
        record.repaired, record.still_invalid = counts.valid, counts.still_invalid
        record.cost_usd = self._cost_of(usage.per_model)
        merged = UsageTotals(per_model={m: dict(row) for m, row in part.usage.items()})
        merged.merge_from(usage.per_model)
        part.usage = merged.per_model
        part.cost_usd = None if part.cost_usd is None or record.cost_usd is None else part.cost_usd + record.cost_usd
        part.status = "harvested"
        self._events.append(f"part {part.name}: repair round {record.round}: batch {batch.id} {batch.status.value}: "
                            f"{counts.valid} of {record.carried} answers repaired, {counts.still_invalid} still "
                            "invalid")
        self._maybe_repair(part, batch, repaired)
        self._save()

    def _repairs_summary(self) -> dict[str, Any] | None:
        """The repair rounds in plain JSON: ``rounds`` (per part, at most), totals — ``invalid`` (answers found
        invalid before any repair), ``repaired`` (made valid by a round), ``still_invalid`` (delivered invalid),
        ``refused`` (rounds the budget refused), ``batches``, ``cost_usd`` — and ``parts``: each part's rounds."""
        state = self.state
        if not state.repair_rounds:
            return None
        parts = {p.name: [r.model_dump() for r in p.repairs] for p in state.parts if p.repairs}
        rounds = [r for p in state.parts for r in p.repairs]
        costs = [r.cost_usd for r in rounds if r.batch_id is not None]
        return {
            "rounds": state.repair_rounds,
            "invalid": sum(sum(p.repairs[0].invalid.values()) for p in state.parts if p.repairs),
            "repaired": sum(r.repaired for r in rounds),
            "still_invalid": sum(p.repairs[-1].still_invalid or 0 for p in state.parts if p.repairs),
            "refused": sum(r.refused is not None for r in rounds),
            "batches": sum(r.batch_id is not None for r in rounds),
            "cost_usd": None if None in costs else round(sum(c or 0.0 for c in costs), 6),
            "parts": parts,
        }

    # -- the budget -------------------------------------------------------------------------------
    def _budget_left(self, part: PartState) -> float | None:
        """What the job's budget leaves for ``part``'s chain: the limit less every other part's spend (actual once
        harvested, else its upper bound: it may still spend that). The part's own earlier attempts are counted
        by the submission core (its chain)."""
        if self.max_cost_usd is None:
            return None
        others = sum(self._spend(p) for p in self.state.parts if p is not part and p.submits > 0)
        return max(self.max_cost_usd - others, 0.0)

    @staticmethod
    def _spend(part: PartState) -> float:
        """What a part spent, or may still spend: actual once harvested (its repair rounds' too), else its upper
        bound; a repair round still running counts with its upper bound."""
        spent = (part.cost_usd if part.cost_usd is not None else part.upper_usd) or 0.0
        if part.repair_batch is not None:
            spent += part.repairs[-1].upper_usd or 0.0
        return spent

    def _cost_of(self, per_model: Mapping[str, Mapping[str, int]]) -> float | None:
        """The actual cost of a part from its billed tokens (None: a model without a price; its bound stands).

        Tokens are summed per model, so a long-context tier cannot be told per request: the dearest tier the
        sum reaches is taken (never below the true bill)."""
        table = PriceTable.of(self.prices)
        total = Decimal(0)
        try:
            for model, row in per_model.items():
                rate = table.rate(model, self.dialect.price_provider)
                total += rate.cost_upper(int(row.get("input", 0)), int(row.get("output", 0)))
        except UnknownPriceError:
            return None
        return float(total)

    def _stop_for_budget(self, part: PartState, exc: BudgetExceededError) -> None:
        """Stop submitting: every part not submitted yet ends as ``budget_exceeded`` failures; say how far it got."""
        state = self.state
        submitted = sum(1 for p in state.parts if p.submits > 0)
        left = [p for p in state.parts if (p.status in ("pending", "submitting") and p.submits == 0) or p is part]
        requests = sum(p.requests for p in left)
        state.budget_stop = (f"budget: stopped submitting at part {part.name}: {submitted} of {len(state.parts)} "
                             f"parts submitted, {requests} requests not submitted (budget_exceeded). {exc}")
        local = self.store.local_path
        for p in left:
            results = local(f"results/{p.name}.jsonl")
            results.parent.mkdir(parents=True, exist_ok=True)
            p.failed = synthesize_failures(part_path=self.store.fetch(p.path), results_path=results,
                                           id_field=self._id_field, code="budget_exceeded",
                                           message=f"not submitted: max_cost_usd {self.max_cost_usd} would be "
                                                   "passed", provenance={"part": p.name, "round": p.round})
            self.store.push(results)
            p.status, p.outcome, p.batch_id = "harvested", "not_submitted", None
        self._save()
        self._events.append(state.budget_stop)

    # -- finishing ------------------------------------------------------------------------------
    def finish(self) -> JobSummary:
        """Merge the final results into the output file and summarise (the job must be done).

        Holds the job's lease while it merges, waiting for a step of another worker to end.

        Raises:
            JobBusyError: another worker held the lease for longer than the lease's ttl.
        """
        with self._holding("merge the job's results", wait=self._lease_ttl):
            self._reload()
            return self._finish()

    def _finish(self) -> JobSummary:
        state = self.state
        if not state.done:
            raise BatchOpsError(f"job {state.job_id} is not done: {self.describe()}; run it to the end first")
        results = [self.store.fetch(p.results) for p in state.parts]
        with storage.local_copy(self._input) as src, storage.local_output(self._output) as out:
            succeeded, failed, _missing, duplicates = merge(input_path=src, results_paths=results, output_path=out,
                                                            id_field=self._id_field)
        if state.finished_at is None:
            state.finished_at = _clock()
            self._save()
        usage = UsageTotals()
        for p in state.parts:
            usage.merge_from(p.usage)
        return JobSummary(
            total=state.total, succeeded=succeeded, failed=failed, batches=len(state.batch_ids),
            resubmitted=sum(p.requests for p in state.parts if p.round > 0),
            rounds=max(p.round for p in state.parts) + 1, token_limit_resubmits=state.token_limit_resubmits,
            duplicates=duplicates, usage=usage.summary(prices=self.prices), output_path=state.output_path,
            state_path=str(self.state_path), budget_stop=state.budget_stop,
            cost_usd=None if any(p.cost_usd is None and p.submits for p in state.parts) else round(
                sum(p.cost_usd or 0.0 for p in state.parts), 6),
            repairs=self._repairs_summary(),
        )

    def describe(self) -> str:
        by: dict[str, int] = {}
        for p in self.state.parts:
            by[p.status] = by.get(p.status, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(by.items())) or "no parts"

    # -- the provider ----------------------------------------------------------------------------
    @property
    def dialect(self) -> Dialect:
        """The batch API the job's parts were checked and sharded for (``JobConfig.provider``)."""
        return dialect_named(self.state.provider) if self.state.provider else OPENAI

    @property
    def _id_field(self) -> str:
        return self.dialect.line_shape.id_field

    def _check_client(self, client: Any) -> None:
        """A client of another batch API would send parts shaped and sized for this one: refuse it first."""
        theirs = getattr(client, "dialect", None)
        ours = self.dialect
        if isinstance(theirs, Dialect) and theirs.line_shape != ours.line_shape:
            raise ConfigurationError(
                f"job {self.state.job_id} was sharded for {ours.title} (provider {self.state.provider or 'openai'!r}) "
                f"but the client speaks {theirs.title}; fix: run it with a client of that provider, or start a new "
                "job (another output path) with provider set to the client's")

    # -- drivers ---------------------------------------------------------------------------------
    def advance(self, client: Any) -> JobProgress:
        """Run one step with a :class:`~batch_ops.BatchClient` (blocking)."""
        self._check_client(client)
        plan = self.advance_plan()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    call = plan.throw(error) if error is not None else plan.send(value)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    value = _resolve(client, call.target)(**call.kwargs)
                except BatchOpsError as exc:
                    error = exc
        finally:
            plan.close()  # interrupted mid-step (KeyboardInterrupt, a caller's timeout): the lease goes back now

    async def aadvance(self, client: Any) -> JobProgress:
        """Run one step with an :class:`~batch_ops.AsyncBatchClient`; file work runs in a thread."""
        self._check_client(client)
        plan = self.advance_plan()
        # One thread at a time runs the plan: a cancelled await leaves its thread running, and the
        # close below must wait for it (a generator cannot be closed while it executes).
        running = threading.Lock()

        def step(value: Any, error: BaseException | None) -> tuple[bool, Any]:
            # StopIteration cannot cross a thread future, so report completion as a value.
            with running:
                try:
                    return False, (plan.throw(error) if error is not None else plan.send(value))
                except StopIteration as done:
                    return True, done.value

        def close() -> None:
            with running:
                plan.close()

        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                finished, result = await asyncio.to_thread(step, value, error)
                if finished:
                    return result  # type: ignore[no-any-return]
                value, error = None, None
                try:
                    value = await _resolve(client, result.target)(**result.kwargs)
                except BatchOpsError as exc:
                    error = exc
        finally:
            if inspect.getgeneratorstate(plan) != inspect.GEN_CLOSED:
                # Cancelled (or failed) mid-step: the lease goes back now. The close runs in a thread
                # (file or network work); shielded, so a second cancel still gets through at once
                # while the close completes.
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, close))

    def run(self, client: Any, *, poll_interval: float = 30.0, on_step: Callable[[JobProgress], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> JobSummary:
        """Advance until done, sleeping between steps; then merge and summarise."""
        while True:
            progress = self.advance(client)
            if on_step is not None:
                on_step(progress)
            if progress.done:
                return self.finish()
            sleep(self._delay(progress, poll_interval))

    async def arun(self, client: Any, *, poll_interval: float = 30.0,
                   on_step: Callable[[JobProgress], Any] | None = None) -> JobSummary:
        """Async :meth:`run`: never blocks the event loop."""
        while True:
            progress = await self.aadvance(client)
            if on_step is not None:
                outcome = on_step(progress)
                if asyncio.iscoroutine(outcome):
                    await outcome
            if progress.done:
                return await asyncio.to_thread(self.finish)
            await asyncio.sleep(self._delay(progress, poll_interval))

    @staticmethod
    def _delay(progress: JobProgress, poll_interval: float) -> float:
        delay = poll_interval
        if not progress.running and progress.wake_at is not None:
            delay = max(0.0, progress.wake_at - _clock())  # only back-offs left: sleep until the first ends
        elif progress.wake_at is not None:
            delay = min(delay, max(0.0, progress.wake_at - _clock()))
        return delay


def _resolve(client: Any, target: str) -> Any:
    obj = client
    for attr in target.split("."):
        obj = getattr(obj, attr)
    return obj

"""Outcomes: the one policy that says how a batch, a wait or an error ends a task.

Every adapter (the Airflow operator, sensor and trigger, the Prefect tasks and flow, the CLI, the
job runner) asks here and only translates the answer (into XCom, task results, exit codes):

* **accepted or not** — :class:`OutcomePolicy`: which terminal statuses (``fail_on``, default
  :data:`DEFAULT_FAIL_ON`) and whether request failures reject a batch; a rejected outcome is an
  outcome error (:func:`outcome_error`, :func:`raise_for_outcome`), and a retry of the task makes
  a new attempt (:mod:`batch_ops.chain`). A chain whose every request already has a success is
  accepted whatever its latest attempt's status (:meth:`OutcomePolicy.accepts`);
* **permanent or not** — :func:`is_permanent`: doing the same thing again cannot succeed (bad
  input or settings, a 4xx other than 408/409/429): fail now, do not retry, do not poll on;
* **how long to wait** — :data:`DEFAULT_WAIT_TIMEOUT`, one default for every wait (see there);
* **what a timeout does** — :func:`timeout_error`: the wait ends, the batch keeps running, unless
  the caller asked for ``cancel_on_timeout`` (the wait plans then cancel it first and say so);
* **the words** — :func:`describe` for a batch's state in one line.

What a submit did is worded once too, by :meth:`batch_ops.Submission.lines`.

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="expired", created_at=0,
    ...           request_counts={"total": 4, "completed": 3})
    >>> describe(b), OutcomePolicy().accepts(b), OutcomePolicy.of([]).accepts(b)
    ('expired 3/4', False, True)
    >>> DEFAULT_WAIT_TIMEOUT / 3600
    25.0
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from batch_ops.errors import (
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    BatchOutcomeError,
    BatchTimeoutError,
    InputValidationError,
    Problem,
    RequestFailuresError,
    is_permanent,
)
from batch_ops.models import Batch, BatchStatus

__all__ = [
    "COMPLETION_WINDOW",
    "DEFAULT_FAIL_ON",
    "DEFAULT_WAIT_TIMEOUT",
    "FINALIZE_MARGIN",
    "OutcomePolicy",
    "check_deadline",
    "describe",
    "is_permanent",
    "outcome_error",
    "raise_for_outcome",
    "timeout_error",
]

#: Terminal statuses that fail a task unless the caller says otherwise.
DEFAULT_FAIL_ON: frozenset[BatchStatus] = frozenset({BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})

#: The completion window every batch is created with today (``"24h"``), in seconds.
COMPLETION_WINDOW = 24 * 3600.0
#: Time a batch may take past its window to show its end: a batch that expires at the window's end
#: is marked ``expired`` (and its partial output written) some minutes later, and a large one that
#: completes right at the end spends as long ``finalizing``.
FINALIZE_MARGIN = 3600.0
#: The one default wait timeout, of every wait (``client.batches.wait``, the Airflow operator and
#: sensor, the Prefect tasks and flow, ``batch-ops submit/status --wait``): the completion window plus
#: the finalizing margin, counted from the start of the wait. A wait starts when (or after) its batch
#: was created, so against an API that ends batches at their window (OpenAI: ``expired`` at 24 h) the
#: wait always sees the batch end, expired at worst, with an hour to spare — where 24 h (the core's and
#: the CLI's default until 0.5) could time out an instant before an expiry, and 48 h (Airflow's) only
#: held a worker slot or a trigger a day longer for nothing. An API that lets a batch run past its
#: window (Azure OpenAI does not expire it at 24 h) ends the wait with a ``BatchTimeoutError`` while
#: the batch goes on: wait again (an Airflow retry re-attaches), or pass a longer ``timeout``.
DEFAULT_WAIT_TIMEOUT = COMPLETION_WINDOW + FINALIZE_MARGIN


def describe(batch: Batch) -> str:
    """One line for logs and progress: ``in_progress 40/100 (2 failed)``."""
    c = batch.request_counts
    failed = f" ({c.failed} failed)" if c.failed else ""
    return f"{batch.status.value} {c.done}/{c.total}{failed}"


def _error_summary(batch: Batch) -> str:
    if batch.errors is None or not batch.errors.data:
        return ""
    parts = []
    for err in batch.errors.data[:5]:
        line = f" line {err.line}" if err.line is not None else ""
        parts.append(f"{err.code}{line}: {err.message}")
    more = len(batch.errors.data) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def outcome_error(
    batch: Batch,
    *,
    fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
    fail_on_request_failures: bool = False,
) -> BatchOutcomeError | None:
    """The exception a terminal batch deserves under a policy, or None when it is acceptable.

    Examples:
        >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="expired",
        ...           created_at=0, output_file_id="file-out", request_counts={"total": 4, "completed": 3})
        >>> type(outcome_error(b)).__name__
        'BatchExpiredError'
        >>> outcome_error(b, fail_on=[]) is None
        True
    """
    statuses = {BatchStatus.parse(s) for s in fail_on}
    status = batch.status
    files = f" output_file_id={batch.output_file_id} error_file_id={batch.error_file_id}"
    if status in statuses:
        if status is BatchStatus.FAILED:
            why = _error_summary(batch) or "no error details"
            return BatchFailedError(f"Batch {batch.id} failed: {why}", batch=batch)
        if status is BatchStatus.EXPIRED:
            return BatchExpiredError(
                f"Batch {batch.id} expired with {describe(batch)}; completed work is in its output file.{files}",
                batch=batch,
            )
        if status is BatchStatus.CANCELLED:
            return BatchCancelledError(
                f"Batch {batch.id} was cancelled with {describe(batch)}; completed work is in its output file.{files}",
                batch=batch,
            )
    if fail_on_request_failures and status is BatchStatus.COMPLETED and batch.request_counts.failed > 0:
        return RequestFailuresError(
            f"Batch {batch.id} completed but {batch.request_counts.failed} of {batch.request_counts.total} "
            f"requests failed; see error_file_id={batch.error_file_id}",
            batch=batch,
        )
    return None


def raise_for_outcome(
    batch: Batch,
    *,
    fail_on: Collection[BatchStatus | str] = DEFAULT_FAIL_ON,
    fail_on_request_failures: bool = False,
) -> Batch:
    """Return the batch, or raise the outcome error ``outcome_error`` chose for it."""
    error = outcome_error(batch, fail_on=fail_on, fail_on_request_failures=fail_on_request_failures)
    if error is not None:
        raise error
    return batch


@dataclass(frozen=True)
class OutcomePolicy:
    """Which terminal outcomes the caller rejects: they fail the task, and a retry makes a new attempt.

    Examples:
        >>> OutcomePolicy.of(["failed", "Expired"]).fail_on == {BatchStatus.FAILED, BatchStatus.EXPIRED}
        True
        >>> OutcomePolicy.of(["in_progress"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: batch parameters: 1 problem:
          fail_on: invalid_fail_on: ...
    """

    fail_on: frozenset[BatchStatus] = DEFAULT_FAIL_ON
    fail_on_request_failures: bool = False

    @classmethod
    def of(
        cls, fail_on: Collection[BatchStatus | str] | None = None, fail_on_request_failures: bool = False
    ) -> OutcomePolicy:
        """Normalise what a user passed (names in any case), refusing statuses that are not terminal."""
        if fail_on is None:
            return cls(DEFAULT_FAIL_ON, bool(fail_on_request_failures))
        if isinstance(fail_on, (str, bytes)):
            fail_on = [fail_on] if isinstance(fail_on, str) else []
        statuses: set[BatchStatus] = set()
        bad: list[str] = []
        for value in fail_on:
            try:
                status = BatchStatus.parse(value)
            except ValueError:
                bad.append(repr(value))
                continue
            if not status.is_terminal:
                bad.append(status.value)
            statuses.add(status)
        if bad:
            raise InputValidationError(
                [Problem(rule="invalid_fail_on", param="fail_on",
                         message=f"fail_on may only name terminal statuses, got {', '.join(bad)}",
                         fix="use a subset of failed, expired, cancelled ([] accepts every outcome)")],
                source="batch parameters",
            )
        return cls(frozenset(statuses), bool(fail_on_request_failures))

    @property
    def names(self) -> tuple[str, ...]:
        """The rejected statuses as sorted strings (what Airflow templates and serializes)."""
        return tuple(sorted(s.value for s in self.fail_on))

    def rejection(self, batch: Batch, *, satisfied: bool = False) -> BatchOutcomeError | None:
        """The error a terminal batch deserves under this policy, or None when it is acceptable.

        ``satisfied``: every request of the batch's chain already has a success somewhere in it
        (``Submission.satisfied``): nothing is left to retry, so the outcome is accepted whatever
        the latest attempt's status.
        """
        if satisfied:
            return None
        return outcome_error(batch, fail_on=self.fail_on, fail_on_request_failures=self.fail_on_request_failures)

    def accepts(self, batch: Batch, *, satisfied: bool = False) -> bool:
        """True when this policy accepts the terminal ``batch`` (see :meth:`rejection`)."""
        return self.rejection(batch, satisfied=satisfied) is None

    def check(self, batch: Batch, *, satisfied: bool = False) -> Batch:
        """Return ``batch`` when accepted; raise its outcome error otherwise."""
        error = self.rejection(batch, satisfied=satisfied)
        if error is not None:
            raise error
        return batch


def check_deadline(deadline: float | None, *, now: float, what: str) -> None:
    """Raise ``BatchTimeoutError`` when ``deadline`` (epoch seconds; None: none) has passed: the
    budget of work that spans many waits (a job's steps), ``what`` naming it.

    Examples:
        >>> check_deadline(None, now=5.0, what="Job j"), check_deadline(10.0, now=5.0, what="Job j")
        (None, None)
        >>> check_deadline(10.0, now=10.0, what="Job j (2/4 parts done)")
        Traceback (most recent call last):
        ...
        batch_ops.errors.BatchTimeoutError: Job j (2/4 parts done) ran past its timeout
    """
    if deadline is not None and now >= deadline:
        raise BatchTimeoutError(f"{what} ran past its timeout", deadline=deadline)


def timeout_error(
    batch_id: str, *, deadline: float | None, last: Batch | None, cancel: str | None = None
) -> BatchTimeoutError:
    """The error for a wait that ran out of time, worded once for every adapter.

    ``cancel`` says what ``cancel_on_timeout`` did: None (not asked: the batch keeps running),
    ``"requested"``, or why the cancel failed. The error's ``details["cancel"]`` holds it too.

    Examples:
        >>> str(timeout_error("b1", deadline=None, last=None))
        'Timed out waiting for batch b1; it keeps running on the server: wait again, raise the timeout, or cancel it.'
        >>> str(timeout_error("b1", deadline=None, last=None, cancel="requested"))  # doctest: +ELLIPSIS
        'Timed out waiting for batch b1; cancel requested (cancel_on_timeout=True): completed work stays in its ...'
    """
    state = f" (last seen {describe(last)})" if last is not None else ""
    if cancel is None:
        note = "it keeps running on the server: wait again, raise the timeout, or cancel it"
    elif cancel == "requested":
        note = "cancel requested (cancel_on_timeout=True): completed work stays in its output file"
    else:
        note = f"cancelling it failed ({cancel}): it keeps running on the server"
    return BatchTimeoutError(
        f"Timed out waiting for batch {batch_id}{state}; {note}.",
        batch=last,
        batch_id=batch_id,
        deadline=deadline,
        cancel=cancel,
    )

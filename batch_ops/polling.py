"""Waiting for a batch, as pure decisions: the clients, the Airflow trigger and the Prefect
task only loop around :class:`BatchPoller` and never decide anything themselves.

This module holds the wait's schedule only (when to poll next, when the deadline or a run of
failed polls ends it). How an outcome ends a task — accepted or not, the outcome errors, the
timeout error — is :mod:`batch_ops.outcomes`' (the names it held before are still importable
here, with a ``DeprecationWarning``).

The poller knows an absolute wall-clock ``deadline`` (epoch seconds), so a waiter that
resumes in another process (a restarted Airflow triggerer) keeps the original budget.

Examples:
    >>> from batch_ops.models import Batch
    >>> p = BatchPoller(poll_interval=10, max_poll_interval=40, timeout=100, jitter=0)
    >>> p.start(now=1000.0)
    >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0)
    >>> p.decide(b, now=1000.0)
    PollDecision(action='wait', delay=10.0, reason='in_progress 0/0', wake_on_event=False, polling_delay=None)
    >>> p.decide(b, now=1010.0).delay   # no progress since the last poll: back off
    15.0
    >>> p.decide(b, now=1101.0).action
    'timeout'
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from batch_ops import outcomes as _outcomes
from batch_ops._deprecated import moved
from batch_ops.errors import InputValidationError, Problem
from batch_ops.models import Batch

__all__ = ["BatchPoller", "Poll", "PollDecision", "Reconnect", "WaitMany"]


@dataclass(frozen=True)
class PollDecision:
    """What a waiter does next: ``done`` (terminal), ``wait`` ``delay`` seconds, or ``timeout``.

    ``wake_on_event``: the wait may end early on the batch's webhook event (webhooks on); ``delay``
    is then the safety poll, and ``polling_delay`` the ordinary schedule's pause, which applies
    whenever no working events subscription can end the wait (the driver knows, at the moment
    it sleeps: a decision taken earlier cannot).
    """

    action: Literal["done", "wait", "timeout"]
    delay: float = 0.0
    reason: str = ""
    wake_on_event: bool = False
    polling_delay: float | None = None


@dataclass(frozen=True)
class Poll:
    """One poll's outcome (``client.batches.poll``): the batch seen and the poller's decision, or —
    after a transient failure the poller still tolerates — no batch, the decision to look again, and
    the failure's text.

    Examples:
        >>> Poll(None, PollDecision("wait", 30.0, "poll failed (1): 503"), "503").done
        False
    """

    batch: Batch | None
    decision: PollDecision
    error: str = ""

    @property
    def done(self) -> bool:
        """The batch is terminal: the wait is over."""
        return self.batch is not None and self.decision.action == "done"


@dataclass(frozen=True)
class WaitMany:
    """How a wait for several batches ended (``client.batches.wait_many``): the batches as last seen
    and ``reason``: ``ended`` (at least one is terminal: :attr:`ended`), ``wake`` (the wake-up time
    the caller gave passed) or ``timeout`` (the deadline passed)."""

    batches: tuple[Batch, ...]
    reason: Literal["ended", "wake", "timeout"]

    @property
    def ended(self) -> list[str]:
        """The ids of the batches that are terminal."""
        return [b.id for b in self.batches if b.is_terminal]


@dataclass
class BatchPoller:
    """Poll interval with back-off, a wall-clock deadline and a bound on consecutive failures.

    Args:
        poll_interval: seconds between polls while the batch makes progress.
        max_poll_interval: the back-off ceiling when nothing changes (default 4x poll_interval,
            at most 10 minutes). Progress (status or request counts changed) resets it.
        backoff: factor applied to the interval after each poll without progress.
        timeout: seconds from ``start`` until the wait gives up; None waits forever.
        deadline: absolute epoch seconds; wins over ``timeout`` (set when resuming).
        max_consecutive_failures: transient poll failures tolerated in a row.
        jitter: share of each delay randomised, so many waiters do not poll in lockstep.
        safety_poll_interval: set when batch webhooks wake the waiter (an events subscription):
            between events it polls only this often (default off; 1800 s is the usual value),
            in case an event was lost. Each decision also carries the ordinary schedule's pause
            (``polling_delay``), which the driver applies while the subscription is not working.

    Examples:
        >>> p = BatchPoller(poll_interval=10, jitter=0, safety_poll_interval=1800)
        >>> p.start(now=0.0)
        >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0)
        >>> p.decide(b, now=0.0)
        PollDecision(action='wait', delay=1800.0, reason='in_progress 0/0', wake_on_event=True, polling_delay=10.0)
        >>> p.decide(b, now=1.0).polling_delay  # no progress: the ordinary schedule backs off
        15.0
    """

    poll_interval: float = 30.0
    max_poll_interval: float | None = None
    backoff: float = 1.5
    timeout: float | None = None
    deadline: float | None = None
    max_consecutive_failures: int = 5
    jitter: float = 0.1
    safety_poll_interval: float | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _interval: float = field(default=0.0, init=False, repr=False)
    _last_seen: Hashable | None = field(default=None, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        _seconds("poll_interval", self.poll_interval, optional=False)
        _seconds("timeout", self.timeout)
        _seconds("max_poll_interval", self.max_poll_interval)
        _seconds("safety_poll_interval", self.safety_poll_interval)
        if self.deadline is not None and (isinstance(self.deadline, bool)
                                          or not isinstance(self.deadline, (int, float))):
            _seconds("deadline", self.deadline)  # an epoch time: any number, but a number
        if self.max_poll_interval is None:
            self.max_poll_interval = max(self.poll_interval, min(self.poll_interval * 4, 600.0))
        self._interval = float(self.poll_interval)

    def start(self, *, now: float) -> None:
        """Fix the deadline, unless one was given (a resumed wait keeps its budget)."""
        if self.deadline is None and self.timeout is not None:
            self.deadline = now + self.timeout

    def remaining(self, *, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now

    def first_delay(self, *, now: float, spread: float | None = None) -> float:
        """A random delay in ``[0, spread)`` before the first poll (default: one interval).

        Spreading first polls keeps a restarted triggerer with 1,000 waiting batches from
        sending 1,000 requests in the same instant.
        """
        window = self.poll_interval if spread is None else spread
        delay = self.rng.uniform(0, max(window, 0.0))
        return self._clip(delay, now=now)

    def clip(self, delay: float, *, now: float) -> float:
        """``delay``, shortened so that it never passes the deadline."""
        return self._clip(delay, now=now)

    def decide(self, batch: Batch, *, now: float) -> PollDecision:
        """The verdict after one successful poll returned ``batch``."""
        self._failures = 0
        if batch.status.is_terminal:
            return PollDecision("done", 0.0, batch.status.value)
        return self._wait_or_timeout(_progress(batch), _outcomes.describe(batch), now=now)

    def decide_all(self, batches: Sequence[Batch], *, now: float) -> PollDecision:
        """The verdict after one poll of several batches: ``done`` as soon as any of them ended.

        Examples:
            >>> p = BatchPoller(poll_interval=10, jitter=0)
            >>> p.start(now=0.0)
            >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="in_progress", created_at=0)
            >>> c = Batch(id="c", endpoint="/v1/embeddings", input_file_id="f", status="expired", created_at=0)
            >>> p.decide_all([b, c], now=0.0).reason
            'ended: c'
        """
        self._failures = 0
        ended = [b.id for b in batches if b.status.is_terminal]
        if ended:
            return PollDecision("done", 0.0, "ended: " + ", ".join(ended))
        seen = tuple(sorted((b.id, *_progress(b)) for b in batches))
        return self._wait_or_timeout(seen, f"{len(batches)} batches running", now=now)

    def _wait_or_timeout(self, seen: Hashable, reason: str, *, now: float) -> PollDecision:
        if self.deadline is not None and now >= self.deadline:
            return PollDecision("timeout", 0.0, f"deadline passed while {reason}")
        if self._last_seen is not None and seen == self._last_seen:
            assert self.max_poll_interval is not None
            self._interval = min(self._interval * self.backoff, self.max_poll_interval)
        else:
            self._interval = float(self.poll_interval)
        self._last_seen = seen
        delay = self._interval * (1 + self.rng.uniform(-self.jitter, self.jitter)) if self.jitter else self._interval
        if self.safety_poll_interval is None:
            return PollDecision("wait", self._clip(delay, now=now), reason)
        # The event ends the pause; its length only matters for an event that never comes. Whether
        # events can come is the driver's to say when it sleeps (the subscription may go down, or
        # be down already, at any moment): the ordinary pause travels along for that case.
        safety = float(self.safety_poll_interval)
        safety *= (1 + self.rng.uniform(-self.jitter, self.jitter)) if self.jitter else 1
        return PollDecision("wait", self._clip(safety, now=now), reason, wake_on_event=True,
                            polling_delay=self._clip(delay, now=now))

    def failed(self, *, now: float, retryable: bool, error: str = "") -> PollDecision:
        """The verdict after a poll raised. Permanent errors should not reach here.

        Returns ``wait`` while fewer than ``max_consecutive_failures`` transient failures
        happened in a row, ``timeout`` once the deadline has passed; raises nothing itself.
        A caller sees ``action == "done"`` with reason ``gave_up`` when it must stop.
        """
        self._failures += 1
        if not retryable or self._failures > self.max_consecutive_failures:
            return PollDecision("done", 0.0, f"gave_up after {self._failures} failed polls: {error}")
        if self.deadline is not None and now >= self.deadline:
            return PollDecision("timeout", 0.0, f"deadline passed after failed poll: {error}")
        delay = min(self.poll_interval * (2 ** (self._failures - 1)), self.max_poll_interval or self.poll_interval)
        return PollDecision("wait", self._clip(delay, now=now), f"poll failed ({self._failures}): {error}")

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _clip(self, delay: float, *, now: float) -> float:
        # Never sleep past the deadline: wake up at it and report the timeout on time.
        if self.deadline is not None:
            delay = min(delay, max(self.deadline - now, 0.0))
        return max(delay, 0.0)


@dataclass
class Reconnect:
    """The pause before trying again to reach a stream that did not answer (the webhook receiver's
    events, which waits and Airflow's event triggers long-poll): doubling from ``initial`` up to
    ``ceiling``, back to ``initial`` once it answers. One schedule for every reader of the stream.

    Examples:
        >>> r = Reconnect()
        >>> [r.failed() for _ in range(7)]
        [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
        >>> r.answered(); r.failed()
        0.5
    """

    initial: float = 0.5
    ceiling: float = 15.0
    _next: float = field(default=0.0, init=False, repr=False)

    def failed(self) -> float:
        """The pause after a failed attempt (the next one will be longer)."""
        pause = self._next or self.initial
        self._next = min(pause * 2, self.ceiling)
        return pause

    def answered(self) -> None:
        """The stream answered: the next failure starts the schedule over."""
        self._next = 0.0


def _seconds(name: str, value: object, *, optional: bool = True) -> None:
    """Refuse what is not a positive number of seconds, naming the parameter (before any request)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        shown = f"a {type(value).__name__} ({value!r})" if not isinstance(value, (int, float)) else repr(value)
        fix = f"pass a number of seconds above 0{', or None' if optional else ''}, e.g. {name}=60"
        raise InputValidationError(
            [Problem(rule="invalid_argument", param=name, message=f"{name} is {shown}", fix=fix)],
            source="wait parameters",
        )


def _progress(batch: Batch) -> tuple[str, int, int]:
    return (batch.status.value, batch.request_counts.completed, batch.request_counts.failed)


__getattr__ = moved(__name__, dict.fromkeys(
    ("DEFAULT_FAIL_ON", "describe", "outcome_error", "raise_for_outcome", "timeout_error"), _outcomes))

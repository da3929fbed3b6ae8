"""The client's call sequences, written once as generators of effects.

A *plan* is a generator that yields effects — :class:`Send` one HTTP request, :class:`Sleep`,
:class:`Notify` a callback, :class:`Work` (blocking file work) — and receives each effect's
result (or, thrown into it, the exception the effect raised). It decides everything
(retry or not, how long to wait, whether a create may already have happened, when a wait is
over); it performs no I/O, and it never names a provider: every request comes from a
:class:`~batch_ops.dialects.Dialect` and every answer is read by it. ``BatchClient`` runs plans
with blocking httpx and ``time.sleep``,
``AsyncBatchClient`` with async httpx and ``asyncio.sleep``. One implementation, two drivers:
the sync and async clients cannot drift apart, and the plans are testable step by step.

Examples:
    >>> plan = send_with_retries(Send("GET", "/batches/b1"), policy=RetryPolicy(max_retries=1, initial=1))
    >>> first = next(plan)
    >>> first.method, first.path
    ('GET', '/batches/b1')
    >>> plan.send(Reply(status=503, headers={"retry-after": "2"})).seconds
    2.0
    >>> next(plan) == first  # the retry
    True
    >>> try:
    ...     plan.send(Reply(status=200, body=b'{"ok": 1}'))
    ... except StopIteration as done:
    ...     done.value.json()
    {'ok': 1}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from batch_ops._files import safe_file_name
from batch_ops._http import RetryPolicy
from batch_ops.chain import AttemptChain
from batch_ops.dialects import Dialect
from batch_ops.effects import (
    MAX_REDIRECTS,
    Notify,
    Plan,
    Reply,
    Send,
    Sleep,
    Work,
    api_path,
    follow,
    list_params,
    parse,
)
from batch_ops.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    BatchOpsError,
    BatchTimeoutError,
    is_retryable_status,
)
from batch_ops.identity.keys import LOOKBACK_SKEW, new_idempotency_key
from batch_ops.models import Batch, BatchList, FileList, FileObject
from batch_ops.outcomes import is_permanent, timeout_error
from batch_ops.polling import BatchPoller, Poll, PollDecision, WaitMany
from batch_ops.results import rewrite_results, split_results

_T = TypeVar("_T")

__all__ = [
    "Notify",
    "Plan",
    "Reply",
    "Send",
    "Sleep",
    "Work",
    "api_path",
    "call_plan",
    "create_plan",
    "find_by_key_plan",
    "follow",
    "list_params",
    "new_idempotency_key",
    "parse",
    "poll_plan",
    "ResultPaths",
    "chain_results_plan",
    "download_results_plan",
    "send_with_retries",
    "timeout_plan",
    "wait_many_plan",
    "wait_plan",
]

#: Clock used by plans; tests may patch it (and the drivers' sleeps), nothing else.
clock: Callable[[], float] = time.time



def _retry_delay(policy: RetryPolicy, reply: Reply, *, attempt: int, started: float) -> float | None:
    now = clock()
    return policy.delay(attempt=attempt, elapsed=now - started, status=reply.status, headers=reply.headers,
                        connection_error=reply.error is not None, now=now)


def send_with_retries(send: Send, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Reply]:
    """Send until success, a permanent error, the retry budget is spent, or ``send.deadline`` passes.

    Redirects are followed (at most :data:`MAX_REDIRECTS`), with the credentials only while
    the origin stays the same.
    """
    started = clock()
    attempt = 0
    current = send
    redirects = 0
    while True:
        if send.deadline is not None and clock() >= send.deadline:
            raise APITimeoutError(f"{send.method} {send.path}: the deadline passed before an answer came")
        reply: Reply = yield current
        if reply.ok:
            return reply
        location = reply.redirect
        if location is not None:
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise APIConnectionError(f"{send.method} {send.path}: more than {MAX_REDIRECTS} redirects")
            current = follow(current, reply, location)
            continue
        if send.deadline is not None and clock() >= send.deadline:
            raise reply.exception(current)  # no time left for another try
        delay = _retry_delay(policy, reply, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(current)
        if send.deadline is not None:
            delay = min(delay, max(send.deadline - clock(), 0.0))
        what = reply.error or f"HTTP {reply.status}"
        yield Sleep(delay, f"{send.method} {send.path} failed ({what}); retry {attempt + 1} of {policy.max_retries} "
                           f"in {delay:.1f} s")
        attempt += 1
        current = send  # a retry starts over at the original URL


def call_plan(send: Send, read: Callable[[Reply, Send], _T], *, policy: RetryPolicy,
              what: str) -> Generator[Send | Sleep, Any, _T]:
    """:func:`send_with_retries`, then the body read by ``read`` (a dialect's parser). A 2xx whose
    body is not ``what`` (a proxy's error page) is retried like a 5xx, within the same budget,
    before it is raised."""
    started = clock()
    attempt = 0
    while True:
        reply = yield from send_with_retries(send, policy=policy)
        try:
            return read(reply, send)
        except APIResponseValidationError:
            delay = policy.delay(attempt=attempt, elapsed=clock() - started, connection_error=True, now=clock())
            if delay is None:
                raise
            yield Sleep(delay, f"{send.method} {send.path} answered with a body that is not {what}; "
                               f"retry {attempt + 1} of {policy.max_retries} in {delay:.1f} s")
            attempt += 1


def find_by_key_plan(key: str, *, since: float, dialect: Dialect,
                     policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch | None]:
    """Newest-first scan of the batch list for ``key``, back to ``since`` (epoch seconds)."""
    after: str | None = None
    while True:
        page = yield from list_batches_plan(limit=100, after=after, dialect=dialect, policy=policy)
        for batch in page.data:
            if dialect.key_of(batch) == key:
                return batch
        if not page.has_more or not page.data or not page.last_id:
            return None
        if min(b.created_at for b in page.data) < since:
            return None
        after = page.last_id


def create_plan(
    body: Mapping[str, Any], *, key: str, key_may_exist: bool, dialect: Dialect, policy: RetryPolicy,
    lookback: float, send: Send | None = None,
    lookup: Callable[[float], Generator[Any, Any, Batch | None]] | None = None,
) -> Generator[Any, Any, Batch]:
    """Create a batch at most once.

    A create is not idempotent on the server. So: when the key may already have been used
    (a caller-chosen key, e.g. an Airflow task retry), look it up first; and after any failure
    that may have reached the server (timeout, dropped connection, 5xx, 408, 409, an answer that
    is not a batch), look it up again before re-sending. A 429 or a refused connection means
    nothing was created. ``key`` is the one ``body`` carries (``dialect.create_body`` wrote it).

    ``send``: the create call itself, when it is not ``dialect.create_batch(body)`` (a body streamed
    from a work file); ``lookup(since)``: how a create that may have happened is looked for, when the
    batch cannot carry ``key`` (the key ledger's rule); default: by ``key`` in the batch list.
    """
    def find(since: float) -> Generator[Any, Any, Batch | None]:
        if lookup is not None:
            return (yield from lookup(since))
        return (yield from find_by_key_plan(key, since=since, dialect=dialect, policy=policy))

    if key_may_exist:
        found = yield from find(clock() - lookback)
        if found is not None:
            return found
    started = clock()
    first = send = send or dialect.create_batch(body)
    attempt = redirects = 0
    may_exist = False
    while True:
        if may_exist:
            found = yield from find(started - LOOKBACK_SKEW)
            if found is not None:
                return found
        reply: Reply = yield send
        location = reply.redirect
        if location is not None and redirects < MAX_REDIRECTS:
            redirects += 1
            send = follow(send, reply, location)
            continue
        send = first
        if reply.ok:
            try:
                return dialect.parse_batch(reply, send)
            except APIResponseValidationError:
                if _retry_delay(policy, Reply(error="unreadable"), attempt=attempt, started=started) is None:
                    raise
                may_exist = True  # something answered 2xx: the batch may well exist
        elif reply.error is not None:
            may_exist = may_exist or reply.sent
        elif reply.status is not None and reply.status != 429 and is_retryable_status(reply.status):
            may_exist = True
        failed = reply if not reply.ok else Reply(error="an answer that is not a batch")
        delay = _retry_delay(policy, failed, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(send)
        yield Sleep(delay, f"{first.method} {first.path} failed ({failed.error or f'HTTP {failed.status}'}); "
                           f"retry {attempt + 1} of {policy.max_retries} in {delay:.1f} s")
        attempt += 1


def _failed_poll(poller: BatchPoller, exc: BatchOpsError) -> PollDecision:
    """The poller's verdict on a poll that raised ``exc``; raises ``exc`` when polling on cannot help:
    a permanent error (the batch does not exist, the key is wrong) at once, a transient one once the
    poller has seen too many in a row."""
    if is_permanent(exc):
        raise exc
    decision = poller.failed(now=clock(), retryable=True, error=str(exc))
    if decision.action == "done":
        raise exc
    return decision


#: What a failed poll may raise that a wait tolerates (up to the poller's bound), unless permanent.
_POLL_FAILURES = (APIStatusError, APIConnectionError, APIResponseValidationError)


def timeout_plan(
    batch_id: str, *, deadline: float | None, last: Batch | None, cancel: bool, dialect: Dialect,
    policy: RetryPolicy,
) -> Generator[Send | Sleep, Any, BatchTimeoutError]:
    """The error that ends a wait out of time, after cancelling the batch when ``cancel`` (the caller's
    ``cancel_on_timeout``). A cancel that fails is said in the error; the error is returned, not raised."""
    if not cancel:
        return timeout_error(batch_id, deadline=deadline, last=last)
    try:
        yield from cancel_batch_plan(batch_id, dialect=dialect, policy=policy)
    except BatchOpsError as exc:
        return timeout_error(batch_id, deadline=deadline, last=last, cancel=f"{type(exc).__name__}: {exc}")
    return timeout_error(batch_id, deadline=deadline, last=last, cancel="requested")


def wait_plan(
    batch_id: str,
    *,
    poller: BatchPoller,
    dialect: Dialect,
    policy: RetryPolicy,
    on_poll: Callable[[Batch], Any] | None = None,
    first_delay: float = 0.0,
    cancel_on_timeout: bool = False,
) -> Generator[Send | Sleep | Notify, Any, Batch]:
    """Poll until the batch is terminal; raise BatchTimeoutError at the deadline.

    Transient poll failures (after the per-request retries) are tolerated up to the poller's
    bound, an answer that is not a batch among them; permanent 4xx (the batch does not exist,
    the key is wrong) end the wait at once. Every request carries the wait's deadline, so a
    server that never answers, or answers a byte at a time, cannot hold the wait past it. At the
    deadline the batch is cancelled first when ``cancel_on_timeout`` (:func:`timeout_plan`).

    ``first_delay`` seconds pass before the first poll (a spread, so many waits do not poll in
    the same instant). With webhooks (``poller.safety_poll_interval``), every pause is a
    :class:`Sleep` that the batch's event may end early; between events the wait polls only
    every ``safety_poll_interval`` seconds, and on its ordinary schedule (``Sleep.polling``)
    whenever the driver has no working subscription at that moment: a wait that starts while
    the receiver is down polls at its interval from the start.
    """
    poller.start(now=clock())
    send = dialect.retrieve_batch(batch_id, deadline=poller.deadline)
    last: Batch | None = None
    last_body = b""
    events = poller.safety_poll_interval is not None
    if first_delay > 0:
        yield Sleep(poller.clip(first_delay, now=clock()), wake_on=batch_id if events else None)
    while True:
        try:
            reply = yield from send_with_retries(send, policy=policy)
            # A long batch answers the same bytes poll after poll: parse only what changed
            # (Batch is frozen, so handing out the same object again is safe).
            if last is None or reply.body != last_body:
                last, last_body = dialect.parse_batch(reply, send), reply.body
        except _POLL_FAILURES as exc:
            decision = _failed_poll(poller, exc)
        else:
            if on_poll is not None:
                yield Notify(on_poll, last)
            decision = poller.decide(last, now=clock())
            if decision.action == "done":
                return last
        if decision.action == "timeout":
            raise (yield from timeout_plan(batch_id, deadline=poller.deadline, last=last, cancel=cancel_on_timeout,
                                           dialect=dialect, policy=policy))
        yield Sleep(decision.delay, wake_on=batch_id if decision.wake_on_event else None,
                    polling=decision.polling_delay)


def _get_batch_plan(
    batch_id: str, *, deadline: float | None, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, Batch]:
    """One look at a batch for a wait: retried within the wait's deadline, and an answer that is
    not a batch raised (the wait counts it as a failed poll) rather than retried here."""
    send = dialect.retrieve_batch(batch_id, deadline=deadline)
    reply = yield from send_with_retries(send, policy=policy)
    return dialect.parse_batch(reply, send)


def poll_plan(
    batch_id: str, *, poller: BatchPoller, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep, Any, Poll]:
    """One poll of a wait that something else schedules (Airflow's sensor in poke or reschedule
    mode): the batch and the poller's decision, or — after a transient failure the poller still
    tolerates — no batch and the decision to look again. Raises what waiting cannot fix: a
    permanent error, or one failure too many in a row (the poller counts them across polls).

    Examples:
        >>> from batch_ops.dialects import OPENAI
        >>> p = BatchPoller(poll_interval=5, jitter=0)
        >>> plan = poll_plan("b1", poller=p, dialect=OPENAI, policy=RetryPolicy(max_retries=0))
        >>> next(plan).path
        '/batches/b1'
        >>> try:
        ...     plan.send(Reply(status=200, body=b'{"id": "b1", "endpoint": "/v1/embeddings", "input_file_id": "f",'
        ...                                      b' "status": "completed", "created_at": 0}'))
        ... except StopIteration as done:
        ...     done.value.done, done.value.batch.id
        (True, 'b1')
    """
    poller.start(now=clock())
    try:
        batch = yield from _get_batch_plan(batch_id, deadline=poller.deadline, dialect=dialect, policy=policy)
    except _POLL_FAILURES as exc:
        return Poll(None, _failed_poll(poller, exc), str(exc))
    return Poll(batch, poller.decide(batch, now=clock()))


def wait_many_plan(
    batch_ids: Sequence[str],
    *,
    poller: BatchPoller,
    dialect: Dialect,
    policy: RetryPolicy,
    wake_at: float | None = None,
    first_delay: float = 0.0,
) -> Generator[Send | Sleep, Any, WaitMany]:
    """Poll several batches until any of them ends, ``wake_at`` passes, or the poller's deadline does.

    The wait of a job over many batches (Airflow's job trigger): each round looks at every batch
    once; the poller decides the pause (backing off while nothing changes), tolerates a bounded run
    of failed rounds (a permanent error ends the wait at once, raised), and owns the deadline.
    ``wake_at`` (epoch seconds) is when the job wants to act anyway (a token-limit back-off is
    over). Returns the batches as last seen and why the wait ended: ``ended`` (at least one is
    terminal), ``wake`` or ``timeout`` (the deadline wins when both have passed).
    """
    ids = list(batch_ids)
    poller.start(now=clock())

    def pause(delay: float) -> float:
        return delay if wake_at is None else min(delay, max(wake_at - clock(), 0.0))

    if first_delay > 0:
        yield Sleep(pause(poller.clip(first_delay, now=clock())))
    last: tuple[Batch, ...] = ()
    while True:
        try:
            seen = []
            for batch_id in ids:
                seen.append((yield from _get_batch_plan(batch_id, deadline=poller.deadline, dialect=dialect,
                                                        policy=policy)))
        except _POLL_FAILURES as exc:
            decision = _failed_poll(poller, exc)
        else:
            last = tuple(seen)
            decision = poller.decide_all(last, now=clock())
            if decision.action == "done":
                return WaitMany(last, "ended")
        if decision.action == "timeout":
            return WaitMany(last, "timeout")
        if wake_at is not None and clock() >= wake_at:
            return WaitMany(last, "wake")
        yield Sleep(pause(decision.delay))


# ---------------------------------------------------------------------------------------------
# one call each: written once for both clients
# ---------------------------------------------------------------------------------------------


def upload_plan(path: Path, *, purpose: str | None = None, filename: str | None = None, dialect: Dialect,
                policy: RetryPolicy) -> Generator[Send | Sleep, Any, FileObject]:
    """Upload a batch input: one request (OpenAI's multipart), or two where the dialect opens an
    upload first (:meth:`~batch_ops.dialects.Dialect.start_upload`: Gemini's resumable protocol,
    whose first answer says where the bytes go)."""
    start = dialect.start_upload(path, purpose=purpose, filename=filename)
    if start is None:
        send = dialect.upload_file(path, purpose=purpose, filename=filename)
    else:
        opened = yield from send_with_retries(start, policy=policy)
        send = dialect.finish_upload(path, opened, start)
    return (yield from call_plan(send, dialect.parse_file, policy=policy, what="a file object"))


def retrieve_file_plan(file_id: str, *, dialect: Dialect,
                       policy: RetryPolicy) -> Generator[Send | Sleep, Any, FileObject]:
    send = dialect.retrieve_file(file_id)
    return (yield from call_plan(send, dialect.parse_file, policy=policy, what="a file object"))


def list_files_plan(*, purpose: str | None, dialect: Dialect, policy: RetryPolicy,
                    params: Mapping[str, Any] | None = None) -> Generator[Send | Sleep, Any, FileList]:
    send = dialect.list_files(purpose=purpose, params=params)
    return (yield from call_plan(send, dialect.parse_file_list, policy=policy, what="a list of files"))


def download_plan(file_id: str, target: Path, *, dialect: Dialect,
                  policy: RetryPolicy) -> Generator[Send | Sleep, Any, Path]:
    yield from send_with_retries(dialect.download_file(file_id, target), policy=policy)
    return target


@dataclass(frozen=True)
class ResultPaths:
    """Where one batch's downloaded results are: its output (successes) and error files, or None."""

    output: Path | None = None
    error: Path | None = None


def download_results_plan(
    batch: Batch, directory: Path, *, dialect: Dialect, policy: RetryPolicy,
    kinds: Collection[str] = ("output", "error"),
) -> Generator[Send | Sleep | Work, Any, ResultPaths]:
    """Download the files that hold ``batch``'s results into ``directory`` (``<id>.output.jsonl``,
    ``<id>.errors.jsonl``, the id made a safe file name), in OpenAI's line shape whatever the
    provider (a dialect that writes its results otherwise rewrites each file: see
    :meth:`~batch_ops.dialects.Dialect.result_line`); ``kinds`` limits it to some of them
    (``("output",)``: the successes only)."""
    found: dict[str, Path] = {}
    for result in dialect.result_files(batch):
        if result.kind == "results":  # successes and failures in one file: split it into the two
            mixed = directory / f"{safe_file_name(batch.id)}.results.jsonl"
            yield from download_plan(result.file_id, mixed, dialect=dialect, policy=policy)
            output, error = (directory / f"{safe_file_name(batch.id)}.{n}.jsonl" for n in ("output", "errors"))
            ok, failed = yield Work(partial(split_results, mixed, dialect.result_line, output, error))
            yield Work(partial(mixed.unlink, missing_ok=True))
            found.update({k: p for k, p, n in (("output", output, ok), ("error", error, failed))
                          if n and k in kinds})
            continue
        if result.kind not in kinds:
            continue
        # The id comes from the wire: one plain file name whatever it holds.
        name = "output" if result.kind == "output" else "errors"
        target = directory / f"{safe_file_name(batch.id)}.{name}.jsonl"
        yield from download_plan(result.file_id, target, dialect=dialect, policy=policy)
        if dialect.rewrites_results:
            yield Work(partial(rewrite_results, target, dialect.result_line))
        found[result.kind] = target
    return ResultPaths(found.get("output"), found.get("error"))


def chain_results_plan(
    chain: AttemptChain, directory: Path, *, dialect: Dialect, policy: RetryPolicy
) -> Generator[Send | Sleep | Work, Any, list[tuple[Path | None, Path | None, int]]]:
    """Download the results of every batch of ``chain`` (duplicates included: they were paid for too);
    returns ``(output, error, attempt number)`` per batch, oldest attempt first, for
    :func:`~batch_ops.results.join_chain_results`."""
    pairs = []
    for attempt in chain.attempts:
        for batch in (attempt.batch, *attempt.duplicates):
            paths = yield from download_results_plan(batch, directory, dialect=dialect, policy=policy)
            pairs.append((paths.output, paths.error, attempt.number))
    return pairs


def delete_file_plan(file_id: str, *, dialect: Dialect, policy: RetryPolicy) -> Generator[Send | Sleep, Any, bool]:
    reply = yield from send_with_retries(dialect.delete_file(file_id), policy=policy)
    return dialect.parse_deleted(reply)


def retrieve_batch_plan(batch_id: str, *, dialect: Dialect,
                        policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch]:
    send = dialect.retrieve_batch(batch_id)
    return (yield from call_plan(send, dialect.parse_batch, policy=policy, what="a batch"))


def cancel_batch_plan(batch_id: str, *, dialect: Dialect,
                      policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch]:
    send = dialect.cancel_batch(batch_id)
    if dialect.cancel_answers_batch:
        return (yield from call_plan(send, dialect.parse_batch, policy=policy, what="a batch"))
    # The API answers a cancel without the batch (Gemini: ``{}``): look at it now.
    yield from send_with_retries(send, policy=policy)
    return (yield from retrieve_batch_plan(batch_id, dialect=dialect, policy=policy))


def list_batches_plan(*, limit: int, after: str | None, dialect: Dialect,
                      policy: RetryPolicy) -> Generator[Send | Sleep, Any, BatchList]:
    send = dialect.list_batches(limit=limit, after=after)
    page = yield from call_plan(send, dialect.parse_batch_list, policy=policy, what="a list of batches")
    companion = dialect.batch_list_companion()
    if companion is None or not page.data:
        return page
    # Batches that carry no metadata: whose each one is, is read from another call (Together: the names
    # of their uploaded inputs), so every scan by key sees what a metadata key would have told it.
    return (yield from call_plan(companion, partial(_annotated, dialect, page), policy=policy,
                                 what="a list of files"))


def _annotated(dialect: Dialect, page: BatchList, reply: Reply, send: Send) -> BatchList:
    return dialect.annotate_batch_list(page, reply, send)

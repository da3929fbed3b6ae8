"""Attempt chains: every batch one idempotency key has paid for, found from the API alone.

A key ``K`` names one piece of work (an Airflow task instance, a Prefect flow run, a job part, a
``submit`` call), and the requests' fingerprint ``F`` (:mod:`batch_ops.fingerprint`) says which
requests it was paid for. A *chain* is one key with one set of requests: its *attempts* are the
batches whose metadata carries ``K@F``, ``K@F.1``, ``K@F.2``, … under
:data:`IDEMPOTENCY_METADATA_KEY`. Listing the account's batches rebuilds the chains on any
worker, on any machine, with no local state. Everything here is a pure decision over that list:

* :func:`next_step` — attach to the running attempt, stop (the outcome is acceptable), or make
  attempt ``n + 1``; a new attempt only when the caller's :class:`OutcomePolicy` rejects the
  last outcome (``failed``, ``expired``, ``cancelled``, or request failures when asked);
* :meth:`AttemptChain.from_batches` — two batches with the same attempt key (two tries that
  created at the same moment) collapse: the earliest by ``(created_at, id)`` is the attempt, the
  others are *duplicates* that cancel themselves; their finished work is still harvested;
* chain-wide counts and the result dict that Airflow's XCom and Prefect's ``BatchResult`` share.

Which requests a new attempt carries (only those without a success anywhere in the chain) is
decided by reading the earlier attempts' output files: see ``batch_ops._submit``.

Why the fingerprint is folded into the attempt key rather than written as a metadata pair of its
own: a chain's identity is then one exact string, so everything that finds a batch by its attempt
key — the chain scan, the lookup after a lost create answer, the reconcile of concurrent creates,
the upload name — keeps two sets of requests apart with no change, even when two tries with
different requests create at the same moment; and the user keeps every metadata pair batch_ops
did not already use (16 pairs, one ours, one more for the owner in the adapters). The price is
18 characters of the 512 a metadata value may hold: a key may have 491 characters (was 508).
Every attempt carries the fingerprint of the *whole* work (attempt ``n > 0`` carries only the
unfinished requests, but names the chain they came from).

Batches written before fingerprints (``K``, ``K.1``, …) form the key's *unfingerprinted* chain
(``fingerprint=None``); ``batch_ops._submit`` decides whether they hold the same requests. A key
whose spelling already ends like a fingerprint (``…@`` and 16 hex digits) gets a ``~`` before its
``@``, as a key ending in ``.<digits>`` does, so no two (key, fingerprint) pairs share a value;
an unfingerprinted batch whose key ended that way is not recognised (no derived key does).

Examples:
    >>> from batch_ops.models import Batch
    >>> def batch(i, key, status, created=0, **kw):
    ...     return Batch(id=f"batch_{i}", endpoint="/v1/embeddings", input_file_id="f", status=status,
    ...                  created_at=created, metadata={IDEMPOTENCY_METADATA_KEY: key}, **kw)
    >>> chain = AttemptChain.from_batches("k", [batch(1, "k", "expired"), batch(2, "other", "completed")])
    >>> chain.batch_ids, next_step(chain, OutcomePolicy())
    (['batch_1'], ChainStep(action='create', number=1, batch=None, reason='attempt 0 (batch_1) ended expired 0/0'))
    >>> chain = AttemptChain.from_batches("k", [*chain.batches, batch(3, "k.1", "in_progress", created=5)])
    >>> next_step(chain, OutcomePolicy()).action, chain.latest.id
    ('attach', 'batch_3')
    >>> fp = "0123456789abcdef"
    >>> chains = chains_of("k", [*chain.batches, batch(4, f"k@{fp}", "completed", created=9)])
    >>> sorted(chains, key=str), chains[fp].batch_ids, chains[fp].attempt_key(1)
    (['0123456789abcdef', None], ['batch_4'], 'k@0123456789abcdef.1')
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from batch_ops.errors import AttemptsExhaustedError, BatchOpsError, BatchOutcomeError, InputValidationError, Problem
from batch_ops.fingerprint import FINGERPRINT_LENGTH
from batch_ops.models import METADATA_VALUE_MAX, Batch, BatchStatus, RequestCounts, Usage
from batch_ops.polling import DEFAULT_FAIL_ON, describe, outcome_error

__all__ = [
    "IDEMPOTENCY_METADATA_KEY",
    "KEY_MAX_LENGTH",
    "MAX_ATTEMPTS",
    "Attempt",
    "AttemptChain",
    "ChainStep",
    "OutcomePolicy",
    "attempt_key",
    "attempt_number",
    "chains_of",
    "check_idempotency_key",
    "parse_attempt",
    "derive_key",
    "next_step",
    "summary_of",
]

#: Metadata key under which batch_ops records the (attempt) key of every batch it creates.
IDEMPOTENCY_METADATA_KEY = "batch_ops_idempotency_key"
#: Attempts one key may make: ``K``, ``K.1`` … ``K.49``. A chain that long is a bug upstream.
MAX_ATTEMPTS = 50
#: A key (as attempts spell it) must leave room in a metadata value for the fingerprint and its
#: longest attempt suffix: ``@<16 hex digits>.49``.
KEY_MAX_LENGTH = METADATA_VALUE_MAX - len(f"@{'0' * FINGERPRINT_LENGTH}.{MAX_ATTEMPTS - 1}")

_SUFFIX = re.compile(r"\.(\d+)$")
_FINGERPRINT = re.compile(rf"[0-9a-f]{{{FINGERPRINT_LENGTH}}}")
#: How a value written with a fingerprint ends: ``@F`` or ``@F.n``.
_FINGERPRINTED = re.compile(rf"@[0-9a-f]{{{FINGERPRINT_LENGTH}}}(\.[1-9]\d*)?$")


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------


def check_idempotency_key(key: object, *, param: str = "idempotency_key") -> str:
    """Return ``key`` if it can name an attempt chain; raise ``InputValidationError`` otherwise.

    Checked before anything is uploaded: a key must be a non-empty string without control
    characters, short enough for a metadata value with the fingerprint and its attempt suffix
    (at most ``KEY_MAX_LENGTH - 1`` = 491 characters).

    Examples:
        >>> check_idempotency_key("nightly-2026-11-29")
        'nightly-2026-11-29'
        >>> check_idempotency_key("")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: batch parameters: 1 problem:
          idempotency_key: invalid_idempotency_key: the key is empty (fix: ...)
    """
    fix = None
    if not isinstance(key, str):
        message = f"the key is a {type(key).__name__}, not a string"
        fix = f"pass a string, e.g. idempotency_key={str(key)[:40]!r}"
    elif not key.strip():
        message = "the key is empty"
        fix = "pass a non-empty string that names this piece of work (leave it out for a random one)"
    elif len(_spelled(key)) > KEY_MAX_LENGTH:
        message = (f"the key has {len(key)} characters; with the requests' fingerprint and its attempt suffix "
                   f"it must fit a {METADATA_VALUE_MAX}-character metadata value")
        fix = f"use at most {KEY_MAX_LENGTH - 1} characters (a hash of a longer identity works)"
    elif any(unicodedata.category(c) == "Cc" for c in key):
        message = "the key contains control characters"
        fix = "use printable characters only"
    else:
        return key
    raise InputValidationError(
        [Problem(rule="invalid_idempotency_key", message=message, fix=fix, param=param)], source="batch parameters"
    )


def _base(key: str) -> str:
    """The key as attempts spell it: a key that ends like an attempt suffix gets a ``~``.

    ``K.1`` is attempt 1 of ``K``; a user's own key ``K.1`` must not be mistaken for it, so its
    attempts are ``K.1~``, ``K.1~.1``, … (a key ending in ``~`` gets one more, keeping the
    spelling one-to-one). No spelled key ends in ``.<digits>``.
    """
    return key + "~" if _SUFFIX.search(key) or key.endswith("~") else key


def _spelled(key: str) -> str:
    """The key as fingerprinted attempts spell it (before ``@F``): :func:`_base`, and a ``~`` when
    that ends like a fingerprint, so ``K@F`` is never another key's spelling (see the module docstring)."""
    base = _base(key)
    return base + "~" if _FINGERPRINTED.search(base) else base


def _namespace(key: str, fingerprint: str | None) -> str:
    if fingerprint is None:
        return _base(key)
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"a request fingerprint is {FINGERPRINT_LENGTH} lowercase hex digits, not {fingerprint!r}")
    return f"{_spelled(key)}@{fingerprint}"


def _number(value: str, namespace: str) -> int | None:
    if value == namespace:
        return 0
    if not value.startswith(namespace + "."):
        return None
    tail = value[len(namespace) + 1 :]
    if not tail.isdigit() or tail.startswith("0"):
        return None
    return int(tail)


def derive_key(namespace: str, *identity: Any) -> str:
    """A key named after what survives a retry: a namespace and a hash of the identity's parts.

    The adapters pass what their orchestrator keeps across retries (Airflow: dag, task, run, map
    index; Prefect: the flow run and the task's place, or the parent run and the work); the same
    parts give the same key, in any process, on any machine.

    Examples:
        >>> derive_key("af", "d", "t", "manual__1", -1)
        'af-e6866ef7529bcffa9b85341864c332201091dd1c'
    """
    raw = json.dumps(list(identity), separators=(",", ":"), sort_keys=True, default=str)
    return f"{namespace}-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def attempt_key(key: str, number: int, fingerprint: str | None = None) -> str:
    """The metadata value of attempt ``number`` of the chain of ``key`` and ``fingerprint``.

    ``fingerprint`` None spells a chain without one: batches written before fingerprints, and
    keys nobody looks up again (a submit without a key).

    Examples:
        >>> attempt_key("k", 0), attempt_key("k", 2), attempt_key("dag.task.run.0", 1)
        ('k', 'k.2', 'dag.task.run.0~.1')
        >>> attempt_key("k", 0, "0123456789abcdef"), attempt_key("k.1", 2, "0123456789abcdef")
        ('k@0123456789abcdef', 'k.1~@0123456789abcdef.2')
    """
    base = _namespace(key, fingerprint)
    return base if number == 0 else f"{base}.{number}"


def parse_attempt(value: str | None, key: str) -> tuple[str | None, int] | None:
    """``(fingerprint, number)`` of the attempt of ``key`` that a metadata value names, or None.

    ``fingerprint`` is None for an attempt written before fingerprints.

    Examples:
        >>> parse_attempt("k@0123456789abcdef.3", "k"), parse_attempt("k.3", "k"), parse_attempt("kk", "k")
        (('0123456789abcdef', 3), (None, 3), None)
        >>> parse_attempt("k@0123456789abcdef", "k@0123456789abcdef")  # another key's attempt, not this one's
    """
    if value is None:
        return None
    prefix = _spelled(key) + "@"
    if value.startswith(prefix):
        fingerprint = value[len(prefix) : len(prefix) + FINGERPRINT_LENGTH]
        if _FINGERPRINT.fullmatch(fingerprint):
            number = _number(value, prefix + fingerprint)
            if number is not None:
                return fingerprint, number
    if _FINGERPRINTED.search(value):
        return None  # written with a fingerprint, for another key
    number = _number(value, _base(key))
    return None if number is None else (None, number)


def attempt_number(value: str | None, key: str, fingerprint: str | None = None) -> int | None:
    """Which attempt of the chain of ``key`` and ``fingerprint`` a metadata value names, or None.

    Examples:
        >>> attempt_number("k", "k"), attempt_number("k.3", "k"), attempt_number("k.x", "k"), attempt_number("kk", "k")
        (0, 3, None, None)
        >>> attempt_number("k.1", "k.1"), attempt_number("k.1~", "k.1")
        (None, 0)
        >>> attempt_number("k@0123456789abcdef.2", "k", "0123456789abcdef"), attempt_number("k@0123456789abcdef", "k")
        (2, None)
    """
    parsed = parse_attempt(value, key)
    if parsed is None or parsed[0] != fingerprint:
        return None
    return parsed[1]


# ---------------------------------------------------------------------------------------------
# the caller's policy
# ---------------------------------------------------------------------------------------------


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

    def rejection(self, batch: Batch) -> BatchOutcomeError | None:
        """The error a terminal batch deserves under this policy, or None when it is acceptable."""
        return outcome_error(batch, fail_on=self.fail_on, fail_on_request_failures=self.fail_on_request_failures)

# ---------------------------------------------------------------------------------------------
# the chain
# ---------------------------------------------------------------------------------------------


def _order(batch: Batch) -> tuple[int, str]:
    return (batch.created_at, batch.id)


@dataclass(frozen=True)
class Attempt:
    """Attempt ``number`` of a key: the batch that counts, and any duplicates created beside it."""

    number: int
    batch: Batch
    duplicates: tuple[Batch, ...] = ()


@dataclass(frozen=True)
class AttemptChain:
    """Every batch of one key, by attempt. Built from the batch list: no local state.

    ``fingerprint`` names the requests the chain was paid for (None: a chain written before
    fingerprints, or of a submit without a key).

    Examples:
        >>> AttemptChain("k").latest is None, AttemptChain("k").next_number
        (True, 0)
    """

    key: str
    attempts: tuple[Attempt, ...] = ()
    fingerprint: str | None = None

    @classmethod
    def from_batches(cls, key: str, batches: Iterable[Batch], *, fingerprint: str | None = None) -> AttemptChain:
        """Group the batches of the chain of ``key`` and ``fingerprint`` by attempt; the earliest of each counts."""
        return chains_of(key, batches).get(fingerprint) or cls(key, fingerprint=fingerprint)

    # -- reading ------------------------------------------------------------------------------
    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def latest(self) -> Batch | None:
        """The batch of the newest attempt: the one to wait for, or the final one."""
        return self.attempts[-1].batch if self.attempts else None

    @property
    def next_number(self) -> int:
        return self.attempts[-1].number + 1 if self.attempts else 0

    def attempt_key(self, number: int) -> str:
        """The metadata value of this chain's attempt ``number``."""
        return attempt_key(self.key, number, self.fingerprint)

    @property
    def batches(self) -> tuple[Batch, ...]:
        """Every batch of the key, attempts in order, each attempt's duplicates after it."""
        return tuple(b for a in self.attempts for b in (a.batch, *a.duplicates))

    @property
    def batch_ids(self) -> list[str]:
        """The attempts' batch ids, oldest first (duplicates, which cancel themselves, left out)."""
        return [a.batch.id for a in self.attempts]

    def live_duplicates(self) -> list[Batch]:
        """Duplicates still running: whoever sees one cancels it."""
        return [b for a in self.attempts for b in a.duplicates
                if not b.status.is_terminal and b.status is not BatchStatus.CANCELLING]

    def with_batch(self, batch: Batch) -> AttemptChain:
        """The chain with a fresher copy of one of its batches (e.g. the terminal one after a wait)."""
        attempts = []
        for a in self.attempts:
            if a.batch.id == batch.id:
                a = replace(a, batch=batch)
            elif any(d.id == batch.id for d in a.duplicates):
                a = replace(a, duplicates=tuple(batch if d.id == batch.id else d for d in a.duplicates))
            attempts.append(a)
        return replace(self, attempts=tuple(attempts))

    def with_attempt(self, number: int, batch: Batch, duplicates: Iterable[Batch] = ()) -> AttemptChain:
        """The chain with attempt ``number`` (replacing an attempt of that number)."""
        kept = [a for a in self.attempts if a.number != number]
        kept.append(Attempt(number, batch, tuple(duplicates)))
        return replace(self, attempts=tuple(sorted(kept, key=lambda a: a.number)))

    # -- carrying a chain across processes (Airflow's deferral, Prefect results) -----------------
    def to_json(self) -> dict[str, Any]:
        """Plain JSON for a chain (a deferred task's kwargs): the key and each attempt's batches.

        Validation error lists are capped at 20 entries per batch; everything else is kept.

        Examples:
            >>> from batch_ops.models import Batch
            >>> b = Batch(id="b0", endpoint="/v1/embeddings", input_file_id="f", status="failed", created_at=0)
            >>> c = AttemptChain("k", (Attempt(0, b),))
            >>> AttemptChain.from_json(c.to_json()) == c
            True
        """
        def dump(batch: Batch) -> dict[str, Any]:
            data = batch.model_dump(mode="json")
            errors = data.get("errors")
            if isinstance(errors, dict) and isinstance(errors.get("data"), list):
                errors["data"] = errors["data"][:20]
            return data

        return {"key": self.key, "fingerprint": self.fingerprint, "attempts": [
            {"number": a.number, "batch": dump(a.batch), "duplicates": [dump(d) for d in a.duplicates]}
            for a in self.attempts
        ]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttemptChain:
        """The chain :meth:`to_json` wrote (one written before fingerprints has none)."""
        fingerprint = data.get("fingerprint")
        return cls(str(data["key"]), tuple(
            Attempt(int(a["number"]), Batch.model_validate(a["batch"]),
                    tuple(Batch.model_validate(d) for d in a.get("duplicates", ())))
            for a in data.get("attempts", ())
        ), None if fingerprint is None else str(fingerprint))

    # -- chain-wide figures -------------------------------------------------------------------------
    def request_counts(self) -> RequestCounts:
        """Counts over the whole chain.

        ``total`` is the requests of the work (the first attempt carries them all), ``completed``
        the successes of every attempt (a later attempt carries only requests without one, so
        they never overlap), ``failed`` the failures of the latest attempt (earlier failures were
        carried on to it).

        Examples:
            >>> from batch_ops.models import Batch
            >>> b0 = Batch(id="b0", endpoint="/v1/embeddings", input_file_id="f", status="completed", created_at=0,
            ...            request_counts={"total": 10, "completed": 7, "failed": 3})
            >>> b1 = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="g", status="completed", created_at=9,
            ...            request_counts={"total": 3, "completed": 2, "failed": 1})
            >>> AttemptChain("k", (Attempt(0, b0), Attempt(1, b1))).request_counts()
            RequestCounts(total=10, completed=9, failed=1)
        """
        if not self.attempts:
            return RequestCounts()
        winners = [a.batch for a in self.attempts]
        return RequestCounts(
            total=max(b.request_counts.total for b in winners),
            completed=sum(b.request_counts.completed for b in winners),
            failed=winners[-1].request_counts.failed,
        )

    def usage(self) -> Usage | None:
        """Tokens billed over every batch of the chain, duplicates included (they were paid for too)."""
        used = [b.usage for b in self.batches if b.usage is not None]
        if not used:
            return None
        total = used[0]
        for u in used[1:]:
            total = total + u
        return total

    def summary(self) -> dict[str, Any]:
        """The result contract: the latest attempt's ``Batch.summary()`` plus the chain.

        ``batch_ids`` lists the attempts oldest first; ``chain_request_counts`` and ``chain_usage``
        cover all of them (see :meth:`request_counts`). Airflow's XCom ``return_value`` and Prefect's
        ``BatchResult`` carry exactly these keys.
        """
        latest = self.latest
        if latest is None:
            raise BatchOpsError(f"Key {self.key!r} has no batch yet: nothing to summarise.")
        usage = self.usage()
        return {
            **latest.summary(),
            "batch_ids": self.batch_ids,
            "chain_request_counts": self.request_counts().model_dump(include={"total", "completed", "failed"}),
            "chain_usage": usage.model_dump() if usage is not None else None,
        }


def _metadata_key(batch: Batch) -> str | None:
    return (batch.metadata or {}).get(IDEMPOTENCY_METADATA_KEY)


def chains_of(key: str, batches: Iterable[Batch], *,
              key_of: Callable[[Batch], str | None] = _metadata_key) -> dict[str | None, AttemptChain]:
    """Every chain of ``key`` among ``batches``, by fingerprint (None: written before fingerprints).

    Within a chain, batches are grouped by attempt; the earliest of an attempt (by
    ``(created_at, id)``) counts, the others are its duplicates. ``key_of`` reads the attempt key a
    batch carries (a dialect's :meth:`~batch_ops.dialects.Dialect.key_of`; default: OpenAI's metadata).
    """
    grouped: dict[str | None, dict[int, list[Batch]]] = {}
    seen: set[str] = set()
    for batch in batches:
        parsed = parse_attempt(key_of(batch), key)
        if parsed is None or batch.id in seen:
            continue
        seen.add(batch.id)
        fingerprint, number = parsed
        grouped.setdefault(fingerprint, {}).setdefault(number, []).append(batch)
    chains: dict[str | None, AttemptChain] = {}
    for fingerprint, by_number in grouped.items():
        attempts = []
        for number in sorted(by_number):
            first, *rest = sorted(by_number[number], key=_order)
            attempts.append(Attempt(number, first, tuple(rest)))
        chains[fingerprint] = AttemptChain(key, tuple(attempts), fingerprint)
    return chains


# ---------------------------------------------------------------------------------------------
# the decision
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainStep:
    """What a submit does with a chain: ``create`` attempt ``number``, ``attach`` to ``batch``
    (still running), or ``done`` (``batch`` ended in an outcome the policy accepts)."""

    action: Literal["create", "attach", "done"]
    number: int = 0
    batch: Batch | None = field(default=None)
    reason: str = ""


def next_step(chain: AttemptChain, policy: OutcomePolicy, *, max_attempts: int = MAX_ATTEMPTS) -> ChainStep:
    """Decide from the chain alone; see the module docstring.

    Raises:
        AttemptsExhaustedError: the last of ``max_attempts`` attempts was rejected too.
    """
    last = chain.last
    if last is None:
        return ChainStep("create", 0, None, "no batch carries this key yet")
    batch = last.batch
    if not batch.status.is_terminal:
        return ChainStep("attach", last.number, batch, f"attempt {last.number} ({batch.id}) is {describe(batch)}")
    if policy.rejection(batch) is None:
        return ChainStep("done", last.number, batch, f"attempt {last.number} ({batch.id}) ended {describe(batch)}")
    number = last.number + 1
    if number >= max_attempts:
        raise AttemptsExhaustedError(
            f"Key {chain.key!r} made {number} attempts and the last ({batch.id}) ended {describe(batch)}; "
            "not paying for another: look at the batches' errors, then use a new key."
        )
    return ChainStep("create", number, None, f"attempt {last.number} ({batch.id}) ended {describe(batch)}")


def summary_of(chain_or_batch: AttemptChain | Batch) -> dict[str, Any]:
    """The result dict of a chain, or of a lone batch (a chain of one).

    Examples:
        >>> from batch_ops.models import Batch
        >>> b = Batch(id="b", endpoint="/v1/embeddings", input_file_id="f", status="completed", created_at=0)
        >>> summary_of(b)["batch_ids"]
        ['b']
    """
    if isinstance(chain_or_batch, Batch):
        chain = AttemptChain(
            (chain_or_batch.metadata or {}).get(IDEMPOTENCY_METADATA_KEY, chain_or_batch.id),
            (Attempt(0, chain_or_batch),),
        )
        return chain.summary()
    return chain_or_batch.summary()

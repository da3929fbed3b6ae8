"""Attempt chains: every batch one idempotency key has paid for, found from the API alone.

A key ``K`` names one piece of work and the requests' fingerprint ``F`` says which requests it
was paid for (both: :mod:`batch_ops.identity`). A *chain* is one key with one set of requests: its
*attempts* are the batches whose metadata carries ``K@F``, ``K@F.1``, ``K@F.2``, … under
:data:`~batch_ops.identity.keys.IDEMPOTENCY_METADATA_KEY` (the spelling:
:mod:`batch_ops.identity.keys`). Listing the account's batches rebuilds the chains on any worker,
on any machine, with no local state. Everything here is a pure decision over that list:

* :func:`next_step` — attach to the running attempt, stop (the outcome is acceptable), or make
  attempt ``n + 1``; a new attempt only when the caller's :class:`~batch_ops.outcomes.OutcomePolicy`
  rejects the last outcome (``failed``, ``expired``, ``cancelled``, or request failures when asked);
* :meth:`AttemptChain.from_batches` — two batches with the same attempt key (two tries that
  created at the same moment) collapse: the earliest by ``(created_at, id)`` is the attempt, the
  others are *duplicates* that cancel themselves; their finished work is still harvested;
* chain-wide counts and the result dict that Airflow's XCom and Prefect's ``BatchResult`` share.

Which requests a new attempt carries (only those without a success anywhere in the chain) is
decided by reading the earlier attempts' output files: see ``batch_ops._submit``. Every attempt
carries the fingerprint of the *whole* work (attempt ``n > 0`` carries only the unfinished
requests, but names the chain they came from). Batches written before fingerprints (``K``,
``K.1``, …) form the key's *unfingerprinted* chain (``fingerprint=None``); ``batch_ops._submit``
decides whether they hold the same requests.

The key spelling (``derive_key``, ``attempt_key``, ``parse_attempt``, …) and ``OutcomePolicy``
lived here before; they are still importable from here, with a ``DeprecationWarning``.

Examples:
    >>> from batch_ops.models import Batch
    >>> from batch_ops.outcomes import OutcomePolicy
    >>> def batch(i, key, status, created=0, **kw):
    ...     return Batch(id=f"batch_{i}", endpoint="/v1/embeddings", input_file_id="f", status=status,
    ...                  created_at=created, metadata={"batch_ops_idempotency_key": key}, **kw)
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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from batch_ops import outcomes as _outcomes
from batch_ops._deprecated import moved
from batch_ops.errors import AttemptsExhaustedError, BatchOpsError
from batch_ops.identity import keys as _keys
from batch_ops.models import Batch, BatchStatus, RequestCounts, Usage

__all__ = [
    "Attempt",
    "AttemptChain",
    "ChainStep",
    "chains_of",
    "next_step",
    "summary_of",
]


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
        return _keys.attempt_key(self.key, number, self.fingerprint)

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
        total = max(b.request_counts.total for b in winners)
        return RequestCounts(
            total=total,
            # A repair round (batch_ops._repair) answers again requests an earlier attempt completed: a request
            # counts once.
            completed=min(total, sum(b.request_counts.completed for b in winners)),
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
    return (batch.metadata or {}).get(_keys.IDEMPOTENCY_METADATA_KEY)


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
        parsed = _keys.parse_attempt(key_of(batch), key)
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


def next_step(
    chain: AttemptChain, policy: _outcomes.OutcomePolicy, *, max_attempts: int = _keys.MAX_ATTEMPTS
) -> ChainStep:
    """Decide from the chain alone; see the module docstring.

    Raises:
        AttemptsExhaustedError: the last of ``max_attempts`` attempts was rejected too.
    """
    last = chain.last
    if last is None:
        return ChainStep("create", 0, None, "no batch carries this key yet")
    batch = last.batch
    seen = f"attempt {last.number} ({batch.id})"
    if not batch.status.is_terminal:
        return ChainStep("attach", last.number, batch, f"{seen} is {_outcomes.describe(batch)}")
    if policy.accepts(batch):
        return ChainStep("done", last.number, batch, f"{seen} ended {_outcomes.describe(batch)}")
    number = last.number + 1
    if number >= max_attempts:
        raise AttemptsExhaustedError(
            f"Key {chain.key!r} made {number} attempts and the last ({batch.id}) ended {_outcomes.describe(batch)}; "
            "not paying for another: look at the batches' errors, then use a new key."
        )
    return ChainStep("create", number, None, f"{seen} ended {_outcomes.describe(batch)}")


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
            (chain_or_batch.metadata or {}).get(_keys.IDEMPOTENCY_METADATA_KEY, chain_or_batch.id),
            (Attempt(0, chain_or_batch),),
        )
        return chain.summary()
    return chain_or_batch.summary()


__getattr__ = moved(__name__, {
    **dict.fromkeys(("IDEMPOTENCY_METADATA_KEY", "KEY_MAX_LENGTH", "MAX_ATTEMPTS", "attempt_key", "attempt_number",
                     "check_idempotency_key", "derive_key", "parse_attempt"), _keys),
    "OutcomePolicy": _outcomes,
})

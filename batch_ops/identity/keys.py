"""Idempotency keys: how a piece of work is named on the batches it pays for, and how far back to look.

A key ``K`` names one piece of work (an Airflow task instance, a Prefect flow run, a job part, a
``submit`` call); :func:`derive_key` makes one from what survives a retry of the caller. The
requests' fingerprint ``F`` (:mod:`batch_ops.identity.fingerprint`) says which requests it was
paid for. Every batch batch_ops creates carries ``K@F``, ``K@F.1``, ``K@F.2``, … (attempt 0, 1,
2 of the chain of ``K`` and ``F``) under :data:`IDEMPOTENCY_METADATA_KEY`; the chains themselves
are :mod:`batch_ops.chain`'s.

Why the fingerprint is folded into the attempt key rather than written as a metadata pair of its
own: a chain's identity is then one exact string, so everything that finds a batch by its attempt
key — the chain scan, the lookup after a lost create answer, the reconcile of concurrent creates,
the upload name — keeps two sets of requests apart with no change, even when two tries with
different requests create at the same moment; and the user keeps every metadata pair batch_ops
did not already use (16 pairs, one ours, one more for the owner in the adapters). The price is
18 characters of the 512 a metadata value may hold: a key may have 491 characters (was 508).

Batches written before fingerprints (``K``, ``K.1``, …) form the key's *unfingerprinted* chain
(``fingerprint=None``). A key whose spelling already ends like a fingerprint (``…@`` and 16 hex
digits) gets a ``~`` before its ``@``, as a key ending in ``.<digits>`` does, so no two (key,
fingerprint) pairs share a value; an unfingerprinted batch whose key ended that way is not
recognised (no derived key does).

:data:`LOOKBACK_SKEW` is the one allowance for clocks that disagree (ours, the orchestrator's,
the API's): every lookup bounded by a start time (a run's, a create's, a chain's oldest attempt)
looks that much further back.

Examples:
    >>> attempt_key("k", 0, "0123456789abcdef"), parse_attempt("k@0123456789abcdef.2", "k")
    ('k@0123456789abcdef', ('0123456789abcdef', 2))
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from typing import Any

from batch_ops.errors import InputValidationError, Problem
from batch_ops.identity.fingerprint import FINGERPRINT_LENGTH
from batch_ops.models import METADATA_VALUE_MAX

__all__ = [
    "IDEMPOTENCY_METADATA_KEY",
    "KEY_MAX_LENGTH",
    "LOOKBACK_SKEW",
    "MAX_ATTEMPTS",
    "attempt_key",
    "attempt_number",
    "check_idempotency_key",
    "derive_key",
    "new_idempotency_key",
    "parse_attempt",
]

#: Metadata key under which batch_ops records the (attempt) key of every batch it creates.
IDEMPOTENCY_METADATA_KEY = "batch_ops_idempotency_key"
#: Attempts one key may make: ``K``, ``K.1`` … ``K.49``. A chain that long is a bug upstream.
MAX_ATTEMPTS = 50
#: A key (as attempts spell it) must leave room in a metadata value for the fingerprint and its
#: longest attempt suffix: ``@<16 hex digits>.49``.
KEY_MAX_LENGTH = METADATA_VALUE_MAX - len(f"@{'0' * FINGERPRINT_LENGTH}.{MAX_ATTEMPTS - 1}")
#: Seconds of clock skew allowed between us, the orchestrator and the API whenever a lookup of the
#: batch list is bounded by a start time (a run's start, a create's, a chain's oldest attempt).
LOOKBACK_SKEW = 600.0

_SUFFIX = re.compile(r"\.(\d+)$")
_FINGERPRINT = re.compile(rf"[0-9a-f]{{{FINGERPRINT_LENGTH}}}")
#: How a value written with a fingerprint ends: ``@F`` or ``@F.n``.
_FINGERPRINTED = re.compile(rf"@[0-9a-f]{{{FINGERPRINT_LENGTH}}}(\.[1-9]\d*)?$")


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
    index and the deployment; Prefect: the flow run and the task's place, or the parent run and the
    work); the same parts give the same key, in any process, on any machine. Prefer
    :class:`batch_ops.identity.RunIdentity`, which also gives the owner record and the lookback.

    Examples:
        >>> derive_key("af", "d", "t", "manual__1", -1)
        'af-e6866ef7529bcffa9b85341864c332201091dd1c'
    """
    raw = json.dumps(list(identity), separators=(",", ":"), sort_keys=True, default=str)
    return f"{namespace}-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def new_idempotency_key() -> str:
    """A fresh random key for a batch create that has no natural identity (never looked up again)."""
    return uuid.uuid4().hex


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

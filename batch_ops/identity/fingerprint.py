"""Request fingerprints: what a piece of work asks for, however its file happens to be written.

An idempotency key names a piece of work; the fingerprint says *which requests* it was paid
for. The submission core (``batch_ops._submit``) keeps them together: the same key with the same
requests re-attaches to the batches already paid for; the same key with other requests (an
Airflow task cleared after its input file was fixed) starts a chain of its own and never returns
the stale one. See :mod:`batch_ops.identity.keys` for where the fingerprint is written on a batch.

What counts as "the same requests":

* the content of each request line, not its bytes: every line is parsed and written again as
  canonical JSON (keys sorted, no whitespace, ``\\uXXXX`` escapes), so key order, spacing,
  ``\\r\\n`` endings, a byte-order mark and blank lines do not matter;
* not their order: a regenerated file may list the same requests in another order;
* not the file's name, where it lives (local, ``s3://``), nor whether it came as request dicts.

How lines combine — in O(1) memory, one pass, any order: each line's SHA-256 is read as a
256-bit number and the numbers are **added modulo 2^256**; the count of lines and that sum are
hashed once more, and the first :data:`FINGERPRINT_LENGTH` hex digits (64 bits) are the
fingerprint. Why a sum: XOR would let two equal lines cancel out and is linear (any target is
reachable by Gaussian elimination over 257 lines); sorting per-line digests is exact but holds
32 bytes per line; a sum holds 32 bytes in all and no line cancels another (equal lines add
twice, and the count is hashed in too; duplicate ``custom_id`` s are refused by validation
anyway). Accidental collisions are bounded by the 64 bits kept (one chance in 2^64 that changed
requests read as unchanged); a crafted collision (a generalised-birthday attack on the sum) buys
nothing: whoever can write the input decides the requests anyway, and the worst a collision
does is what every submit did before fingerprints — re-attach to the earlier batch.

A line that is not JSON (only an input that skipped validation, e.g. an uploaded file) counts by
its bytes, stripped of surrounding whitespace. A line of more than :data:`LINE_LIMIT` bytes before
its newline (which the validator refuses before any fingerprint of a file to be uploaded is taken)
is hashed a piece at a time, by its bytes, newline included: a line never sits in memory past the
limit. Files are read through :func:`batch_ops.jsonl.iter_lines`, the one line reader of request
and result files.

The scheme is part of what batch_ops writes on batches: changing it (``_DOMAIN`` names its
version) would make every earlier chain read as other requests, so it is changed only together
with code that still recognises the old one.

Examples:
    >>> a = b'{"custom_id": "a", "body": {"model": "m", "input": "x"}}\\n'
    >>> b = b'{"custom_id": "b", "body": {"model": "m", "input": "y"}}\\n'
    >>> fp = fingerprint_lines([a, b])
    >>> fp.requests, len(fp.value)
    (2, 16)
    >>> regenerated = [b'{"body":{"input":"y","model":"m"},"custom_id":"b"}', b' {"custom_id":"a", "body":'
    ...                b'{"input":"\\\\u0078","model":"m"}}\\r\\n']
    >>> fingerprint_lines(regenerated) == fp  # other order, key order, spacing, escapes
    True
    >>> fingerprint_lines([a]) == fp, fingerprint_lines([a, b.replace(b"y", b"z")]) == fp
    (False, False)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batch_ops.jsonl import MAX_LINE_BYTES, iter_lines
from batch_ops.jsonl.read import BOM

__all__ = [
    "FINGERPRINT_LENGTH",
    "LINE_LIMIT",
    "SHORT_LENGTH",
    "Fingerprint",
    "FingerprintBuilder",
    "fingerprint_file",
    "fingerprint_lines",
    "fingerprint_of_file_id",
    "fingerprint_requests",
    "short",
]

#: Hex digits of a fingerprint as written on batches (64 bits).
FINGERPRINT_LENGTH = 16
#: Hex digits shown in log lines and messages.
SHORT_LENGTH = 8
#: Longest line parsed whole: the validator's own limit, so a fingerprint of a validated file
#: never holds more of a line in memory than validating it did.
LINE_LIMIT = MAX_LINE_BYTES
#: Names the scheme (canonical JSON lines, SHA-256, sum mod 2^256, count): see the module docstring.
_DOMAIN = b"batch_ops.requests.v1\n"
_MODULUS = 1 << 256


@dataclass(frozen=True)
class Fingerprint:
    """The fingerprint of a set of requests: ``value`` (hex, :data:`FINGERPRINT_LENGTH` digits) and their count.

    Examples:
        >>> fingerprint_requests([{"custom_id": "a"}]).short
        '8029113a'
    """

    value: str
    requests: int

    @property
    def short(self) -> str:
        """The first :data:`SHORT_LENGTH` digits, for people (log lines, messages)."""
        return short(self.value)


def short(value: str | None) -> str:
    """A fingerprint's short form (``"none"`` for a chain written before fingerprints).

    Examples:
        >>> short("0123456789abcdef"), short(None)
        ('01234567', 'none')
    """
    return value[:SHORT_LENGTH] if value else "none"


def _canonical(raw: bytes) -> bytes | None:
    """The line as canonical JSON, or None when it is not JSON (or too deep to parse)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    except (ValueError, RecursionError):
        return None


class FingerprintBuilder:
    """Adds request lines one at a time, in any order; :meth:`result` is the fingerprint.

    Examples:
        >>> builder = FingerprintBuilder()
        >>> builder.add_line(b'{"custom_id": "a"}\\r\\n'); builder.add_line(b"   \\n")
        >>> builder.result() == fingerprint_requests([{"custom_id": "a"}])
        True
    """

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0

    def _add_digest(self, digest: bytes) -> None:
        self._sum = (self._sum + int.from_bytes(digest, "big")) % _MODULUS
        self._count += 1

    def add_line(self, raw: bytes) -> None:
        """One line of a request file (its line ending and surrounding whitespace do not count)."""
        stripped = raw.strip()
        if not stripped:
            return  # a blank line is no request (the validator and the server skip it too)
        canonical = _canonical(stripped)
        # Canonical JSON and raw bytes are hashed apart, so neither can pose as the other.
        text = b"j" + canonical if canonical is not None else b"r" + stripped
        self._add_digest(hashlib.sha256(text).digest())

    def add_request(self, request: Mapping[str, Any]) -> None:
        """One request given as a dict: the same as its JSON line."""
        self.add_line(json.dumps(request, ensure_ascii=True).encode("ascii"))

    def add_long_line(self, pieces: Iterable[bytes]) -> None:
        """A line too long to parse in memory, by its bytes, a piece at a time."""
        digest = hashlib.sha256(b"r")
        for piece in pieces:
            digest.update(piece)
        self._add_digest(digest.digest())

    def result(self) -> Fingerprint:
        outer = hashlib.sha256(_DOMAIN + f"{self._count}\n".encode() + self._sum.to_bytes(32, "big"))
        return Fingerprint(outer.hexdigest()[:FINGERPRINT_LENGTH], self._count)


def fingerprint_lines(lines: Iterable[bytes]) -> Fingerprint:
    """The fingerprint of request lines (bytes, one request each).

    Examples:
        >>> fingerprint_lines([b'{"b": 1, "a": 2}']) == fingerprint_lines([b'{ "a":2 ,"b":1 }\\n'])
        True
    """
    builder = FingerprintBuilder()
    for line in lines:
        builder.add_line(line)
    return builder.result()


def fingerprint_requests(requests: Iterable[Mapping[str, Any]]) -> Fingerprint:
    """The fingerprint of request dicts: the same as a file holding them, in any order.

    Examples:
        >>> fingerprint_requests([{"custom_id": "a"}, {"custom_id": "b"}]) == fingerprint_lines(
        ...     [b'{"custom_id":"b"}', b'{"custom_id":"a"}'])
        True
    """
    builder = FingerprintBuilder()
    for request in requests:
        builder.add_request(request)
    return builder.result()


def fingerprint_file(path: str | os.PathLike[str], *, line_limit: int = LINE_LIMIT) -> Fingerprint:
    """The fingerprint of a JSONL request file, streamed (memory: one line, at most ``line_limit`` bytes).

    Run it through a ``Work`` effect: it reads the whole file (the async client runs it in a thread).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
        >>> _ = open(path, "wb").write(b'\\xef\\xbb\\xbf{"custom_id": "b"}\\r\\n\\r\\n{"custom_id": "a"}')
        >>> fingerprint_file(path) == fingerprint_requests([{"custom_id": "a"}, {"custom_id": "b"}])
        True
    """
    builder = FingerprintBuilder()
    with open(os.fspath(path), "rb") as f:
        # The scheme measures a line without its newline (and a first line without its byte-order mark),
        # the reader with both: its limit bounds memory, the line's own length decides. A longer line
        # goes to add_long_line a piece at a time, and reading goes on.
        for line in iter_lines(f, limit=line_limit + 1 + len(BOM), long_lines=builder.add_long_line):
            raw = line.data
            assert raw is not None  # None only when there is no long_lines
            if len(raw) - raw.endswith(b"\n") > line_limit:
                builder.add_long_line((raw,))
            else:
                builder.add_line(raw)
    return builder.result()


def fingerprint_of_file_id(file_id: str) -> Fingerprint:
    """A stand-in for an uploaded file the server will not hand back: its id (files never change).

    Kept apart from every content fingerprint (another domain), so it never equals one: the same
    requests uploaded again under another id count as other requests.

    Examples:
        >>> one = fingerprint_of_file_id("file-1")
        >>> one == fingerprint_of_file_id("file-1"), one == fingerprint_of_file_id("file-2"), one.requests
        (True, False, 0)
    """
    digest = hashlib.sha256(b"batch_ops.file-id.v1\n" + file_id.encode())
    return Fingerprint(digest.hexdigest()[:FINGERPRINT_LENGTH], 0)

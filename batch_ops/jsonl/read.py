"""Reading request and result files a line at a time: the one line reader, and the requests of a file.

:func:`iter_lines` is how every request file, result file and fingerprinted file is read (check,
shard, filter, :func:`iter_request_lines`, :mod:`batch_ops.results`, :mod:`batch_ops.fingerprint`):
it numbers the lines, drops a UTF-8 byte-order mark before the first one, says where each line
starts, and never holds more than one line of at most ``limit`` bytes (:data:`MAX_LINE_BYTES`, the
most one request may carry, unless the caller says otherwise). A longer line is measured, a piece
at a time, before it could sit in memory. :func:`read_lines` is the loop under it, for a reader
that resumes mid-file and counts bytes itself (the local server's processor).

Examples:
    >>> import io
    >>> f = io.BytesIO(b'\\xef\\xbb\\xbf{"custom_id": "a"}\\r\\n\\n{"custom_id": "b"}')
    >>> [(line.number, line.offset, line.data) for line in iter_lines(f)]
    [(1, 3, b'{"custom_id": "a"}\\r\\n'), (2, 23, b'\\n'), (3, 24, b'{"custom_id": "b"}')]
    >>> [line.data for line in iter_lines(io.BytesIO(b"ab\\ncdef\\ngh"), limit=4)]
    [b'ab\\n', None]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from batch_ops.errors import InputValidationError
from batch_ops.jsonl.rules import DECODER, MAX_LINE_BYTES, invalid_json, line_too_large, not_an_object

__all__ = ["BOM", "Line", "iter_lines", "iter_request_lines", "read_lines"]

#: The UTF-8 byte-order mark some editors write before the first line; it is not part of the line.
BOM = b"\xef\xbb\xbf"
#: The most read at once while a line is measured (and the size of a long line's pieces).
CHUNK = 1 << 20


class Line(NamedTuple):
    """One line of a file, as :func:`iter_lines` reads it.

    Attributes:
        number: 1 for the first line of the file.
        offset: Where ``data`` starts in the file (after a byte-order mark).
        size: The bytes the line takes in the file: ``data`` and a byte-order mark before it
            (0 for a line over the limit: it was never read).
        data: The line with its ending, without a byte-order mark; ``None`` when it is longer than
            the limit.
    """

    number: int
    offset: int
    size: int
    data: bytes | None


def read_lines(f: IO[bytes], *, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Each line of ``f`` as it is (line ending and any byte-order mark included), never holding more than ``limit``
    bytes of one.

    The loop under :func:`iter_lines`, which every reader of request and result files goes through; used
    directly where a reader resumes mid-file and counts bytes itself (the local server's processor). A
    line of more than ``limit`` bytes comes back as ``None``, and reading stops there. An over-long line
    is measured before it is read (``f`` is seekable: callers open regular files), so refusing it costs
    1 MiB of memory, however long it is: one 700 MB line without a newline never sits in memory (it
    used to cost a job 1.5 GB).

    Examples:
        >>> import io
        >>> list(read_lines(io.BytesIO(b"ab\\ncdef\\ngh"), limit=4))
        [b'ab\\n', None]
        >>> list(read_lines(io.BytesIO(b"ab\\ngh"), limit=4))
        [b'ab\\n', b'gh']
    """
    seekable = f.seekable()
    while True:
        raw = f.readline(min(CHUNK, limit + 1))
        if not raw:
            return
        if raw.endswith(b"\n") or len(raw) < min(CHUNK, limit + 1):
            if len(raw) > limit:
                yield None
                return
            yield raw  # the usual case: a line shorter than a piece, read once
            continue
        if not seekable:
            rest = f.readline(limit + 1 - len(raw))
            raw += rest
            if len(raw) > limit:
                yield None
                return
            yield raw
            continue
        # A long line: find its end a piece at a time (dropping the pieces), then read it whole.
        start, size = f.tell() - len(raw), len(raw)
        while size <= limit:
            piece = f.readline(min(CHUNK, limit + 1 - size))
            size += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        if size > limit:
            yield None
            return
        f.seek(start)
        yield f.read(size)


def iter_lines(
    f: IO[bytes], *, limit: int = MAX_LINE_BYTES, long_lines: Callable[[Iterator[bytes]], Any] | None = None
) -> Iterator[Line]:
    """Each line of ``f``, numbered, without a byte-order mark; never more than ``limit`` bytes of one in memory.

    A line longer than ``limit`` comes as a :class:`Line` whose ``data`` is ``None``, and reading
    stops there; or, given ``long_lines`` (and a seekable ``f``), that line goes to ``long_lines`` as
    an iterator of pieces of at most 1 MiB (from its start, without a byte-order mark, through its
    newline), and reading goes on with the next line. The byte-order mark is dropped only where
    ``f`` starts at the beginning of the file.

    Examples:
        >>> import io
        >>> f = io.BytesIO(b"ab\\n" + b"x" * 9 + b"\\ncd")
        >>> long = []
        >>> [line.data for line in iter_lines(f, limit=4, long_lines=lambda pieces: long.append(b"".join(pieces)))]
        [b'ab\\n', b'cd']
        >>> long
        [b'xxxxxxxxx\\n']
    """
    seekable = f.seekable()
    if long_lines is not None and not seekable:
        raise ValueError("iter_lines reads a long line again from its start for long_lines: f must be seekable")
    offset = f.tell() if seekable else 0
    at_start = offset == 0
    number = 0
    while True:
        for raw in read_lines(f, limit=limit):
            number += 1
            if raw is None:
                break
            bom = _bom(raw) if number == 1 and at_start else 0
            yield Line(number, offset + bom, len(raw), raw[bom:])
            offset += len(raw)
        else:
            return  # the end of the file
        if long_lines is None:
            yield Line(number, offset, 0, None)
            return
        # Reading stopped inside the long line: from its start again, a piece at a time, then on after it.
        f.seek(offset)
        pieces = _pieces(f, first=number == 1 and at_start)
        long_lines(pieces)
        for _ in pieces:  # whatever long_lines left unread: the next line starts after it
            pass
        offset = f.tell()


def _bom(raw: bytes) -> int:
    """How many bytes of a byte-order mark ``raw``, the first line of a file, starts with."""
    return len(BOM) if raw.startswith(BOM) else 0


def _pieces(f: IO[bytes], *, first: bool) -> Iterator[bytes]:
    """The line ``f`` is at, a piece at a time, through its newline (``first``: the file's first line)."""
    piece = f.readline(CHUNK)
    if first:
        piece = piece[_bom(piece):]
    while piece:
        yield piece
        if piece.endswith(b"\n"):
            return
        piece = f.readline(CHUNK)


def iter_request_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, request_object)`` for each request of an input file, streaming.

    Meant for files that already passed :func:`~batch_ops.jsonl.validate_file` (the local server reads
    requests with it): blank lines are skipped rather than reported, and nothing but the
    JSON shape is checked.

    Raises:
        InputValidationError: A line is not a JSON object (``invalid_json_line``), or is longer than
            ``max_line_bytes`` (``line_too_large``).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
        >>> _ = open(path, "wb").write(b'\\xef\\xbb\\xbf{"custom_id": "a"}\\r\\n\\r\\n{"custom_id": "b"}')
        >>> list(iter_request_lines(path))
        [(1, {'custom_id': 'a'}), (3, {'custom_id': 'b'})]
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        for n, _offset, _size, raw in iter_lines(f, limit=max_line_bytes):
            if raw is None:
                raise InputValidationError([line_too_large(n, max_line_bytes)], source=name)
            try:
                obj = DECODER.decode(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                if not raw.strip():
                    continue
                raise InputValidationError([invalid_json(n, raw, exc)], source=name) from exc
            if type(obj) is not dict:
                raise InputValidationError([not_an_object(n, obj)], source=name)
            yield n, obj

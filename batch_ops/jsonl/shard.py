"""Sharding a request file: parts that each fit every limit, validated as one file, byte for byte.

:func:`shard_file` reads a request file once through :func:`~batch_ops.jsonl.read.iter_lines`,
checks it with the same :class:`~batch_ops.jsonl.validate.Checker` as
:func:`~batch_ops.jsonl.check_file` (the size limits per line: a part can hold any one valid line),
and copies its lines, whole and in order, into parts of at most ``max_lines`` requests,
``max_bytes`` bytes and ``max_embedding_inputs`` embedding inputs. Parts appear only when the whole
input is valid, and never over something that is not a regular file.

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> src = os.path.join(d, "in.jsonl")
    >>> line = '{"custom_id": "q-%d", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}'
    >>> _ = open(src, "w").write("".join(line % i + "\\n" for i in range(5)))
    >>> parts = shard_file(src, os.path.join(d, "parts"), max_embedding_inputs=2)
    >>> [(p.name, len(open(p).readlines())) for p in parts]
    [('in-001.jsonl', 2), ('in-002.jsonl', 2), ('in-003.jsonl', 1)]
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, TYPE_CHECKING

from batch_ops.errors import InputValidationError, Problem
from batch_ops.jsonl.read import iter_lines
from batch_ops.jsonl.rules import RuleOptions, Rules, not_regular
from batch_ops.jsonl.validate import Checker

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["shard_file"]


def shard_file(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    prefix: str | None = None,
    **options: Unpack[RuleOptions],
) -> list[Path]:
    """Validate a request file and split it into parts that each fit every limit.

    Lines are copied whole, byte for byte and in order (a UTF-8 byte-order mark is dropped),
    so the parts concatenated give the input back. A file already within the limits gives
    one part. The per-line rules apply to the whole file (custom_ids are unique across all
    parts, and every part has the same url and model), so results of the parts can be
    joined together. Reads and writes stream; parts appear only when the whole input is valid.

    Args:
        path: The request file.
        out_dir: Directory for the parts (created if needed).
        prefix: Part names are ``{prefix}-001.jsonl``, ...; defaults to the input's stem.
        **options: The endpoint and the limits (:class:`~batch_ops.jsonl.rules.Rules`), with ``max_lines``,
            ``max_bytes`` and ``max_embedding_inputs`` per part; ``endpoint`` is the one every ``url`` must
            equal (``None`` takes the first line's); ``max_line_bytes`` the longest line allowed
            (``line_too_large``): memory holds at most one such line.

    Returns:
        The parts, in order.

    Raises:
        InputValidationError: A line breaks a rule, or one line alone is over a limit.

    Examples:
        >>> import os, tempfile
        >>> from batch_ops.jsonl import request_line, write_requests
        >>> d = tempfile.mkdtemp()
        >>> src = os.path.join(d, "big.jsonl")
        >>> _ = write_requests([request_line(f"q-{i}", {"model": "m"}, endpoint="/v1/responses")
        ...                     for i in range(5)], src)
        >>> [p.name for p in shard_file(src, os.path.join(d, "parts"), max_lines=2)]
        ['big-001.jsonl', 'big-002.jsonl', 'big-003.jsonl']
    """
    rules = Rules(**options)
    src = os.fspath(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = prefix if prefix is not None else Path(src).stem
    checker = Checker(rules, per_line_limits=True)
    temps: list[Path] = []
    part: IO[bytes] | None = None
    part_lines = part_bytes = part_inputs = 0
    try:
        odd = not_regular(src)
        if odd is not None:
            raise InputValidationError([odd], source=src)
        with open(src, "rb") as f:
            for n, _offset, line_size, raw in iter_lines(f, limit=rules.max_line_bytes):
                if raw is None:
                    checker.too_large(n)
                    break
                checker.feed(n, raw, line_size)
                if checker.truncated:
                    break
                if checker.problems:
                    continue
                size, inputs = len(raw), checker.line_inputs
                if (
                    part is None
                    or part_lines + 1 > rules.max_lines
                    or part_bytes + size > rules.max_bytes
                    or part_inputs + inputs > rules.max_embedding_inputs
                ):
                    if part is not None:
                        part.close()
                    tmp = out / f".{stem}-{len(temps) + 1}.{secrets.token_hex(4)}.tmp"
                    temps.append(tmp)
                    part = open(tmp, "xb", buffering=1 << 20)  # closed on rollover or in the handler below
                    part_lines = part_bytes = part_inputs = 0
                part.write(raw)
                part_lines += 1
                part_bytes += size
                part_inputs += inputs
        if part is not None:
            part.close()
            part = None
        checker.finish()
        if checker.problems:
            raise InputValidationError(checker.problems, source=src, truncated=checker.truncated)
        width = max(3, len(str(len(temps))))
        parts = [out / f"{stem}-{i:0{width}d}.jsonl" for i in range(1, len(temps) + 1)]
        for final in parts:
            _check_part(final)  # every name first: no part is written unless all can be
        for tmp, final in zip(temps, parts, strict=True):
            os.replace(tmp, final)
        return parts
    except BaseException:
        if part is not None:
            part.close()
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _check_part(final: Path) -> None:
    """A part replaces a regular file of that name, or none; never a link, a FIFO, a device or a folder.

    A part is read back to be uploaded, so it must be a file here: what else sits at its name is the
    user's, and renaming over it would destroy it (a FIFO) or leave the link's target stale.
    """
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(final).st_mode
        if not stat.S_ISREG(mode):
            what = "a link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise InputValidationError(
                [Problem(rule="invalid_output", param="out_dir", message=f"{final} is {what}: a part cannot go there",
                         fix="remove it, or choose another output folder for the parts")], source=str(final))


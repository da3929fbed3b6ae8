"""Writing files whole or not at all: a temporary file beside the target, fsync, rename.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a", "out.txt")
    >>> atomic_write(path, [b"one\\n", b"two\\n"]), open(path).read()
    (2, 'one\\ntwo\\n')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` atomically; returns how many chunks were written.

    A reader (or a process resuming after a crash) sees the old file or the new one, never a
    half-written one; if ``chunks`` raises, the target is untouched and no temp file is left.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    count = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count

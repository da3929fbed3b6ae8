"""Writing files whole or not at all: one helper for every temp-then-rename in the project.

:func:`atomic_file` opens a temporary file beside the target; when the ``with`` block ends
normally the data is flushed, fsynced, given the permissions a plain ``open()`` would have (the
umask honoured: ``mkstemp`` alone makes 0600 files), and renamed over the target. If the block
raises, the temporary file is removed and the target is untouched. A writer killed outright
(``kill -9``) cannot clean up: its temporary file carries its pid, and the next writer of the
same target removes the files of writers that are gone.

Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a", "out.txt")
    >>> atomic_write(path, [b"one\\n", b"two\\n"]), open(path).read()
    (2, 'one\\ntwo\\n')
    >>> with atomic_file(path, "w", encoding="utf-8") as fh:
    ...     _ = fh.write("three\\n")
    >>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
    ('three\\n', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "atomic_write", "temp_name_for"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.part$")


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name_for(target: Path) -> Path:
    """A fresh temporary path beside ``target``, naming this process (see :func:`_clean_stale`)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: leave its files alone
    return True


def _clean_stale(target: Path) -> None:
    """Remove temporary files a killed writer of ``target`` left behind."""
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = _TEMP.match(entry.name)
            if match and match["name"] == target.name and not _alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    entry.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temporary file; see the module docstring.

    ``mode`` is ``"wb"`` or ``"w"`` (then ``encoding``/``newline`` as for :func:`open`).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes only: mode {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target)
    tmp = temp_name_for(target)
    fh = open(tmp, "x" + mode[1:], **open_args)
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
                 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``path`` atomically; returns how many chunks were written.

    A reader (or a process resuming after a crash) sees the old file or the new one, never a
    half-written one; if ``chunks`` raises, the target is untouched and no temp file is left.
    """
    count = 0
    with atomic_file(path) as fh:
        for chunk in chunks:
            fh.write(chunk)
            count += 1
    return count

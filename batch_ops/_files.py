"""Writing files whole or not at all: one helper for every temp-then-rename in the project.

:func:`atomic_file` opens a temporary file beside the target; when the ``with`` block ends
normally the data is flushed, fsynced, given the permissions a plain ``open()`` would have (the
umask honoured: ``mkstemp`` alone makes 0600 files), and renamed over the target. If the block
raises, the temporary file is removed and the target is untouched. A writer killed outright
(``kill -9``) cannot clean up: its temporary file carries its pid, and the next writer of the
same target removes the files of writers that are gone.

Atomic replace is for regular files only. What the path names decides how it is written
(:func:`output_target`), so a write never replaces something that is not a file of ours:

* nothing yet, or a regular file: temp file and rename, as above;
* a symbolic link: what it points to is written (temp file and rename beside the real file), and
  the link stays. A link in a shared sticky folder (``/tmp``) that belongs to someone else is
  refused, as the kernel's ``protected_symlinks`` refuses to follow it for ``>`` in a shell;
* a FIFO or a character device (``/dev/stdout``, a process substitution ``>(gzip > r.gz)``, a
  terminal): written as a stream, like the shell's ``>``. These cannot be replaced, and a reader at
  the other end wants the bytes, not a new file in its place (before, ``-o /dev/null`` run as root
  replaced the system's ``/dev/null`` with a regular file). No temp file, no fsync; a failure
  midway leaves what was sent sent;
* a directory, a block device (a disk) or a socket: refused with a clear error, nothing written.

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
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from batch_ops.errors import InputValidationError, Problem

__all__ = ["OutputTarget", "atomic_file", "atomic_write", "check_output", "output_target", "safe_file_name",
           "temp_name_for", "write_mode"]

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


class OutputTarget(NamedTuple):
    """How to write an output path: the file to write, and whether as a stream (no temp file, no rename)."""

    path: Path
    stream: bool


def _refused(path: Path, what: str, fix: str) -> InputValidationError:
    return InputValidationError([Problem(rule="invalid_output", param="output", message=f"{path} is {what}",
                                         fix=fix)], source=str(path))


def _check_link(link: Path) -> None:
    """Refuse to follow a link the kernel would not follow for a shell's ``>`` (``fs.protected_symlinks``).

    In a sticky folder anyone may write to (``/tmp``), a link may be followed only by its owner or
    when it belongs to the folder's owner: else anyone could point ``/tmp/out.jsonl`` at a file of
    yours (or root's) and have a write land there. Resolving a link ourselves (to rename beside
    its target) bypasses the kernel's check, so it is made here.
    """
    hop = link
    for _ in range(40):  # the kernel's own limit on links in a row
        try:
            if not stat.S_ISLNK(os.lstat(hop).st_mode):
                return
            folder = os.stat(hop.parent)
            owner = os.lstat(hop).st_uid
        except OSError:
            return  # nothing further to follow: open() and rename() report what is wrong
        shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
        if shared and owner not in (os.geteuid(), folder.st_uid):
            raise _refused(link, f"a link in the shared folder {hop.parent} that belongs to someone else (uid "
                                 f"{owner})", "write to a path of your own, or remove the link if you did not make it")
        hop = hop.parent / os.readlink(hop)


def output_target(path: str | os.PathLike[str]) -> OutputTarget:
    """How ``path`` is to be written; see the module docstring. Raises for what is never written.

    Raises:
        InputValidationError: ``invalid_output``: ``path`` is a directory, a block device, a socket,
            or a link in a shared folder that belongs to someone else.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> os.mkfifo(os.path.join(d, "pipe")); os.symlink("real.jsonl", os.path.join(d, "link"))
        >>> [(t.path.name, t.stream) for t in map(output_target, [f"{d}/new", f"{d}/pipe", f"{d}/link"])]
        [('new', False), ('pipe', True), ('real.jsonl', False)]
        >>> output_target(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: ...: 1 problem:
          output: invalid_output: ... is a directory (fix: name a file in it, e.g. .../results.jsonl)
    """
    target = Path(path)
    try:
        link = stat.S_ISLNK(os.lstat(target).st_mode)
    except FileNotFoundError:
        return OutputTarget(target, False)
    if link:
        _check_link(target)
    try:
        mode = os.stat(target).st_mode  # follows links, /proc's magic ones (/dev/stdout) included
    except FileNotFoundError:
        mode = None  # a dangling link: create what it points to, as the shell's > does
    how = write_mode(mode)
    if how == "replace":
        return OutputTarget(Path(os.path.realpath(target)) if link else target, False)
    if how == "stream":
        return OutputTarget(target, True)
    fix = (f"name a file in it, e.g. {target / 'results.jsonl'}" if how == "a directory"
           else "write to a regular file, a FIFO or a terminal")
    raise _refused(target, how, fix)


def write_mode(mode: int | None) -> str:
    """How a path of this ``st_mode`` is written: ``"replace"``, ``"stream"``, or what it is (refused).

    ``None`` is a path that does not exist yet (it is created, through a temp file like a replace).

    Examples:
        >>> import stat
        >>> write_mode(None), write_mode(stat.S_IFREG | 0o644), write_mode(stat.S_IFIFO | 0o600)
        ('replace', 'replace', 'stream')
        >>> write_mode(stat.S_IFCHR | 0o666), write_mode(stat.S_IFBLK | 0o660), write_mode(stat.S_IFDIR | 0o755)
        ('stream', 'a block device (a disk)', 'a directory')
    """
    if mode is None or stat.S_ISREG(mode):
        return "replace"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "stream"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a block device (a disk)" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file"


def check_output(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output path that would be refused when written (see :func:`output_target`)."""
    output_target(path)


@contextlib.contextmanager
def _streamed(path: Path, mode: str, **open_args: Any) -> Iterator[IO[Any]]:
    # No O_CREAT or O_TRUNC: this is a FIFO or a device, and must still be one once open (else it
    # was swapped for a regular file since it was looked at, and would be written half-replaced).
    # O_NOCTTY: a terminal written to does not become this process's controlling terminal.
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(path, "now a regular file, not the FIFO or device it was a moment ago",
                       "run the command again")
    with open(fd, mode, **open_args) as fh:
        yield fh
        fh.flush()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """Open ``path`` for writing through a temporary file; see the module docstring.

    ``mode`` is ``"wb"`` or ``"w"`` (then ``encoding``/``newline`` as for :func:`open`). A FIFO or
    a character device is written as a stream, a link's target is replaced; a directory, a block
    device or a socket raises ``InputValidationError`` (:func:`output_target`) before anything is
    written.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes only: mode {mode!r}")
    target, stream = output_target(path)
    if stream:
        with _streamed(target, mode, **open_args) as fh:
            yield fh
        return
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
    A FIFO or a character device gets the chunks as a stream (see :func:`atomic_file`).
    """
    count = 0
    with atomic_file(path) as fh:
        for chunk in chunks:
            fh.write(chunk)
            count += 1
    return count


def safe_file_name(text: str) -> str:
    """``text`` (an id from the wire: a batch id, a file id) as one harmless file name.

    An id that is already a plain name is kept; any other is cleaned and given a short hash of the
    original, so two ids never share a name and none climbs out of its folder.

    Examples:
        >>> safe_file_name("batch_abc-1"), safe_file_name("../etc/passwd")
        ('batch_abc-1', 'etc_passwd-7fef78f5')
        >>> safe_file_name("a/b") != safe_file_name("a_b")
        True
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip("._")
    if cleaned == text and cleaned:
        return text
    return f"{cleaned or '_'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


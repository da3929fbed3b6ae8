"""Files where the user keeps them: a local path, an fsspec URL, or a path object of a file system.

Every path batch_ops reads or writes — a request file, a download, a job's output, the eval
pipeline's reports and history — may live on object storage, so that workers which share no
disk (Celery, Kubernetes, Prefect work pools) pass files to each other. A *target* is one of:

* a local path (``str`` or :class:`os.PathLike`), or a ``file://`` URL;
* an fsspec URL: ``s3://bucket/key``, ``gs://…``, ``az://…``, ``memory://…`` (credentials and
  endpoints come from fsspec's usual places: the environment, ``FSSPEC_<PROTOCOL>_<OPTION>``
  variables, the cloud SDK's config);
* a path object that carries its own file system: Airflow's ``ObjectStoragePath`` (with its
  connection's credentials), any ``universal_pathlib`` ``UPath``, or a :class:`Location`.

The core works on local files only: validation, hashing, streaming uploads and atomic downloads
stay as they are. A remote file is *staged*: :func:`local_copy` copies it to a temporary local
file piece by piece, :func:`local_output` hands out a temporary local path and copies the file
up when the block ends normally (an object appears whole or not at all; nothing is written if
the block raises). Memory stays bounded (one 8 MiB piece at a time, whatever the file); the
local disk holds one copy at most (≤ 200 MB for a request file, the API's limit). Staging was
chosen over streaming through fsspec file objects because those commit a partial object when a
``with`` block exits on an error, and because every local guarantee (regular file, size from
metadata, atomic rename) then holds for remote files too.

Examples:
    >>> import fsspec
    >>> url = "memory://batch_ops-doc/requests.jsonl"
    >>> with local_output(url) as path:
    ...     _ = path.write_text('{"custom_id": "a"}\\n')
    >>> exists(url), is_remote(url), join("memory://batch_ops-doc", "run 1", "out.jsonl")
    (True, True, 'memory://batch_ops-doc/run 1/out.jsonl')
    >>> with local_copy(url) as path:
    ...     path.read_text()
    '{"custom_id": "a"}\\n'
    >>> is_remote("/tmp/requests.jsonl"), is_remote("file:///tmp/requests.jsonl")
    (False, False)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, NoReturn, Union, cast

# Local outputs are written the one way batch_ops writes files (re-exported for the CLI).
from batch_ops._files import atomic_file, check_output
from batch_ops.errors import InputValidationError, Problem, StorageError

__all__ = [
    "Location",
    "StorageTarget",
    "atomic_file",
    "check_output",
    "display",
    "exists",
    "fail",
    "has_credentials",
    "is_path_object",
    "is_remote",
    "is_url",
    "join",
    "local_copy",
    "local_folder",
    "local_output",
    "location",
    "publish",
    "read_all",
    "read_text",
    "scrub",
    "stage",
    "write_text",
]

#: A piece of a staged copy: big enough for object stores' multipart sizes, small enough to bound memory.
_PIECE = 8 * 1024 * 1024
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})
#: A URL inside any text (a message, an exception's text): up to a space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*")
#: Query parameters whose values are credentials: S3/GCS presigned URLs (``X-Amz-Signature``,
#: ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``X-Goog-Signature``), Azure SAS (``sig``),
#: tokens, keys, passwords. Matched anywhere in the name, ignoring case.
_SECRET_PARAM = re.compile(r"sig|token|credential|secret|passw|pwd|key|auth|session|code", re.IGNORECASE)
#: Shown instead of a secret.
_HIDDEN = "***"


@dataclass(frozen=True)
class Location:
    """A file on an fsspec file system: the file system object and the path on it.

    Use it for file systems configured in code (a Prefect ``RemoteFileSystem`` block gives
    one); a URL string is enough when the environment configures the file system.

    Examples:
        >>> import fsspec
        >>> loc = Location(fsspec.filesystem("memory"), "/bucket/x.jsonl")
        >>> str(loc), is_remote(loc)
        ('memory:///bucket/x.jsonl', True)
    """

    fs: Any
    path: str

    def __str__(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self.path}" if not self.path.startswith(f"{protocol}://") else self.path

    @property
    def name(self) -> str:
        """The file's name (the last part of its path, without a query string: a signed URL's
        signature must not name the local copy, which messages may show), for the local copy of it."""
        return Path(self.path.partition("?")[0].partition("#")[0]).name or "file"

    def child(self, *parts: str) -> Location:
        return Location(self.fs, "/".join([self.path.rstrip("/"), *parts]))


#: What a path parameter accepts: see the module docstring.
StorageTarget = Union[str, "os.PathLike[str]", Location, Any]


def is_path_object(target: Any) -> bool:
    # universal_pathlib's UPath and Airflow's ObjectStoragePath (a UPath): a protocol and a file system.
    return not isinstance(target, PurePath) and hasattr(target, "protocol") and hasattr(target, "fs")


def location(target: StorageTarget) -> Path | Location:
    """Where ``target`` is: a local :class:`~pathlib.Path`, or a :class:`Location` on a file system.

    Raises:
        InputValidationError: ``target`` is not a path, or names a protocol fsspec does not know
            (or whose package is not installed: the fix names it).

    Examples:
        >>> location("file:///tmp/a.jsonl"), type(location("memory://b/a.jsonl")).__name__
        (PosixPath('/tmp/a.jsonl'), 'Location')
    """
    if isinstance(target, Location):
        return target
    if isinstance(target, PurePath):
        return Path(target)
    if is_path_object(target):
        upath = cast(Any, target)
        if str(upath.protocol or "") in _LOCAL_PROTOCOLS:
            return Path(str(upath.path))
        return Location(upath.fs, str(upath.path))
    if isinstance(target, os.PathLike):
        return Path(os.fspath(target))
    if not isinstance(target, str):
        raise _bad_target(f"a {type(target).__name__} is not a path or URL", str(type(target).__name__))
    match = _URL.match(target)
    if match is None:
        return Path(target)
    scheme = match["scheme"].lower()
    if scheme == "file":
        return Path(target[len("file://"):])
    try:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(target)
    except ImportError as exc:
        why = scrub(str(exc), target)
        raise _bad_target(f"reading {scheme}:// needs a package that is not installed ({why})", target,
                          fix=f"install fsspec's {scheme} file system (s3: pip install 'openai-batch-ops[s3]', "
                          "gs: gcsfs, az: adlfs)") from None
    except ValueError as exc:
        raise _bad_target(f"{scheme}:// is not a file system fsspec knows ({scrub(str(exc), target)})",
                          target) from None
    return Location(fs, path)


def _bad_target(message: str, target: str, *, fix: str | None = None) -> InputValidationError:
    return InputValidationError(
        [Problem(rule="invalid_path", param="path", message=message,
                 fix=fix or "pass a local path, an fsspec URL (s3://bucket/key, gs://, az://, memory://), "
                 "an ObjectStoragePath or a UPath")],
        source=display(target),
    )


def is_url(text: str) -> bool:
    """True when ``text`` is a URL of a file system other than the local one (``file://``).

    Examples:
        >>> is_url("s3://bucket/key"), is_url("/data/x"), is_url("file:///data/x")
        (True, False, False)
    """
    match = _URL.match(text)
    return match is not None and match["scheme"].lower() != "file"


def is_remote(target: StorageTarget) -> bool:
    """True when ``target`` is not on the local disk (it is staged to be read or written)."""
    return isinstance(location(target), Location)


def display(target: Any) -> str:
    """``target`` as text for messages, logs and results, without the credentials a URL can carry.

    Every URL in the text loses its ``user:password@`` (the authority is split at its *last*
    ``@``, as URL parsers do, so a password containing ``@`` goes whole) and the values of
    query parameters that are credentials (presigned S3/GCS URLs, Azure SAS ``sig``, tokens,
    keys). A password with an unescaped ``/`` makes the URL ambiguous: everything up to the last
    ``@`` is hidden then. Works on any text: an exception's message may quote the URL too.

    Examples:
        >>> display("s3://user:p@ss@bucket/key")
        's3://bucket/key'
        >>> display("https://acct.blob.core.windows.net/c/x.jsonl?sv=2024-11-04&sp=r&sig=abc%2Bdef")
        'https://acct.blob.core.windows.net/c/x.jsonl?sv=2024-11-04&sp=r&sig=***'
        >>> display("Could not read s3://AKIA:wJal/rXUt@bucket/x: Forbidden")
        'Could not read s3://bucket/x: Forbidden'
    """
    return _URL_IN_TEXT.sub(lambda m: _redact_url(m.group(0)), str(target))


def _userinfo(rest: str) -> tuple[str, str]:
    """A URL after its ``scheme://``, split into its ``user:password`` (empty when none) and the rest."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        cut = authority.rindex("@")
    elif "@" in rest and ":" in authority and not authority.rpartition(":")[2].isdigit():
        cut = rest.rindex("@")  # ``user:pass/word@host``: a colon that is not a port's, an ``@`` further on
    else:
        return "", rest
    return rest[:cut], rest[cut + 1:]


def _query_secrets(query: str) -> list[str]:
    """The values of ``query``'s parameters that are credentials."""
    pairs = (p.partition("=") for p in query.partition("#")[0].split("&"))
    return [value for name, eq, value in pairs if eq and value and _SECRET_PARAM.search(name)]


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    rest = _userinfo(rest)[1]
    path, query_mark, query = rest.partition("?")
    if not query_mark:
        return f"{scheme}://{rest}"
    query, hash_mark, fragment = query.partition("#")
    params = []
    for param in query.split("&"):
        name, eq, value = param.partition("=")
        params.append(f"{name}={_HIDDEN}" if eq and value and _SECRET_PARAM.search(name) else param)
    return f"{scheme}://{path}?{'&'.join(params)}{hash_mark}{fragment}"


def _secrets_in(target: Any) -> list[str]:
    """The credentials written into ``target``'s URLs, as given and percent-decoded, longest first:
    what a file system's own error may repeat in another shape (a bucket name, a decoded path)."""
    from urllib.parse import unquote

    found: set[str] = set()
    for url in _URL_IN_TEXT.findall(str(target)):
        userinfo, rest = _userinfo(url.partition("://")[2])
        if ":" in userinfo:
            found.update({userinfo, *userinfo.split(":", 1)})
        elif len(userinfo) >= 8:  # a token as the user (``https://<token>@host``); short: a name (``az://container@``)
            found.add(userinfo)
        found.update(_query_secrets(rest.partition("?")[2]))
    found |= {unquote(secret) for secret in found}
    return sorted((secret for secret in found if len(secret) >= 3), key=len, reverse=True)


def scrub(text: str, target: Any) -> str:
    """``text`` (a file system's error about ``target``) as :func:`display` shows it, and without any
    credential of ``target`` that it repeats elsewhere (botocore quotes ``key:secret@bucket`` as a bad
    bucket name, with no ``://`` before it)."""
    shown = display(text)
    for secret in _secrets_in(target):
        shown = shown.replace(secret, _HIDDEN)
    return shown


def has_credentials(target: Any) -> bool:
    """True when ``target``'s text carries credentials that :func:`display` hides.

    Examples:
        >>> has_credentials("s3://k:s@bucket/x"), has_credentials("s3://bucket/x?versionId=3")
        (True, False)
    """
    return bool(_secrets_in(target))


def join(base: StorageTarget, *parts: str) -> Any:
    """``base`` with ``parts`` appended, of the same kind: a URL stays a URL, a path object keeps its type.

    Examples:
        >>> join("s3://bucket/eval", "work", "r1"), join("/data", "work")
        ('s3://bucket/eval/work/r1', '/data/work')
    """
    if isinstance(base, Location):
        return base.child(*parts)
    if isinstance(base, str) and is_url(base):
        return "/".join([base.rstrip("/"), *parts])
    if is_path_object(base) or isinstance(base, PurePath):
        return cast(Any, base).joinpath(*parts)
    return str(cast(Path, location(base)).joinpath(*parts))


def fail(action: str, target: Any, exc: BaseException) -> NoReturn:
    """Raise the StorageError for the file system's ``exc``, its text without ``target``'s credentials.

    Chained to ``exc`` (``raise from``) unless ``target`` carries credentials: a traceback prints
    the cause's own text, and a file system's error can repeat them.
    """
    error = StorageError(f"Could not {action} {display(target)}: {type(exc).__name__}: {scrub(str(exc), target)}")
    if has_credentials(target):
        raise error from None
    raise error from exc


def exists(target: StorageTarget) -> bool:
    """True when ``target`` is an existing file (or, locally, any existing path)."""
    where = location(target)
    if isinstance(where, Path):
        return where.exists()
    try:
        return bool(where.fs.exists(where.path))
    except Exception as exc:  # the file system's own errors: network, credentials
        fail("look up", target, exc)


def _not_found(target: Any) -> InputValidationError:
    return InputValidationError(
        [Problem(rule="file_not_found", param="path", message=f"there is no file at {display(target)}",
                 fix="check the URL, and that the task that writes it ran first")],
        source=display(target),
    )


@contextlib.contextmanager
def local_copy(target: StorageTarget, *, suffix: str = "") -> Iterator[Path]:
    """A local file with ``target``'s content, for the length of the block.

    A local target is yielded as it is (nothing copied). A remote one is copied into a
    temporary directory, which is removed when the block ends.

    Raises:
        InputValidationError: ``file_not_found`` when the remote file does not exist.
        StorageError: the file system failed (network, credentials, permissions).
    """
    where = location(target)
    if isinstance(where, Path):
        yield where
        return
    with _scratch() as tmp:
        yield stage(where, tmp / (where.name + suffix))


def stage(target: StorageTarget, dest: Path) -> Path:
    """Copy ``target`` to the local file ``dest``, piece by piece; returns ``dest``.

    Raises:
        InputValidationError: ``file_not_found`` when the file does not exist.
        StorageError: the file system failed (network, credentials, permissions).
    """
    where = location(target)
    try:
        if isinstance(where, Path):
            shutil.copyfile(where, dest)
        else:
            with where.fs.open(where.path, "rb") as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst, _PIECE)
    except FileNotFoundError:
        raise _not_found(target) from None
    except Exception as exc:
        fail("read", target, exc)
    return dest


@contextlib.contextmanager
def local_output(target: StorageTarget) -> Iterator[Path]:
    """A local path to write ``target`` through; a remote target is uploaded when the block ends normally.

    A local target is yielded as it is: write it as you would (``atomic_file``). For a remote
    one, the block writes a temporary file which is then put whole (``fs.put_file``: an object
    store shows the new object or the old one, never a part); if the block raises, nothing is
    put.
    """
    where = location(target)
    if isinstance(where, Path):
        yield where
        return
    with _scratch() as tmp:
        local = tmp / where.name
        yield local
        if local.exists():
            publish(local, where)


def publish(local: Path, target: StorageTarget) -> None:
    """Put the local file ``local`` at the remote ``target`` as one object (see :func:`local_output`).

    Raises:
        StorageError: the file system failed (network, credentials, permissions).
    """
    where = location(target)
    if isinstance(where, Path):
        raise ValueError(f"publish() puts files on object storage; {where} is local")
    try:
        parent = where.path.rsplit("/", 1)[0] if "/" in where.path else ""
        # Only a local file system needs its folders made. An object store has none, and its
        # makedirs creates a missing *bucket* (s3fs, gcsfs): a mistyped URL must fail, not do that.
        if parent and getattr(where.fs, "local_file", False):
            where.fs.makedirs(parent, exist_ok=True)
        where.fs.put_file(str(local), where.path)
    except Exception as exc:
        fail("write", target, exc)


@contextlib.contextmanager
def local_folder(target: StorageTarget) -> Iterator[Path]:
    """A local folder standing for the folder ``target``, for the length of the block.

    A local target is yielded as it is. For a remote one, an empty temporary folder is yielded;
    when the block ends normally, every file written in it is put under ``target`` at the same
    relative path (files already there and not written are left alone). Use :func:`join` with
    the relative path to name a file's remote place.

    Examples:
        >>> with local_folder("memory://batch_ops-doc/reports") as root:
        ...     _ = (root / "runs").mkdir(), (root / "runs" / "a.md").write_text("# a\\n")
        >>> read_text("memory://batch_ops-doc/reports/runs/a.md")
        '# a\\n'
    """
    where = location(target)
    if isinstance(where, Path):
        yield where
        return
    with _scratch() as tmp:
        yield tmp
        for local in sorted(p for p in tmp.rglob("*") if p.is_file()):
            publish(local, where.child(*local.relative_to(tmp).parts))


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary local folder for staged copies, removed when the block ends, however it ends."""
    with tempfile.TemporaryDirectory(prefix="batch_ops_stage_", ignore_cleanup_errors=True) as name:
        yield Path(name)


def read_all(folder: StorageTarget, *, suffix: str = "") -> list[str]:
    """The text of every file directly in ``folder`` whose name ends with ``suffix``, by name; [] when absent.

    On object storage the files are fetched together (one listing, then concurrent reads where
    the file system can: s3fs, gcsfs, adlfs).

    Examples:
        >>> write_text("memory://batch_ops-doc/h/b.json", "2"); write_text("memory://batch_ops-doc/h/a.json", "1")
        >>> read_all("memory://batch_ops-doc/h", suffix=".json"), read_all("memory://batch_ops-doc/none")
        (['1', '2'], [])
    """
    where = location(folder)
    if isinstance(where, Path):
        if not where.is_dir():
            return []
        files = sorted(p for p in where.iterdir() if p.is_file() and p.name.endswith(suffix))
        return [p.read_text(encoding="utf-8") for p in files]
    if not hasattr(where.fs, "ls"):
        raise StorageError(f"{display(folder)} cannot be listed (a file system without folders, e.g. a Prefect "
                           "block that only reads and writes whole files): use an fsspec URL or a "
                           "RemoteFileSystem/LocalFileSystem block for folders such as the eval history")
    try:
        if not where.fs.isdir(where.path):
            return []
        names = sorted(p for p in where.fs.ls(where.path, detail=False) if str(p).endswith(suffix))
        found = where.fs.cat(names) if names else {}
    except FileNotFoundError:
        return []
    except Exception as exc:
        fail("read", folder, exc)
    if not isinstance(found, dict):  # one name: some file systems answer the bytes themselves
        found = {names[0]: found}
    return [found[name].decode("utf-8") for name in names if name in found]


def read_text(target: StorageTarget, default: str | None = None) -> str | None:
    """The text of a small file (a history, a report), or ``default`` when it does not exist."""
    if not exists(target):
        return default
    with local_copy(target) as path:
        return path.read_text(encoding="utf-8")


def write_text(target: StorageTarget, text: str) -> None:
    """Write a small text file whole (atomically, locally or as one object)."""

    with local_output(target) as path, atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)

"""Prefect file system blocks as places for batch_ops' files.

``submit_batch``, ``run_batch`` and ``download_batch_file`` take ``storage=``, a
``WritableFileSystem`` block, and then read their path relative to it: a ``RemoteFileSystem``
(``s3://bucket/prefix`` with its settings) or a ``LocalFileSystem`` (a base path) is read and
written piece by piece through its fsspec file system (memory bounded). Any other writable
block (prefect-aws' ``S3Bucket``, ``SMB``, …) is read and written whole with its
``read_path``/``write_path``: memory then holds one file (at most 200 MB, the API's limit for a
request file). Passed by reference, a saved block keeps its credentials out of parameters.

Examples:
    >>> from prefect.filesystems import RemoteFileSystem
    >>> str(block_target(RemoteFileSystem(basepath="memory://bucket/eval"), "work/requests.jsonl"))
    'memory://bucket/eval/work/requests.jsonl'
"""

from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.utilities.asyncutils import run_coro_as_sync

from batch_ops.storage import Location, StorageTarget

__all__ = ["block_target"]


class _BlockFileSystem:
    """The few file system calls batch_ops' staging makes, over a block's ``read_path``/``write_path``."""

    protocol = "block"

    def __init__(self, block: WritableFileSystem) -> None:
        self.block = block

    def _read(self, path: str) -> bytes:
        data: Any = self.block.read_path(path)
        return bytes(run_coro_as_sync(data) if hasattr(data, "__await__") else data)

    def open(self, path: str, mode: str = "rb") -> Any:
        import io

        if mode != "rb":
            raise ValueError("blocks are written whole, with put_file")
        return io.BytesIO(self._read(path))

    def exists(self, path: str) -> bool:
        try:
            self._read(path)
        except (FileNotFoundError, ValueError):
            return False
        return True

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        """Blocks make their own folders when written."""

    def put_file(self, local: str, path: str) -> None:
        written: Any = self.block.write_path(path, Path(local).read_bytes())
        if hasattr(written, "__await__"):
            run_coro_as_sync(written)


def block_target(block: WritableFileSystem, path: str) -> StorageTarget:
    """Where ``path`` is inside ``block``: a local ``Path`` or a :class:`~batch_ops.storage.Location`."""
    if isinstance(block, LocalFileSystem):
        return Path(block._resolve_path(path))
    if isinstance(block, RemoteFileSystem):
        return Location(block.filesystem, block._resolve_path(path))
    return Location(_BlockFileSystem(block), path)

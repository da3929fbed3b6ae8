"""Shared fixtures: the local Batch API server, over real HTTP on loopback.

``server_url`` is one default echo server for the whole session (shared: do not kill or fault
it). ``make_server`` starts a private one with any options: ``with make_server(http_429=0.2,
seed=1) as url:``; ``url`` ends in ``/v1`` and has ``.pid``, ``.data_dir``, ``.kill()`` and
``.restart()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from batch_ops.server import ServerURL, serve_in_background


@pytest.fixture(scope="session")
def server_url() -> Iterator[ServerURL]:
    with serve_in_background() as url:
        yield url


@pytest.fixture
def make_server() -> Callable[..., AbstractContextManager[ServerURL]]:
    return serve_in_background


#: The bucket the ``s3`` fixture empties and makes for each test.
S3_BUCKET = "batch-ops-test"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 (moto's server, real HTTP on loopback) for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fresh ``S3_BUCKET`` on the local S3; the environment (inherited by subprocesses) points
    s3fs (botocore) at it. Returns an s3fs file system for the test's own reads and writes."""
    import fsspec

    for name, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.invalidate_cache()
    if fs.exists(S3_BUCKET):
        fs.rm(S3_BUCKET, recursive=True)
    fs.mkdir(S3_BUCKET)
    fsspec.filesystem("s3").invalidate_cache()  # the instance the package will get
    return fs

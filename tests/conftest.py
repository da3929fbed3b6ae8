"""Shared fixtures: the local Batch API server, over real HTTP on loopback.

``server_url`` is one default echo server for the whole session (shared: do not kill or fault
it). ``make_server`` starts a private one with any options: ``with make_server(http_429=0.2,
seed=1) as url:``; ``url`` ends in ``/v1`` and has ``.pid``, ``.data_dir``, ``.kill()`` and
``.restart()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from batch_ops.server import ServerURL, serve_in_background


@pytest.fixture(scope="session")
def server_url() -> Iterator[ServerURL]:
    with serve_in_background() as url:
        yield url


@pytest.fixture
def make_server() -> Callable[..., AbstractContextManager[ServerURL]]:
    return serve_in_background

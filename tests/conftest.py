from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import LoopThread, Stack


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def stack(loop_thread: LoopThread) -> Iterator[Stack]:
    s = Stack(loop_thread)
    yield s
    s.close()


@pytest.fixture(params=["aiohttp", "httpx"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    """The core proxy tests run against both upstream client implementations."""
    return str(request.param)


# PostgreSQL for the mirror tests: the local service when it answers, else a throwaway cluster.
from .pg import pg_cluster, postgres_dsn  # noqa: E402, F401

from collections.abc import Iterator

import pytest

from ..redis_fixtures import redis_cluster, redis_server, redis_server_aof  # noqa: F401
from .support import OPEN


@pytest.fixture(autouse=True)
def _close_peers() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()

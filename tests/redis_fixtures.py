"""Real Redis for the tests of cluster mode: fixtures and the skip-or-fail rule.

Import the fixtures where they are used, e.g. in a ``conftest.py``::

    from ..redis_fixtures import redis_cluster, redis_server  # noqa: F401

Without ``redis-server`` on ``PATH`` a test that needs it is skipped with the
reason, except under ``CI=true``: CI installs Redis (``.ci/run``), so there a
missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mqcore_tcp.testing_redis import (
    RedisCluster,
    RedisServer,
    redis_available,
    start_redis,
    start_redis_cluster,
)

__all__ = [
    "need_cluster_mode",
    "need_redis",
    "redis_cluster",
    "redis_server",
    "redis_server_aof",
]


def need_redis(cluster: bool = False) -> None:
    """Skip the test when Redis is missing; fail it instead under ``CI=true``."""
    why = redis_available(cluster)
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the Redis tests: {why}")
    pytest.skip(why)


@functools.cache
def _server_has_cluster_mode() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "mqcore_tcp", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--cluster" in done.stdout


def need_cluster_mode() -> None:
    """Skip unless Redis is there (see :func:`need_redis`) and the server has ``--cluster``.

    The second holds from the merge of cluster mode on: until then the
    examples and benchmarks written against its command line skip, saying so.
    """
    need_redis()
    if not _server_has_cluster_mode():
        pytest.skip("python -m mqcore_tcp has no --cluster option in this build")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh standalone ``redis-server`` (nothing persisted), stopped after the test."""
    need_redis()
    with start_redis() as server:
        yield server


@pytest.fixture
def redis_server_aof() -> Iterator[RedisServer]:
    """A fresh ``redis-server`` with the AOF on (``appendfsync always``): survives ``restart()``."""
    need_redis()
    with start_redis(appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster shared by a module's tests (creating one takes seconds).

    Tests that need an empty broker call ``redis_cluster.flush()`` first.
    """
    need_redis(cluster=True)
    with start_redis_cluster(3) as cluster:
        yield cluster

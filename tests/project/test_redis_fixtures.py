"""The fixtures of tests/redis_fixtures.py, imported as a conftest (or a test module) would."""

from __future__ import annotations

import pytest

from mqcore_tcp.testing_redis import RedisCluster, RedisServer

from ..redis_fixtures import (  # noqa: F401 - fixtures, fetched by name below
    redis_cluster,
    redis_server,
    redis_server_aof,
)


def test_the_fixtures_give_running_servers(request: pytest.FixtureRequest) -> None:
    plain: RedisServer = request.getfixturevalue("redis_server")
    durable: RedisServer = request.getfixturevalue("redis_server_aof")
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    assert plain.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    assert durable.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"yes"]
    assert len({plain.port, durable.port, *cluster.ports}) == 5
    plain.command("SET", "k", "v")
    durable.command("SET", "k", "v")
    durable.restart()
    assert durable.command("GET", "k") == b"v"
    cluster.flush()
    assert all(cluster.state(node) == "ok" for node in cluster.nodes)

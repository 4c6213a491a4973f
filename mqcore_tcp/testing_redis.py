"""Run real ``redis-server`` processes for tests and benchmarks of cluster mode.

Theory of operation:

- **Port.** Redis refuses ``--port 0``, so a free loopback port is found by
  binding port 0 and closing it, then handed to ``redis-server``. Another
  process may take it in between: a server that exits logging that the
  address is in use is started again on a new port, up to a few times. A
  cluster node also needs ``PORT + 10000`` free (its cluster bus), so
  cluster ports are checked for both.
- **Ready.** A server is ready once ``PING`` answers ``+PONG`` (not
  ``-LOADING``) on its port and ``INFO server`` names its pid (not another
  server that holds the port). Waiting polls that command with a short pause,
  bounded by ``ready_within`` seconds; a server that exits first, or never
  answers, is killed and raises :class:`RedisStartError` with its log.
- **Files.** Each server gets its own temporary ``--dir`` (removed when it
  stops unless the caller gave the directory) with its log in it. The
  defaults persist nothing (``--save '' --appendonly no``);
  ``appendonly=True`` turns the AOF on (``appendfsync always``), so a
  :meth:`RedisServer.restart` on the same port and directory finds the data.
- **Stop.** By pid: :meth:`RedisServer.stop` sends SIGTERM, waits up to
  ``grace`` seconds, then SIGKILLs; :meth:`~RedisServer.kill` is a crash.
  Every wait is bounded; the ``async`` variants wait in a worker thread, so
  they work under asyncio and trio alike.
- **Cluster.** :func:`start_redis_cluster` starts ``masters`` servers with
  ``--cluster-enabled yes``, joins them with ``redis-cli --cluster create
  ... --cluster-replicas 0 --cluster-yes`` and waits until every node
  reports ``cluster_state:ok``.
- **Missing Redis.** Without ``redis-server`` (or ``redis-cli`` for a
  cluster) on ``PATH`` the launchers raise :class:`RedisNotInstalled`;
  ``tests/redis_fixtures.py`` turns that into a skip, or a failure under
  ``CI=true``.

The module speaks just enough RESP (:func:`redis_command`) to ping and ask a
server about itself, so it needs no Redis client library.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from .testing_redis_probe import RedisError, RedisReply, free_port, redis_command
from .testing_redis_server import (
    DEFAULT_TIMEOUT,
    RedisNotInstalled,
    RedisServer,
    RedisStartError,
    redis_available,
    require_redis,
    running_redis,
    running_redis_async,
    start_redis,
    start_redis_async,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RedisCluster",
    "RedisError",
    "RedisNotInstalled",
    "RedisReply",
    "RedisServer",
    "RedisStartError",
    "free_port",
    "redis_available",
    "redis_command",
    "require_redis",
    "running_redis",
    "running_redis_async",
    "running_redis_cluster",
    "start_redis",
    "start_redis_async",
    "start_redis_cluster",
]

#: How often the cluster-state check polls.
_CLUSTER_POLL = 0.1


class RedisCluster(AbstractContextManager["RedisCluster"]):
    """A running Redis Cluster: its master nodes, each a :class:`RedisServer`."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:PORT/0`` of every node."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client finds the others from it."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        """Every node's port."""
        return [node.port for node in self.nodes]

    def state(self, node: RedisServer) -> str:
        """``cluster_state`` as ``node`` reports it (``ok`` or ``fail``)."""
        info = node.command("CLUSTER", "INFO")
        assert isinstance(info, bytes)
        for entry in info.decode().splitlines():
            if entry.startswith("cluster_state:"):
                return entry.split(":", 1)[1].strip()
        return "unknown"

    def wait_ok(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once every node reports ``cluster_state:ok``; else raise ``RedisStartError``."""
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            try:
                states = [self.state(node) for node in self.nodes]
            except (OSError, RedisError) as error:
                states = [str(error)]
            if all(state == "ok" for state in states):
                return
            time.sleep(_CLUSTER_POLL)
        raise RedisStartError(f"no cluster_state:ok on every node in {timeout:g} s: {states}")

    def flush(self) -> None:
        """``FLUSHALL`` on every node: a clean broker for the next test."""
        for node in self.nodes:
            node.command("FLUSHALL")

    def stop(self, grace: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove their directories."""
        for node in self.nodes:
            if node.popen is not None:
                node.stop(grace, cleanup=True)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _create_cluster(nodes: Sequence[RedisServer], timeout: float) -> None:
    command = [
        "redis-cli", "--cluster", "create", *(node.address for node in nodes),
        "--cluster-replicas", "0", "--cluster-yes",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RedisStartError(
            f"{' '.join(command)} failed with status {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def start_redis_cluster(
    masters: int = 3, *args: str, ready_within: float = DEFAULT_TIMEOUT
) -> RedisCluster:
    """Start ``masters`` cluster-enabled servers, join them, wait for ``cluster_state:ok``.

    ``args`` are more ``redis-server`` options for every node. Redis needs at
    least 3 masters to create a cluster.
    """
    require_redis(cluster=True)
    if masters < 3:
        raise ValueError(f"redis-cli --cluster create needs at least 3 masters, not {masters}")
    cluster_args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "5000", *args]
    cluster = RedisCluster([])
    try:
        for _ in range(masters):
            node = start_redis(*cluster_args, ready_within=ready_within, cluster_bus=True)
            cluster.nodes.append(node)
        _create_cluster(cluster.nodes, ready_within)
        cluster.wait_ok(ready_within)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def running_redis_cluster(masters: int = 3, *args: str) -> Iterator[RedisCluster]:
    """:func:`start_redis_cluster`; on leaving, stop every node."""
    cluster = start_redis_cluster(masters, *args)
    try:
        yield cluster
    finally:
        cluster.stop()

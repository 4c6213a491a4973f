"""Cluster mode: several mqcore servers as one broker, on Redis (``--cluster URL``).

Each node is stateless: indices, caches, ``one`` registrations and the epoch
live in Redis (see :mod:`._scripts` for the keys), and nodes talk only to
Redis. The core's side is :class:`mqcore._cluster.ClusterBroker`; the
runtime that plugs it into the hub is :class:`._node.ClusterNode`. Redis's
asyncio client ties cluster mode to the asyncio backend.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

from mqcore import Output
from mqcore._cluster import ClusterBroker

from .._config import ServerConfig
from ._backend import Backend, BackendError, CacheSizeMismatch
from ._node import ClusterNode

log = logging.getLogger("mqcore_tcp.cluster")

__all__ = [
    "Backend",
    "BackendError",
    "CacheSizeMismatch",
    "ClusterNode",
    "new_broker",
    "node_broker",
    "node_broker_or_exit",
    "node_for",
    "prepare",
]


async def prepare(url: str, cache_size: int) -> str:
    """Check ``cache_size`` against the cluster's and return its epoch (one-line errors)."""
    backend = Backend(url, "prepare", cache_size)
    try:
        return await backend.prepare()
    finally:
        await backend.aclose()


async def node_broker(config: ServerConfig) -> ClusterBroker:
    """The core of a node, once Redis answered; ValueError (one line) if it cannot start."""
    assert config.cluster is not None
    try:
        epoch = await prepare(config.cluster, config.cache_size)
    except (BackendError, CacheSizeMismatch) as exc:
        raise ValueError(str(exc)) from None
    log.info("cluster node on %s, epoch %s", _redacted(config.cluster), epoch)
    return new_broker(config, epoch, auth=config.auth is not None)


async def node_broker_or_exit(config: ServerConfig) -> ClusterBroker:
    """:func:`node_broker`, or a one-line error and exit status 1 (the CLI's)."""
    try:
        return await node_broker(config)
    except ValueError as exc:
        log.error("--cluster: %s", exc)
        raise SystemExit(1) from None


def _redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    scheme, _, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def new_broker(config: ServerConfig, epoch: str, *, auth: bool) -> ClusterBroker:
    """The core of a node: a :class:`ClusterBroker` with ``config``'s bounds."""
    broker = ClusterBroker.for_node(
        uuid.uuid4().hex[:16],
        **config.broker_bounds(),
        choose=random.Random().randrange,
        epoch=epoch,
        auth=auth,
    )
    broker.advance(time.monotonic())
    return broker


def node_for(
    config: ServerConfig,
    broker: object,
    release: Callable[[Output], None],
    flush: Callable[[], None],
) -> ClusterNode:
    """The hub's committer for cluster mode (``broker`` must come from :func:`new_broker`)."""
    if not isinstance(broker, ClusterBroker) or config.cluster is None:
        raise ValueError("cluster mode needs --cluster and a ClusterBroker (new_broker)")
    backend = Backend(config.cluster, broker.node_id, config.cache_size)
    return ClusterNode(backend, broker, release, flush)

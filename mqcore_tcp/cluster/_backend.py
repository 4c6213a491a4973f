"""The Redis side of a node: one client, the scripts, and the calls the node makes.

Every call is bounded by :data:`CALL_TIMEOUT` (a socket timeout and an
overall deadline); any failure raises :class:`BackendError`. The client is
redis-py's asyncio API (with hiredis when installed), so cluster mode runs on
the asyncio backend only.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from mqcore._cluster import Delivered, TopicBatch

from ._keys import CACHE_SIZE, EPOCH, TopicKeys, parse_item
from ._scripts import LOAD, PUBLISH

__all__ = ["CALL_TIMEOUT", "REGISTRATION_TTL", "Backend", "BackendError", "CacheSizeMismatch"]

#: Seconds any Redis call may take before the backend counts as unavailable.
CALL_TIMEOUT: Final = 2.0
#: Milliseconds a node's registration for a topic lives without a heartbeat.
REGISTRATION_TTL: Final = 3000


class BackendError(Exception):
    """Redis did not answer in time, or refused."""


class CacheSizeMismatch(Exception):
    """This node's --cache-size is not the cluster's."""


class Backend:
    """One node's connection to the cluster's Redis."""

    def __init__(self, url: str, node_id: str, cache_size: int) -> None:
        self.url = url
        self.node_id = node_id
        self.cache_size = cache_size
        self.redis: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            health_check_interval=0,
        )
        #: True against a Redis Cluster (found by :meth:`connect`).
        self.cluster = False
        #: Whether :meth:`connect` found what the URL names.
        self.probed = False
        self._probing = anyio.Lock()
        self._scripts()
        self._random = random.Random()
        self._keys: dict[str, TopicKeys] = {}

    def _scripts(self) -> None:
        self._publish = self.redis.register_script(PUBLISH)
        self._load = self.redis.register_script(LOAD)

    async def connect(self) -> None:
        """Find whether the URL names a Redis Cluster; if so, talk to it as one."""
        if self.probed:
            return
        async with self._probing:  # the listener and the writer may both ask first
            if self.probed:
                return
            info = await self._call(self.redis.info("cluster"))
            if int(info.get("cluster_enabled", 0)):
                old = self.redis
                self.redis = aioredis.RedisCluster.from_url(
                    self.url, socket_timeout=CALL_TIMEOUT, socket_connect_timeout=CALL_TIMEOUT
                )
                await self._call(self.redis.initialize())  # the slot map, before any command
                self.cluster = True
                self._scripts()
                with anyio.move_on_after(CALL_TIMEOUT):
                    await old.aclose()
            self.probed = True

    async def _each(self, calls: list[Any]) -> list[Any]:
        """Run ``calls`` (one per topic, on their shards) at once: each result or exception."""
        results: list[Any] = [None] * len(calls)

        async def run(position: int, call: Any) -> None:
            try:
                results[position] = await call
            except (RedisError, RedisClusterException, OSError) as exc:
                results[position] = exc

        with anyio.fail_after(CALL_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for position, call in enumerate(calls):
                    tg.start_soon(run, position, call)
        return results

    def keys(self, topic: str) -> TopicKeys:
        keys = self._keys.get(topic)
        if keys is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            keys = self._keys[topic] = TopicKeys(topic)
        return keys

    async def _call(self, call: Any) -> Any:
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                return await call
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise BackendError(str(exc) or type(exc).__name__) from exc

    async def prepare(self) -> str:
        """Check the cluster's cache size (set at first start) and return its epoch."""

        await self.connect()

        async def steps() -> str:
            await self.redis.set(CACHE_SIZE, self.cache_size, nx=True)
            stored = int(await self.redis.get(CACHE_SIZE))
            if stored != self.cache_size:
                raise CacheSizeMismatch(
                    f"--cache-size {self.cache_size} differs from the cluster's {stored} "
                    f"(stored in {self.url}): start every node with --cache-size {stored}"
                )
            return await self.epoch(create=True) or ""

        result: str = await self._call(steps())
        return result

    async def epoch(self, *, create: bool) -> str | None:
        """The cluster's epoch; with ``create``, set a new one if there is none."""
        if create:
            await self.redis.set(EPOCH, uuid.uuid4().hex, nx=True)
            await self.redis.set(CACHE_SIZE, self.cache_size, nx=True)
        value = await self.redis.get(EPOCH)
        return None if value is None else bytes(value).decode("ascii", "replace")

    async def ping(self) -> None:
        await self._call(self.redis.ping())

    async def publish(self, calls: dict[str, tuple[list[TopicBatch], Any]]) -> list[Any]:
        """One script call per topic (each on its shard), all at once: each result or exception.

        A Redis Cluster's path; a standalone Redis is pipelined (:mod:`._pipeline`).
        """
        each = []
        for topic, (batches, _) in calls.items():
            keys = self.keys(topic)
            kinds = "".join(kind for batch in batches for kind in batch.kinds)
            heads = b"".join(head + b"\n" for batch in batches for head in batch.heads)
            args: list[Any] = [keys.channel, self.cache_size, self._seed(), "n", "", kinds, heads]
            each.append(self._publish(keys=keys.keys, args=args))
        results: list[Any] = await self._call(self._each(each))
        return results

    async def requeue(self, topic: str, ones: Sequence[Delivered]) -> None:
        """Publish ``one`` messages this node could not deliver to another node (or cache them)."""
        keys = self.keys(topic)
        args: list[Any] = [keys.channel, self.cache_size, self._seed(), "r", self.node_id]
        for index, kind, line in ones:
            args += [index, kind[:1], line]
        await self._call(self._publish(keys=keys.keys, args=args))

    async def load(
        self, topic: str, count: int, take_ones: bool
    ) -> tuple[int, list[Delivered], list[Delivered]]:
        """Register for ``topic``; its next index, cache items and taken ``one`` messages."""
        keys = self.keys(topic)
        args = self._route_args(keys, "l", max(1, count), REGISTRATION_TTL, int(take_ones))
        next_index, items, ones = await self._call(self._load(keys=keys.keys, args=args))
        return int(next_index), [parse_item(i) for i in items], [parse_item(i) for i in ones]

    def _route_args(self, keys: TopicKeys, mode: str, *rest: Any) -> list[Any]:
        """The ARGV of a routing script call by this node (see :mod:`._scripts`)."""
        return [keys.channel, self.cache_size, self._seed(), mode, self.node_id, *rest]

    async def confirm(self, handed: dict[str, list[int]]) -> None:
        """The ``one`` messages this node handed to its subscribers: no longer pending.

        One script call per topic, all at once; raises if any failed.
        """
        calls = []
        for topic, indices in handed.items():
            keys = self.keys(topic)
            calls.append((keys.keys, self._route_args(keys, "c", *indices)))
        await self._routes(calls)

    async def _routes(self, calls: list[tuple[list[Any], list[Any]]]) -> None:
        """Routing script calls for several topics: at once (a cluster), else one pipeline."""
        if self.cluster or len(calls) <= 1:
            each = [self._publish(keys=keys, args=args) for keys, args in calls]
            results: list[Any] = await self._call(self._each(each))
        else:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                await self._publish(keys=keys, args=args, client=pipe)
            results = await self._call(pipe.execute(raise_on_error=False))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise BackendError(str(failed[0]))

    async def heartbeat(self, counts: dict[str, int]) -> str | None:
        """Renew this node's registrations; return the epoch (None: Redis lost it).

        Each renewal also re-routes the ``one`` messages pending for nodes found dead.
        """
        calls = []
        for topic, count in counts.items():
            if count:
                keys = self.keys(topic)
                calls.append((keys.keys, self._route_args(keys, "h", count, REGISTRATION_TTL)))
        await self._routes(calls)
        epoch = await self._call(self.redis.get(EPOCH))
        return None if epoch is None else bytes(epoch).decode("ascii", "replace")

    async def unregister(self, topic: str) -> None:
        """Leave ``topic``: this node's pending ``one`` messages go to another node."""
        keys = self.keys(topic)
        await self._call(self._publish(keys=keys.keys, args=self._route_args(keys, "u")))

    def _seed(self) -> int:
        return self._random.randrange(1, 2147483646)

    async def aclose(self) -> None:
        try:
            with anyio.move_on_after(CALL_TIMEOUT):
                await self.redis.aclose()
        except (RedisError, OSError):
            pass

"""The cluster's registry of topic names, and the announcement of each new topic.

Pattern subscribers need the names of topics they were never told about:
this is where nodes find them (see :mod:`mqcore._cluster_patterns`). Rules:

- **Registration.** A publish that numbered a topic's first message (its
  script returned first index 0) makes the sending node register the topic:
  the :data:`REGISTER` script adds the name to the set :data:`REGISTRY` and,
  if it was not there, announces it on the sharded channel :data:`ANNOUNCE`
  (both under hash tag ``{~}``, so one script touches one slot). Names are
  registered off the hot path, in batches, by :meth:`TopicRegistry.run`;
  while Redis is down they wait (at most :data:`MAX_PENDING`) and are
  retried. Every node reads :data:`ANNOUNCE` on its pub/sub connection.
- **Bounds.** The registry holds at most the node's ``max_topics`` names
  (its topic limit): past it a new topic is neither registered nor announced
  (pattern subscribers elsewhere do not see it; logged once per node). In a
  Redis Cluster the registry is one key, so it lives on one shard: fine for
  names (written once per topic, read once per pattern subscribe), and it
  does not limit how topics spread over shards.
- **Reading.** A pattern subscribe reads the whole registry (one SMEMBERS:
  at most the largest ``max_topics`` of the nodes that registered) and the
  core keeps what the pattern matches, refusing a pattern that matches more
  than its own bound.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

import anyio

from ._backend import Backend, BackendError

__all__ = ["ANNOUNCE", "MAX_PENDING", "REGISTER", "REGISTRY", "TopicRegistry"]

log = logging.getLogger("mqcore_tcp.cluster")

#: The set of every topic name (bounded by the registering node's max_topics).
REGISTRY: Final = b"mq:{~}:topics"
#: The sharded channel announcing each newly registered topic (the message is its name).
ANNOUNCE: Final = b"mq:{~}:new"
#: Names waiting to be registered, at most (past it they are dropped, and logged).
MAX_PENDING: Final = 10_000
#: Names registered per script call.
BATCH: Final = 500
#: Seconds before registering again after Redis failed.
RETRY: Final = 0.5

#: KEYS: registry. ARGV: announce channel, the most names it may hold, then
#: names. Adds each name not there yet (while there is room) and announces
#: it. Returns {added, refused for room}.
REGISTER: Final = """
local key, chan, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local added, full = 0, 0
for i = 3, #ARGV do
  if redis.call('SISMEMBER', key, ARGV[i]) == 0 then
    if redis.call('SCARD', key) >= limit then
      full = full + 1
    else
      redis.call('SADD', key, ARGV[i])
      redis.call('SPUBLISH', chan, ARGV[i])
      added = added + 1
    end
  end
end
return {added, full}
"""


class TopicRegistry:
    """One node's side of the registry: registers its new topics, reads the names."""

    def __init__(self, backend: Backend, limit: int) -> None:
        self._backend = backend
        self.limit = limit
        # An ordered set: registered oldest first.
        self._pending: dict[str, None] = {}
        self._ready = anyio.Event()
        self._script: Any = None
        self._client: Any = None
        self._warned = False

    def created(self, topics: Iterable[str]) -> None:
        """Topics whose first message was just numbered: register them (in :meth:`run`)."""
        pending = self._pending
        for topic in topics:
            if len(pending) >= MAX_PENDING:
                self._warn(f"more than {MAX_PENDING} new topics wait to be registered")
                break
            pending[topic] = None
        if pending:
            self._ready.set()

    async def run(self) -> None:
        """Register the pending names, a batch at a time, retrying while Redis fails."""
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            while self._pending:
                names = list(self._pending)[:BATCH]
                try:
                    _, full = await self._register(names)
                except BackendError as exc:
                    log.debug("registering %d topic(s): %s (retried)", len(names), exc)
                    await anyio.sleep(RETRY)
                    continue
                for name in names:
                    self._pending.pop(name, None)
                if full:
                    self._warn(
                        f"the topic registry holds {self.limit} names (--max-topics): "
                        "pattern subscribers do not see newer topics"
                    )

    async def names(self) -> list[str]:
        """Every registered topic name (BackendError if Redis does not answer)."""
        raw = await self._backend._call(self._backend.redis.smembers(REGISTRY))
        return [bytes(name).decode("utf-8", "surrogatepass") for name in raw]

    async def _register(self, names: list[str]) -> tuple[int, int]:
        redis = self._backend.redis
        if self._client is not redis:  # a Redis Cluster client replaces the first one
            self._client = redis
            self._script = redis.register_script(REGISTER)
        args: list[Any] = [ANNOUNCE, self.limit]
        args += [name.encode("utf-8", "surrogatepass") for name in names]
        added, full = await self._backend._call(self._script(keys=[REGISTRY], args=args))
        return int(added), int(full)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)

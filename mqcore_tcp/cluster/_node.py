"""The node runtime: plugs a :class:`~mqcore._cluster.ClusterBroker` into the hub, over Redis.

The hub hands every output to :meth:`ClusterNode.submit`, as it would to a
committer. Theory of operation:

- **Publishing.** Each output with sends (``Output.publishes``; the hub
  submits one per loop turn) is a *flight*: one script call per topic, the
  topic's messages in order. To a standalone Redis it is pipelined
  (:mod:`._pipeline`): sent on one connection without waiting for earlier
  flights' replies, and released, in order, when its replies are in. It is
  sent at once, from the hub's flush, when the pipeline is connected and
  has room and nothing waits before it; otherwise it waits in a queue, and
  a writer task sends every queued output at once (after connecting, or
  once replies make room). To a Redis Cluster each topic's call goes to its shard
  and the flight is answered before the next is sent. Outputs submitted
  meanwhile (with sends or not) queue behind, so nothing overtakes a reply.
  A topic whose script failed (or every unanswered topic, on a timeout or a
  lost connection: their outcome is unknown) has its senders' replies
  replaced by ``Backend unavailable``: a success is written only for a
  reply seen.
- **Deliveries.** The node hears the sharded pub/sub channels of the topics
  the core mirrors and feeds each batch to the core, then flushes the hub
  once per burst of messages: on a standalone Redis each read's messages,
  in the read callback (:mod:`._pubsub`); on a Redis Cluster a listener task
  polls redis-py's ``PubSub``.
- **Work.** Mirror loads (after the channel is subscribed: then the load's
  snapshot and the live batches overlap, and the core drops the overlap),
  drops and returned ``one`` messages run in order in a worker task. Before
  them, the ``one`` messages handed to local subscribers since the last
  round are confirmed (one script call per topic): Redis holds every routed
  ``one`` as pending until then, and re-routes it if this node dies first
  (see :mod:`._scripts`).
- **Patterns.** New topics are registered and announced (see
  :mod:`._registry`); the listener feeds announcements to the core, the
  worker reads the registry for each pattern subscribe.
- **Heartbeat.** Every :data:`HEARTBEAT` seconds the node renews its
  registration for each topic it has subscribers of (which re-routes the
  pending ``one`` messages of nodes found dead) and reads the epoch;
  a missing epoch (Redis lost its data) gets a new one, logged.
- **Unavailable.** Any failed call makes the node unavailable: sends are
  refused at once, ``/healthz`` answers 503; the heartbeat retries with a
  growing delay, and on success the node resubscribes and reloads every
  mirror (filling gaps from the cache).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import anyio
from redis.exceptions import RedisClusterException, RedisError

from mqcore import ConnectionId, Output, Record
from mqcore._cluster import ClusterBroker, ClusterWork

from .._commit import Committer
from ._backend import CALL_TIMEOUT, Backend, BackendError
from ._keys import TopicKeys, parse_batch
from ._pipeline import PublishPipeline, group, refuse
from ._pubsub import Heard, RawPubSub
from ._registry import ANNOUNCE, TopicRegistry

__all__ = ["HEARTBEAT", "ClusterNode"]

log = logging.getLogger("mqcore_tcp.cluster")

#: Seconds between heartbeats (registrations live REGISTRATION_TTL ms).
HEARTBEAT: Final = 1.0
#: Seconds between reconnection attempts: growing, then the last, repeated.
RETRY_DELAYS: Final = (0.1, 0.25, 0.5, 1.0, 2.0)
#: Outputs that may wait for Redis before readers stop reading.
MAX_QUEUED_OUTPUTS: Final = 256
#: Seconds a Redis Cluster's pub/sub waits on each shard per poll (redis-py
#: polls shards in turn): bounds the added latency per shard.
CLUSTER_POLL: Final = 0.005
#: Seconds a channel's subscription may take to be confirmed (a Redis
#: Cluster's pub/sub polls shards in turn, so it can take a few polls).
SUBSCRIBE_TIMEOUT: Final = 5.0
#: Pub/sub messages of a Redis Cluster handled before the hub is flushed.
BURST: Final = 256
#: Handed ``one`` messages whose confirmation may wait for Redis to return.
MAX_UNCONFIRMED: Final = 100_000

#: What a Redis call may raise (a cluster client's own errors are not RedisError's).
_BACKEND_ERRORS: Final = (BackendError, RedisError, RedisClusterException, OSError, TimeoutError)


class ClusterNode(Committer):
    """The hub's committer in cluster mode (see the module's docstring)."""

    def __init__(
        self,
        backend: Backend,
        broker: ClusterBroker,
        release: Callable[[Output], None],
        flush: Callable[[], None],
    ) -> None:
        # Not Committer.__init__: there is no store; the pipeline is Redis.
        self._backend = backend
        self._broker = broker
        self._release = release
        self._flush = flush
        self.error = None
        self.available = True
        self._queue: list[Output] = []
        self._in_flight = 0
        # The writer took outputs from the queue and has not sent them yet
        # (nothing may be sent past them).
        self._holding = False
        self._nudge = anyio.Event()
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._work: deque[ClusterWork] = deque()
        self._work_ready = anyio.Event()
        self._pubsub: Any = None
        # Channels subscribed (by bytes) and the topic of each.
        self._channels: dict[bytes, str] = {}
        self._confirmed: dict[bytes, anyio.Event] = {}
        # Set while the pub/sub connection is up (loads wait for it).
        self._connected = anyio.Event()
        # Handed ``one`` messages per topic, to confirm (see _confirm).
        self._unconfirmed: dict[str, list[int]] = {}
        # The writer's, once it runs (standalone Redis).
        self._pipeline: PublishPipeline | None = None
        self.registry = TopicRegistry(backend, broker.max_topics)

    # -- the hub's side ---------------------------------------------------------------

    def submit(self, output: Output) -> None:
        work = self._broker.take_work()
        if work:
            self._work.append(work)
            self._work_ready.set()
        if not output.publishes and not self._queue and not self._in_flight:
            if output:
                self._release(output)
            return
        pipeline = self._pipeline
        if pipeline is not None and pipeline.ready and not self._queue and not self._holding:
            # Sent from the hub's flush: no writer task wake-up on the way to Redis.
            self._in_flight += 1
            if self._idle.is_set():
                self._idle = anyio.Event()
            pipeline.send_now([output])
            return
        self._queue.append(output)
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._nudge.set()

    def store_later(self, records: list[Record]) -> None:
        """Nothing to store: the backend is Redis."""

    def backlogged(self, cid: ConnectionId) -> bool:
        # Committer.wait_for_room() and drain() wait on _room and _idle as set here.
        return self._broker.paused(cid) or len(self._queue) >= MAX_QUEUED_OUTPUTS

    def _wake(self) -> None:
        self._nudge.set()

    def _rooms(self) -> None:
        self._room.set()
        self._room = anyio.Event()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            tg.start_soon(self._listener)
            tg.start_soon(self._worker)
            tg.start_soon(self._heartbeat)
            tg.start_soon(self.registry.run)

    # -- publishing -------------------------------------------------------------------

    async def _writer(self) -> None:
        # A standalone Redis gets every flight pipelined on one connection
        # (see ._pipeline); a Redis Cluster one call per topic, on its
        # shard, each flight answered before the next is sent.
        pipeline = self._pipeline = PublishPipeline(
            self._backend.url,
            self._backend.cache_size,
            self._done,
            self._unavailable,
            self.registry.created,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.watch)
                while True:
                    await self._nudge.wait()
                    self._nudge = anyio.Event()
                    batch, self._queue = self._queue, []
                    if not batch:
                        continue
                    self._in_flight += len(batch)
                    self._holding = True
                    if not self._backend.probed:
                        try:
                            await self._backend.connect()
                        except _BACKEND_ERRORS as exc:
                            self._unavailable(exc)
                    if not self._backend.probed:  # which way to publish is not known yet
                        for batches, owners in group(batch).values():
                            refuse(batches, owners)
                        self._done(batch)
                    elif self._backend.cluster:
                        await self._publish(batch)
                        self._done(batch)
                    else:
                        await pipeline.send(batch)
                    self._holding = False
        finally:
            await pipeline.aclose()

    def _done(self, outputs: list[Output]) -> None:
        """Release ``outputs`` (answered by Redis, or refused), in the order submitted."""
        for output in outputs:
            self._release(output)
        self._in_flight -= len(outputs)
        self._rooms()
        if not self._queue and not self._in_flight:
            self._idle.set()

    async def _publish(self, outputs: list[Output]) -> None:
        """A Redis Cluster's way: each topic's call on its shard, all answered before the next."""
        calls = group(outputs)
        if not calls:
            return
        results: list[Any]
        try:
            results = await self._backend.publish(calls)
        except _BACKEND_ERRORS as exc:
            self._unavailable(exc)
            results = [exc] * len(calls)
        for (batches, owners), result in zip(calls.values(), results, strict=False):
            if isinstance(result, Exception):
                if self.available:
                    self._unavailable(result)
                refuse(batches, owners)
        # First index 0: these topics are new to the cluster (registered for patterns).
        self.registry.created(t for t, result in zip(calls, results, strict=False) if result == 0)

    def _unavailable(self, exc: BaseException) -> None:
        if self.available:
            self.available = False
            log.warning("backend unavailable (%s): sends are refused until it recovers", exc)
            self._broker.set_backend_available(False)
            self._flush()

    # -- deliveries ---------------------------------------------------------------------

    async def _listener(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen()
            except Exception as exc:  # whatever the client raises: reconnect, never stop
                self._unavailable(exc)
            self._pubsub = None
            await anyio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1
            if self.available:
                attempt = 0

    async def _listen(self) -> None:
        await self._backend.connect()
        pubsub: Any
        if self._backend.cluster:
            pubsub = self._backend.redis.pubsub()
        else:  # heard in the read callback (see ._pubsub)
            pubsub = RawPubSub(self._backend.url, self._heard)
            await pubsub.connect()
        try:
            # The announcements of new topics (and a connection to read from).
            await pubsub.ssubscribe(*self._channels, ANNOUNCE)
            self._pubsub = pubsub
            self._connected.set()
            self._broker.resync()
            self._flush()
            self._submit_work()
            if not self._backend.cluster:
                await pubsub.closed()  # raises why it closed
            while True:
                # A Redis Cluster's pub/sub polls each shard it subscribed on in turn,
                # waiting up to the timeout on each: a short one (see CLUSTER_POLL).
                message = await pubsub.get_sharded_message(timeout=CLUSTER_POLL)
                heard: list[Heard] = []
                while message is not None:
                    kind = message["type"]
                    heard.append(
                        (
                            kind.encode("ascii") if isinstance(kind, str) else kind,
                            message["channel"],
                            message["data"],
                        )
                    )
                    if len(heard) >= BURST:
                        break
                    message = await pubsub.get_sharded_message(timeout=0)
                if heard:
                    self._heard(heard)
        finally:
            if self._connected.is_set():
                self._connected = anyio.Event()
            for event in self._confirmed.values():
                event.set()
            self._confirmed.clear()
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(CALL_TIMEOUT),
                contextlib.suppress(RedisError, OSError),
            ):
                await pubsub.aclose()

    def _heard(self, messages: list[Heard]) -> None:
        """Pub/sub messages, in order: batches to the core, then one flush."""
        broker = self._broker
        handled = False
        for kind, channel, data in messages:
            if kind == b"smessage":
                topic = self._channels.get(channel)
                if topic is not None:
                    first, after, entries = parse_batch(data)
                    broker.deliver(topic, first, after, entries)
                    handled = True
                elif channel == ANNOUNCE:
                    name = bytes(data).decode("utf-8", "surrogatepass")
                    broker.pattern_mirrors.topic_created(name)
                    handled = True
            elif kind == b"ssubscribe":
                event = self._confirmed.pop(channel, None)
                if event is not None:
                    event.set()
        if handled:
            self._flush()
            self._submit_work()

    def _submit_work(self) -> None:
        work = self._broker.take_work()
        if work:
            self._work.append(work)
            self._work_ready.set()

    # -- loads, drops, returns -------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._work_ready.wait()
            self._work_ready = anyio.Event()
            while self._work:
                works = list(self._work)
                self._work.clear()
                # Every burst's handed ``one``s first, one call per topic:
                # a drop below must not re-route what was delivered.
                for work in works:
                    for topic, indices in work.confirms:
                        self._unconfirmed.setdefault(topic, []).extend(indices)
                await self._confirm()
                for work in works:
                    # Returns before drops: leaving a topic re-routes whatever
                    # is still pending here, returned or not.
                    for topic, ones in work.returns:
                        try:
                            await self._backend.requeue(topic, ones)
                        except BackendError as exc:
                            log.warning(
                                "%d one message(s) of %r stay pending here: %s",
                                len(ones),
                                topic,
                                exc,
                            )
                    for topic in work.drops:
                        await self._drop(topic)
                    for pattern in work.scans:
                        await self._scan(pattern)
                    for topic, take_ones in work.loads:
                        await self._load(topic, take_ones)
                self._flush()
                self._submit_work()
                self._rooms()

    async def _confirm(self) -> None:
        """Tell Redis which ``one``s were handed out; kept for a retry if it fails.

        At most :data:`MAX_UNCONFIRMED` indices wait: past that the oldest are
        forgotten (they stay pending in Redis: delivered again if this node dies).
        """
        handed = self._unconfirmed
        if not handed:
            return
        self._unconfirmed = {}
        try:
            await self._backend.confirm(handed)
        except _BACKEND_ERRORS as exc:
            self._unavailable(exc)
            kept = 0
            for topic, indices in handed.items():
                if kept < MAX_UNCONFIRMED:
                    self._unconfirmed[topic] = indices[-(MAX_UNCONFIRMED - kept) :]
                    kept += len(self._unconfirmed[topic])

    async def _load(self, topic: str, take_ones: bool) -> None:
        channel = TopicKeys(topic).channel
        try:
            with anyio.move_on_after(CALL_TIMEOUT):
                await self._connected.wait()
            pubsub = self._pubsub
            if pubsub is None:
                raise BackendError("not connected")
            if channel not in self._channels:
                self._channels[channel] = topic
                confirmed = self._confirmed[channel] = anyio.Event()
                with anyio.fail_after(SUBSCRIBE_TIMEOUT):
                    await pubsub.ssubscribe(channel)
                    await confirmed.wait()
            count = self._broker.pattern_mirrors.target_count(topic)
            next_index, items, ones = await self._backend.load(topic, count, take_ones)
        except _BACKEND_ERRORS as exc:
            self._unavailable(exc)
            self._broker.load_failed(topic)
            return
        self._broker.loaded(topic, next_index, items, ones)

    async def _scan(self, pattern: str) -> None:
        """Read the topic registry for a pattern subscribe (announcements heard first)."""
        try:
            with anyio.move_on_after(CALL_TIMEOUT):
                await self._connected.wait()
            if self._pubsub is None:
                raise BackendError("not connected")
            names = await self.registry.names()
        except _BACKEND_ERRORS as exc:
            self._unavailable(exc)
            self._broker.pattern_mirrors.scan_failed(pattern)
            return
        self._broker.pattern_mirrors.scanned(pattern, names)

    async def _drop(self, topic: str) -> None:
        if topic in self._broker.mirrored():
            return  # subscribed again meanwhile
        channel = TopicKeys(topic).channel
        self._channels.pop(channel, None)
        try:
            if self._pubsub is not None:
                await self._pubsub.sunsubscribe(channel)
            await self._backend.unregister(topic)
        except _BACKEND_ERRORS as exc:
            log.debug("unregistering %r: %s (its registration expires)", topic, exc)

    # -- heartbeat ------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        attempt = 0
        while True:
            delay = HEARTBEAT if self.available else RETRY_DELAYS[min(attempt, 4)]
            await anyio.sleep(delay)
            try:
                epoch = await self._backend.heartbeat(self._broker.mirrored())
                if epoch is None:
                    epoch = await self._backend.epoch(create=True)
                    log.warning("Redis lost the cluster's data: new epoch %s", epoch)
            except _BACKEND_ERRORS as exc:
                attempt += 1
                self._unavailable(exc)
                continue
            attempt = 0
            if epoch is not None and epoch != self._broker.epoch:
                self._broker.set_epoch(epoch)
                self._submit_work()
            if not self.available:
                self.available = True
                log.warning("backend available again")
                self._broker.set_backend_available(True)
                if self._pipeline is not None:
                    self._pipeline.reconnect()
                if self._unconfirmed:
                    self._work.append(ClusterWork())  # the worker retries the confirms
                    self._work_ready.set()
                if self._pubsub is not None:
                    self._broker.resync()
                    self._submit_work()
                self._flush()

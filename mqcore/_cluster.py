"""Cluster mode of the core: indices and caches live in a backend; the core validates, fans out.

:class:`ClusterBroker` is a :class:`~mqcore.Broker` for a node of a cluster
(see ``mqcore_tcp.cluster``). It stays pure: the node does every backend call
and feeds the answers back. Rules:

- **Sends.** A ``send`` is validated as usual (name, size, pattern, auth)
  but gets no index here and reaches no subscriber here: it joins its
  topic's :class:`~mqcore._cluster_batch.TopicBatch` in
  :attr:`Output.publishes`, and the sender's ``{"success": true}`` is
  written at a slot the batch records. The node publishes every batch of an
  output, holds the output until the backend answered, and replaces the
  slots of a refused batch by ``Backend unavailable``. While the backend is
  unavailable (:meth:`ClusterBroker.set_backend_available`) sends are refused
  at once.
- **Deliveries** come back from the backend, per topic, as batches covering
  ``[first, next)`` (:meth:`ClusterBroker.deliver`): delivered to local exact
  and pattern subscribers in index order; a message below the topic's
  expected index is a duplicate and dropped; a batch starting past it (a
  lost batch, a reconnect) makes the core ask the node to reload the topic
  (:attr:`ClusterWork.loads`), later batches wait meanwhile, and the reload
  delivers what the backend's cache still holds of the gap.
- **Mirrors.** For each topic with local subscribers the core keeps a mirror
  of the backend's cache (loaded once, then kept from live deliveries). A
  ``subscribe`` to a topic whose mirror is not loaded pauses its connection
  (the rest of its input kept; the transport stops reading it: see
  :meth:`ClusterBroker.paused`) until :meth:`ClusterBroker.loaded`; then the
  reply, the replay and the live deliveries follow, with no gap and no
  duplicate. When the last local subscriber leaves, the mirror is dropped
  (:attr:`ClusterWork.drops`).
- **``one``.** The backend picks the node; a ``one`` addressed to this node
  goes to one local target (a job if it has consumers: :mod:`._cluster_acks`),
  pending in the backend until confirmed (:attr:`ClusterWork.confirms`); with
  none left it goes back (:attr:`ClusterWork.returns`) to be picked again.
  The first load of a topic takes its cached ``one`` messages (consumed once
  cluster-wide) for the subscribe that asked for the cache.
- **Patterns** see every matching topic of the cluster, with replay, as on
  one node: see :mod:`mqcore._cluster_patterns`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from ._auth import Permissions
from ._broker import Output
from ._cluster_acks import ClusterAcks, ClusterWorkQueues
from ._cluster_batch import ClusterWork, Delivered, Mirror, TopicBatch
from ._cluster_patterns import PatternMirrors
from ._commands import _SPLICE_QUOTES
from ._connection import Connection, ConnectionId
from ._protocol import (
    SUCCESS,
    Reason,
    Send,
    Subscribe,
    Unsubscribe,
    delivery_bytes,
    error_reply,
)
from ._stats import BrokerStats
from ._subjects import is_pattern

__all__ = ["ClusterBroker", "ClusterWork", "Delivered", "TopicBatch"]

_BACKEND_UNAVAILABLE: Final = error_reply(Reason.BACKEND_UNAVAILABLE)
_TOPIC_TOO_LONG: Final = error_reply(Reason.TOPIC_TOO_LONG)
_SEND_TO_PATTERN: Final = error_reply(Reason.SEND_TO_PATTERN)
_ALL: Final = b"a"
_CACHED: Final = b"c"

class ClusterBroker(ClusterAcks):
    """A broker whose indices, caches and cross-node deliveries are the backend's.

    Made by :meth:`for_node`, not called directly.
    """

    # Set by for_node() (and, for ClusterAcks, declared there).
    node_id: str
    _mirrors: dict[str, Mirror]
    _batches: dict[str, TopicBatch]
    _backend_available: bool
    pattern_mirrors: PatternMirrors

    @classmethod
    def for_node(cls, node_id: str, **options: Any) -> ClusterBroker:
        """A node's core: ``node_id`` names this node in the backend (no spaces); the
        other keywords are :class:`~mqcore.Broker`'s (not ``durable``: the backend
        is the store)."""
        if not node_id or " " in node_id:
            raise ValueError("node_id must be a non-empty word")
        # Broker's own __init__, called plainly: compiled by mypyc, an
        # __init__ of ours forwarding **options to super().__init__() would
        # pass the dict as its first argument.
        broker = cls(**options)
        broker.node_id = node_id
        broker._node_bytes = node_id.encode("ascii")
        broker._mirrors = {}
        broker._batches = {}
        broker._work = ClusterWork()
        broker._backend_available = True
        broker._acks = broker._jobs = ClusterWorkQueues(broker._acks, broker._job_done)
        #: The pattern subscriptions' mirrors (the node feeds it the registry).
        broker.pattern_mirrors = PatternMirrors(broker)
        return broker

    # -- the node's side ------------------------------------------------------------

    def receive_data(self, cid: ConnectionId, data: bytes) -> None:
        held = self._held.get(cid)
        if held is not None:
            held.append(data)  # paused: kept until it resumes
            return
        super().receive_data(cid, data)

    def paused(self, cid: ConnectionId) -> bool:
        """True while ``cid`` waits for a mirror: the transport stops reading it."""
        return cid in self._held

    def take_output(self) -> Output:
        output = super().take_output()
        if self._batches:
            output.publishes = list(self._batches.values())
            self._batches = {}
        return output

    def take_work(self) -> ClusterWork:
        """Return (and forget) the backend calls asked for since the last call."""
        work, self._work = self._work, ClusterWork()
        return work

    def set_backend_available(self, ok: bool) -> None:
        """While False, sends and first subscribes to a topic get ``Backend unavailable``."""
        self._backend_available = ok

    @property
    def epoch(self) -> str | None:
        """The epoch ``hello`` reports."""
        return self._epoch

    def set_epoch(self, epoch: str) -> None:
        """The cluster's epoch changed (the backend lost its data): ``hello`` says so.

        Numbering starts over: every mirror is loaded again as new.
        """
        if epoch == self._epoch:
            return
        self._epoch = epoch
        self._hello = self._hello_bytes()
        for mirror in self._mirrors.values():
            mirror.next = -1
            mirror.cache.clear()
        self.resync()

    def mirrored(self) -> dict[str, int]:
        """Each mirrored topic and its number of local subscribers (for the heartbeat)."""
        return {name: self.pattern_mirrors.target_count(name) for name in self._mirrors}

    def resync(self) -> None:
        """Reload every mirror (after a reconnect to the backend): gaps are filled then."""
        for name, mirror in self._mirrors.items():
            if not mirror.loading:
                mirror.loading = True
                self._work.loads.append((name, False))
        self.pattern_mirrors.rescan()

    def deliver(self, name: str, first: int, next_index: int, entries: list[Delivered]) -> None:
        """Messages of topic ``name`` from the backend, covering indices ``[first, next_index)``.

        ``next_index`` 0 means a batch of returned ``one`` messages only.
        """
        mirror = self._mirrors.get(name)
        if mirror is None:
            self._return_mine(name, entries)
        elif mirror.loading:
            mirror.pending.append((first, next_index, entries))
        elif next_index and first > mirror.next:
            # A gap: reload the topic; this batch and later ones wait for it.
            mirror.loading = True
            mirror.pending.append((first, next_index, entries))
            self._work.loads.append((name, False))
        else:
            self._deliver(name, mirror, next_index, entries)

    def loaded(
        self, name: str, next_index: int, entries: list[Delivered], ones: list[Delivered]
    ) -> None:
        """The backend's cache of ``name`` (oldest first) and its next index; taken ``one``s."""
        mirror = self._mirrors.get(name)
        if mirror is None:
            self._return(name, ones)
            return
        if mirror.next >= 0:
            # A reload: what the cache still holds of the gap goes to the
            # current subscribers, up to the first batch that waited for it.
            bound = mirror.pending[0][0] if mirror.pending else next_index
            gap = [e for e in entries if e[1] == _CACHED and e[0] < bound]
            self._deliver(name, mirror, 0, gap)
            mirror.next = max(mirror.next, bound)
        else:
            mirror.next = next_index
        mirror.cache.clear()
        mirror.cache.extend((index, line) for index, kind, line in entries if kind == _CACHED)
        self._settle(name, mirror, ones)

    def load_failed(self, name: str) -> None:
        """The backend did not answer a load: waiting subscribes are refused."""
        mirror = self._mirrors.get(name)
        if mirror is None:
            return
        waiting, mirror.waiting = mirror.waiting, []
        for conn, _ in waiting:
            self._fail(conn, _BACKEND_UNAVAILABLE)
        self.pattern_mirrors.load_failed(name)
        self._settle(name, mirror, [])
        for conn, _ in waiting:
            self._resume(conn)

    def stats(self) -> BrokerStats:
        return dataclasses.replace(super().stats(), storage_available=self._backend_available)

    # -- the protocol, in cluster mode -----------------------------------------------

    def _send(self, conn: Connection, command: Send, line: bytes) -> None:
        if not self._backend_available:
            self._fail(conn, _BACKEND_UNAVAILABLE)
            return
        name = command.topic
        if self._table.name_too_long(name):
            self._fail(conn, _TOPIC_TOO_LONG)
            return
        if is_pattern(name):
            self._fail(conn, _SEND_TO_PATTERN)
            return
        # The delivered line up to its index, exactly as Commands._send builds it.
        if line.count(b'"') < _SPLICE_QUOTES:
            head = line.strip(b" \t\r}") + b', "index": '
        else:
            head = delivery_bytes(line, 0)[:-4]  # without "0}\r\n"
        cache = command.cache and self._caching
        kinds = ("c", "a") if command.delivery == "all" else ("p", "o")
        kind = kinds[0] if cache else kinds[1]
        batch = self._batches.get(name)
        if batch is None:
            batch = self._batches[name] = TopicBatch(name)
        batch.kinds.append(kind)
        batch.heads.append(head)
        self._emit(conn, SUCCESS)
        out = conn.out
        assert out is not None
        if conn.id >= 0:  # not the broker's own dead letters (mqcore._ack_commands)
            batch.slots.append((conn.id, len(out) - 1))

    def _subscribe(self, conn: Connection, command: Subscribe) -> None:
        name = command.topic
        if command.ack is True:
            refusal = self._ack_refusal(command)
            if refusal is not None:
                self._fail(conn, refusal)
                return
        elif is_pattern(name):
            self.pattern_mirrors.subscribe(conn, command)
            return
        mirror = self._mirrors.get(name)
        if mirror is not None and not mirror.loading:
            self._join_mirror(conn, command, mirror, [])
            return
        if self._table.name_too_long(name):
            self._fail(conn, _TOPIC_TOO_LONG)
            return
        if mirror is None:
            if not self._backend_available:
                self._fail(conn, _BACKEND_UNAVAILABLE)
                return
            mirror = self._new_mirror(name, command.cache or command.ack is True)
        mirror.waiting.append((conn, command))
        self._held[conn.id] = []

    def _new_mirror(self, name: str, take_ones: bool) -> Mirror:
        mirror = self._mirrors[name] = Mirror(self.cache_size)
        self._work.loads.append((name, take_ones))
        return mirror

    def _unsubscribe(self, conn: Connection, command: Unsubscribe) -> None:
        if command.topic in self._table.patterns.by_connection.get(conn, ()):
            self.pattern_mirrors.removing([command.topic])
        super()._unsubscribe(conn, command)
        self._left([command.topic])

    def connection_lost(self, cid: ConnectionId) -> None:
        conn = self._connections.get(cid)
        names = [] if conn is None else list(conn.topics)
        if conn is not None:
            self.pattern_mirrors.removing(self._table.patterns.by_connection.get(conn, ()))
        self._held.pop(cid, None)
        super().connection_lost(cid)
        self._left(names)

    def _end(self, conn: Connection) -> None:
        names = list(conn.topics)
        self.pattern_mirrors.removing(self._table.patterns.by_connection.get(conn, ()))
        super()._end(conn)
        self._left(names)

    def set_permissions(self, cid: ConnectionId, permissions: Permissions | None) -> None:
        conn = self._connections.get(cid)
        names = [] if conn is None else list(conn.topics)
        super().set_permissions(cid, permissions)
        # The subscriptions the new permissions dropped (exact ones, and patterns:
        # counted by the pattern table, rechecked by the mirrors) may free mirrors.
        if permissions is not None and conn is not None:
            self._left([name for name in names if name not in conn.topics])

    # -- helpers ------------------------------------------------------------------------

    def _join_mirror(
        self, conn: Connection, command: Subscribe, mirror: Mirror, ones: list[Delivered]
    ) -> bool:
        """Subscribe ``conn`` now: reply, replay the mirror (and ``ones``); True if it took them."""
        topic = self._topics.get(command.topic) or self._create(conn, command.topic)
        if topic is None:
            return False
        self._table.subscribe(topic, conn)
        queue = self._consumer(conn, topic.name, command)
        self._emit(conn, SUCCESS)
        if command.cache:
            last_seen = command.last_seen
            for index, line in mirror.cache:
                if index > last_seen:
                    self._emit(conn, line)
        if queue is not None:
            return self._claim(queue, ones)
        if not command.cache or not ones:
            return False
        for _, _, line in ones:
            self._emit(conn, line)
        self._work.confirms.append((topic.name, [index for index, _, _ in ones]))
        return True

    def _settle(self, name: str, mirror: Mirror, ones: list[Delivered]) -> None:
        """A load ended: subscribe the waiting, deliver what came meanwhile, resume."""
        mirror.loading = False
        waiting, mirror.waiting = mirror.waiting, []
        joined: list[Connection] = []
        for conn, command in waiting:
            if self._connections.get(conn.id) is not conn:
                continue  # gone meanwhile
            if not conn.closing and self._join_mirror(conn, command, mirror, ones):
                ones = []
            joined.append(conn)
        self._return(name, self.pattern_mirrors.loaded(name, ones))
        pending, mirror.pending = mirror.pending, []
        for first, next_index, entries in pending:
            self.deliver(name, first, next_index, entries)
        for conn in joined:
            self._resume(conn)
        self._left([name])

    def _resume(self, conn: Connection) -> None:
        held = self._held.pop(conn.id, None)
        if held:
            self.receive_data(conn.id, b"".join(held))

    def _left(self, names: list[str]) -> None:
        """Drop the mirrors of ``names`` that lost their last local subscriber."""
        topics = self._topics
        for name in [*names, *self.pattern_mirrors.released()]:
            self._return_jobs(name)
            mirror = self._mirrors.get(name)
            if mirror is None or mirror.loading:
                continue
            topic = topics.get(name)
            if (topic is None or not topic.subscribers) and not self.pattern_mirrors.keeps(name):
                del self._mirrors[name]
                self._work.drops.append(name)

    def _deliver(
        self, name: str, mirror: Mirror, next_index: int, entries: list[Delivered]
    ) -> None:
        topic = self._topics.get(name)
        targets: list[Connection] = []
        if topic is not None:
            patterns = self._table.patterns
            targets = patterns.targets(topic) if patterns.count else topic.subscribers
        elif self._table.patterns.count:
            targets = self.pattern_mirrors.targets(name)
        expected = mirror.next
        dirty = self._dirty
        cache = mirror.cache
        mine = self._node_bytes
        unsent: list[Delivered] = []
        handed: list[int] = []
        acks = self._acks
        queue = acks.consuming(name) if acks.queues else None
        for entry in entries:
            index, kind, line = entry
            if kind in (_ALL, _CACHED):
                if index < expected:
                    continue  # already delivered
                expected = index + 1
                if kind == _CACHED:
                    cache.append((index, line))
                for subscriber in targets:
                    out = subscriber.out
                    if out is None:
                        subscriber.out = [line]
                        dirty.append(subscriber)
                    else:
                        out.append(line)
            elif kind[1:] == mine:
                if queue is not None:
                    if acks.has_room(len(line)):
                        acks.add(queue, index, line)
                    else:
                        unsent.append(entry)  # back to the backend, for another node
                elif targets:
                    self._emit(targets[self._pick_target(topic, len(targets))], line)
                    handed.append(index)
                else:
                    unsent.append(entry)
        mirror.next = max(expected, next_index)
        if queue is not None:
            acks.dispatch(queue)
        self._return(name, unsent)
        if handed:
            self._work.confirms.append((name, handed))

    def _pick_target(self, topic: Any, n: int) -> int:
        if topic is None and self._choose is None:
            return 0  # a pattern subscriber's topic: no round-robin state here
        return self._pick(topic, n)

    def _return_mine(self, name: str, entries: list[Delivered]) -> None:
        mine = self._node_bytes
        self._return(name, [e for e in entries if e[1][1:] == mine and e[1][:1] in b"op"])

    def _return(self, name: str, ones: list[Delivered]) -> None:
        if ones:
            self._work.returns.append((name, ones))

    def advance(self, now: float) -> None:
        super().advance(now)
        for name in self._jobs.with_orphans():
            self._return_jobs(name)

"""Topics, their subscribers and their caches, kept consistent and bounded.

Rules:

- **Subscribers.** A topic keeps a list of its subscribers; each connection
  keeps, per topic, its position in that list. Subscribing appends,
  unsubscribing moves the last subscriber into the gap: both O(1), and a
  delivery iterates (or, for ``one``, indexes) the list as it is.
- **Caches.** Each topic caches at most ``cache_size`` messages; over all
  topics at most ``max_cache_bytes`` bytes are cached, the oldest message
  (whatever its topic) evicted first. Every cached message is also in one
  broker-wide queue, oldest first; a message that left its cache otherwise
  stays there marked ``gone`` (and without its bytes) until it reaches the
  front or a compaction drops it.
- **Names.** A topic name longer than ``max_topic_bytes`` (in UTF-8) never
  creates a topic: the command is refused with ``Topic name too long``. A
  name that is a pattern (a ``*`` or ``>`` token) never creates one either:
  a ``send`` to it is refused with ``Cannot send to a pattern`` (a subscribe
  to it is a pattern subscription: :mod:`mqcore._patterns`).
- **Forgetting.** A topic with no subscribers and nothing cached holds
  nothing a client could ask for, so it is forgotten at once: when its last
  subscriber leaves, after a send that cached nothing, when its cache
  empties (by eviction). A topic with no subscribers but a
  cache is *idle*; idle topics are kept oldest-idle first. When
  ``max_topics`` topics exist, a new topic first evicts the topic idle for
  longest (dropping its cache, as ``max_cache_bytes`` eviction would); only
  if every topic has subscribers is it refused with ``Too many topics``.
  (Restored topics start idle, oldest first, even with nothing cached.)
  So junk sends cannot lock clients out of new topics.
- **Numbering never restarts within an epoch.** The table keeps one integer,
  the *index floor*: the highest next index of every topic forgotten. A topic
  created later (the same name or any other) starts numbering at the floor,
  never below an index a client may have seen. A fresh broker's floor is 0,
  so numbering starts at 0 as the reference's does. A durable broker emits
  :class:`~mqcore.DropTopic` so the store keeps the floor across restarts
  (see :meth:`mqcore._journal.Journal.forgotten`).

Every operation here is O(1) amortised, except those that drop messages,
which are O(messages dropped).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from ._connection import Connection
from ._journal import Journal
from ._limits import TopicLimits
from ._patterns import PatternTable, TopicIndex
from ._protocol import REFUSED, Reason
from ._records import TopicState
from ._state import Entry, Topic
from ._subjects import is_pattern

__all__ = ["TopicTable"]


class TopicTable:
    """Every topic of a broker, by name, with the bounds above."""

    __slots__ = (
        "_journal",
        "by_name",
        "cache_bytes",
        "cache_size",
        "cached",
        "idle",
        "index_floor",
        "limits",
        "max_cache_bytes",
        "names",
        "order",
        "patterns",
    )

    def __init__(self, limits: TopicLimits, journal: Journal | None) -> None:
        self.limits = limits
        # Read on every cached send: attributes of their own, one lookup less.
        self.cache_size = limits.cache_size
        self.max_cache_bytes = limits.max_cache_bytes
        self._journal = journal
        self.by_name: dict[str, Topic] = {}
        # Topics without subscribers, longest idle first. An OrderedDict, not
        # a dict: taking its first item stays O(1) however many were removed.
        self.idle: OrderedDict[str, Topic] = OrderedDict()
        self.index_floor = 0
        self.order: deque[Entry] = deque()
        self.cached = 0
        self.cache_bytes = 0
        # Pattern subscriptions count toward the same bound as topics.
        self.patterns = PatternTable(limits.max_topics)
        # Every topic by token, for pattern replays: built at the first one.
        self.names: TopicIndex | None = None

    # -- topics -------------------------------------------------------------------

    def name_too_long(self, name: str) -> bool:
        """True if ``name`` is over ``max_topic_bytes`` in UTF-8."""
        # A code point is at most 4 bytes: most names need no encoding at all.
        return len(name) * 4 > self.limits.max_topic_bytes and (
            len(name.encode("utf-8", "surrogatepass")) > self.limits.max_topic_bytes
        )

    def create(self, name: str) -> Topic | bytes:
        """Create topic ``name`` (numbered from the floor), or return the refusal to send."""
        if self.name_too_long(name):
            return REFUSED[Reason.TOPIC_TOO_LONG]
        if is_pattern(name):
            return REFUSED[Reason.SEND_TO_PATTERN]
        if len(self.by_name) >= self.limits.max_topics:
            if not self.idle:
                return REFUSED[Reason.TOO_MANY_TOPICS]
            self.forget(next(iter(self.idle.values())))
        return self._add(name, self.index_floor)

    def _add(self, name: str, next_index: int) -> Topic:
        topic = self.by_name[name] = self.idle[name] = Topic(name, self.cache_size, next_index)
        return topic

    def cached_matching(self, pattern: str) -> list[Topic]:
        """The topics with a cache that the well-formed ``pattern`` matches, in name order."""
        if self.names is None:
            # Once, at the first pattern replay; kept up to date from then on.
            self.names = TopicIndex(t for t in self.by_name.values() if t.cache)
        return self.names.matching(pattern)

    def _uncached(self, topic: Topic) -> None:
        """``topic``'s cache may have emptied: out of the index of cached topics, if so."""
        if not topic.cache and self.names is not None:
            self.names.remove(topic)

    def forget(self, topic: Topic) -> None:
        """Drop ``topic`` and its cache; raise the floor to its next index."""
        name = topic.name
        del self.by_name[name]
        self.idle.pop(name, None)
        if topic.next_index > self.index_floor:
            self.index_floor = topic.next_index
        entries = list(topic.cache)
        topic.cache.clear()
        self._uncache(entries)
        self._uncached(topic)
        if self._journal is not None:
            self._journal.forgotten(
                name, topic.next_index, [e.index for e in entries], topic.waiting
            )

    def _settle(self, topic: Topic) -> None:
        """``topic`` just lost its last subscriber: idle if it caches, else forgotten."""
        if topic.cache:
            self.idle[topic.name] = topic
        else:
            self.forget(topic)

    # -- subscribers -------------------------------------------------------------

    def subscribe(self, topic: Topic, conn: Connection) -> None:
        """Add ``conn`` to ``topic``'s subscribers, if it is not one already."""
        name = topic.name
        if name in conn.topics:
            return
        subscribers = topic.subscribers
        conn.topics[name] = len(subscribers)
        subscribers.append(conn)
        topic.targets_generation = -1
        if len(subscribers) == 1:
            self.idle.pop(name, None)

    def unsubscribe(self, topic: Topic, conn: Connection) -> None:
        """Remove ``conn`` from ``topic``'s subscribers, if it is one."""
        position = conn.topics.pop(topic.name, None)
        if position is not None:
            self._remove(topic, conn, position)

    def drop_connection(self, conn: Connection) -> None:
        """Remove ``conn`` from every topic it subscribes to."""
        by_name = self.by_name
        for name, position in conn.topics.items():
            self._remove(by_name[name], conn, position)
        conn.topics.clear()
        if self.patterns.count:
            self.patterns.drop_connection(conn)

    def _remove(self, topic: Topic, conn: Connection, position: int) -> None:
        subscribers = topic.subscribers
        topic.targets_generation = -1
        last = subscribers.pop()
        if last is not conn:
            # Swap the last subscriber into the gap.
            subscribers[position] = last
            last.topics[topic.name] = position
        if not subscribers:
            self._settle(topic)

    # -- caches -------------------------------------------------------------------

    def cache_append(self, topic: Topic, entry: Entry) -> None:
        """Cache ``entry`` in ``topic``, evicting its oldest if its cache is full.

        The caller then calls :meth:`shrink` if over ``max_cache_bytes``.
        """
        cache = topic.cache
        if len(cache) == self.cache_size:
            # The deque drops its oldest entry as this one goes in: the
            # common case once a topic is busy, so _uncache() is inlined and
            # the count of cached entries does not change.
            old = cache[0]
            if self._journal is not None:
                self._journal.trimmed_below(topic.name, old.index)
            old.gone = True
            self.cache_bytes += len(entry.data) - len(old.data)
            old.data = b""
        else:
            if not cache and self.names is not None:
                self.names.add(topic)
            self.cached += 1
            self.cache_bytes += len(entry.data)
        cache.append(entry)
        order = self.order
        order.append(entry)
        if len(order) > 2 * self.cached + 1024:
            # Mostly entries already gone: compact, at a cost amortised over
            # the appends that made them.
            self.order = deque(e for e in order if not e.gone)

    def consume(self, topic: Topic, consumed: list[Entry]) -> None:
        """Take the replayed ``one`` messages ``consumed`` out of ``topic``'s cache."""
        self._uncache(consumed)
        topic.cache = deque((e for e in topic.cache if not e.gone), maxlen=self.cache_size)
        self._uncached(topic)

    def _uncache(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            entry.gone = True
            self.cached -= 1
            self.cache_bytes -= len(entry.data)
            # It may wait in `order` until a compaction: without its bytes.
            entry.data = b""

    def shrink(self) -> None:
        """Evict the oldest cached messages, over all topics, until within max_cache_bytes."""
        order = self.order
        while self.cache_bytes > self.max_cache_bytes and order:
            entry = order.popleft()
            if entry.gone:
                continue
            # Each topic's cache is in the same order as `order`, so the
            # oldest entry still cached anywhere is its own topic's oldest.
            topic = self.by_name[entry.topic]
            topic.cache.popleft()
            if self._journal is not None:
                self._journal.evicted(entry.topic, entry.index)
            self._uncache([entry])
            if not topic.cache and not topic.subscribers:
                self.forget(topic)
            else:
                self._uncached(topic)

    # -- restore ------------------------------------------------------------------

    def restore(self, states: Iterable[TopicState], index_floor: int) -> None:
        """Load topics saved by a store (see :meth:`mqcore.Broker.restore`)."""
        self.index_floor = max(self.index_floor, index_floor)
        for state in states:
            topic = self.by_name.get(state.topic) or self._add(state.topic, 0)
            entries = sorted(state.cache, key=lambda entry: entry[0])
            # Never hand out an index a stored message already has, even if
            # the store's next index lags behind its cache.
            topic.next_index = max(state.next_index, entries[-1][0] + 1 if entries else 0)
            self._uncache(list(topic.cache))
            topic.cache.clear()
            self._uncached(topic)
            dropped = entries[: max(0, len(entries) - self.cache_size)]
            if self._journal is not None and dropped:
                self._journal.trim(state.topic, dropped[-1][0] + 1)
            for index, delivery, data in entries[len(dropped) :]:
                self.cache_append(topic, Entry(index, delivery == "one", data, state.topic))
        # A restored topic with nothing cached stays (idle, so the first to be
        # evicted for room) until it is next used: the store keeps its index.
        self.shrink()

"""The Broker: the whole protocol as a pure state machine, with no I/O.

A transport registers each connection, feeds it the bytes it reads (in any
chunks), tells the broker when a connection is gone, and after each batch of
input takes an :class:`Output`: the bytes owed to each connection, the
connections to close once their bytes are written, and (for a durable broker)
the records that must be stored before any of those bytes are released.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NewType

import msgspec

from ._protocol import (
    COMMAND_DECODER,
    SUCCESS,
    Command,
    Hello,
    Reason,
    Send,
    Subscribe,
    Unsubscribe,
    delivery_bytes,
    error_reply,
    hello_reply,
)
from ._records import CacheAdd, CacheRemove, CacheTrim, NextIndex, Record, TopicState

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_TOPICS",
    "Broker",
    "ConnectionId",
    "Output",
]

ConnectionId = NewType("ConnectionId", int)
"""Names one connection registered with a :class:`Broker`."""

DEFAULT_CACHE_SIZE: Final = 100
DEFAULT_MAX_LINE_BYTES: Final = 1 << 20
DEFAULT_MAX_TOPICS: Final = 1_000_000
DEFAULT_MAX_CACHE_BYTES: Final = 1 << 30

_NOT_UTF8: Final = error_reply(Reason.NOT_UTF8)
_NOT_JSON: Final = error_reply(Reason.NOT_JSON)
_MALFORMED: Final = error_reply(Reason.MALFORMED)
_LINE_TOO_LONG: Final = error_reply(Reason.LINE_TOO_LONG)
_TOO_MANY_TOPICS: Final = error_reply(Reason.TOO_MANY_TOPICS)
#: A send without a repeated key has 16 quote characters (four keys, four
#: string values), 18 with "cache"; a repeated key adds at least two more. So
#: a line with fewer than 20 cannot repeat a key and is spliced as it is;
#: one with more (a repeated key, or escaped quotes in a value) is re-encoded.
_SPLICE_QUOTES: Final = 20


@dataclass(slots=True)
class Output:
    """What the transport must do after feeding input to the broker.

    ``records`` must be stored first (durable brokers only); then each
    connection in ``writes`` is sent its chunks, in order; then each
    connection in ``close`` is closed, after its writes are flushed.
    ``after_write[cid]`` (durable brokers only) must be stored once the bytes
    of this output owed to ``cid`` have been handed to its socket, or once
    ``cid`` is gone: it records that ``delivery: "one"`` messages were
    consumed, so a crash before the hand-off delivers them again instead of
    losing them.
    """

    writes: dict[ConnectionId, list[bytes]] = field(default_factory=dict)
    close: list[ConnectionId] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    after_write: dict[ConnectionId, list[Record]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.writes or self.close or self.records or self.after_write)


class _Entry(msgspec.Struct, gc=False):
    """A cached message: its index, whether it is a ``one`` message, its wire bytes."""

    # A Struct rather than a class with __init__: one is built per cached send,
    # and a Struct is built in C, about three times faster; gc=False because
    # it holds no containers, so the garbage collector need not track it.
    index: int
    one: bool
    data: bytes
    topic: str
    # Set when it leaves its topic's cache, so the broker-wide eviction
    # order (which drops such entries lazily) can skip it.
    gone: bool = False


class _Topic:
    __slots__ = ("cache", "next_index", "rr", "snapshot", "subscribers")

    def __init__(self, cache_size: int) -> None:
        self.next_index = 0
        self.subscribers: dict[_Connection, None] = {}
        # A tuple of the subscribers, rebuilt only when they change, so a
        # delivery iterates (or indexes, for `one`) without copying.
        self.snapshot: tuple[_Connection, ...] = ()
        self.cache: deque[_Entry] = deque(maxlen=cache_size)
        self.rr = 0


class _Connection:
    __slots__ = ("buffer", "closing", "discarding", "id", "out", "topics")

    def __init__(self, cid: ConnectionId) -> None:
        self.id = cid
        self.buffer = bytearray()
        # True while the rest of an over-long line is being thrown away.
        self.discarding = False
        self.topics: set[str] = set()
        # Chunks owed to this connection since the last take_output(); None
        # when nothing is owed, so the broker knows when to list it as dirty.
        self.out: list[bytes] | None = None
        self.closing = False


class Broker:
    """An aiomemq-compatible message broker with no I/O of its own.

    ``cache_size`` bounds each topic's replay cache (0 disables it);
    ``max_line_bytes`` bounds one input line; ``max_topics`` bounds how many
    topics exist (a ``send`` or ``subscribe`` that would create one more is
    answered ``Too many topics``; a topic is never forgotten, since its index
    must not start over); ``max_cache_bytes`` bounds the bytes cached over all
    topics (past it, the oldest cached messages, whatever their topic, are
    evicted); ``choose(n)`` returns the index,
    in ``range(n)``, of the subscriber that gets a ``delivery: "one"``
    message (pass ``random.Random().randrange``; the default is round robin,
    so that the core needs no randomness of its own). With ``durable=True``
    every change to a topic's index or cache is also emitted as a
    :class:`Record` in :attr:`Output.records` (or, for the consumption of a
    ``one`` message, :attr:`Output.after_write`). ``epoch`` names this run of
    index numbering (the transport makes a new one whenever numbering starts
    over); with it the broker answers the ``hello`` handshake, without it
    ``hello`` is an unknown command, as it is for the reference.
    """

    def __init__(
        self,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        choose: Callable[[int], int] | None = None,
        durable: bool = False,
        epoch: str | None = None,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        if max_topics < 1:
            raise ValueError("max_topics must be >= 1")
        if max_cache_bytes < 0:
            raise ValueError("max_cache_bytes must be >= 0")
        self.cache_size: Final = cache_size
        self.max_line_bytes: Final = max_line_bytes
        self.max_topics: Final = max_topics
        self.max_cache_bytes: Final = max_cache_bytes
        # Every cached entry, oldest first, over all topics, for evicting past
        # max_cache_bytes; entries that left their cache otherwise stay here,
        # marked gone, until eviction or a compaction drops them.
        self._cache_order: deque[_Entry] = deque()
        self._cached = 0
        self._cache_bytes = 0
        self._choose = choose
        self._durable = durable
        self._hello = (
            None
            if epoch is None
            else hello_reply(
                epoch, cache_size=cache_size, max_line_bytes=max_line_bytes, durable=durable
            )
        )
        self._topics: dict[str, _Topic] = {}
        self._connections: dict[ConnectionId, _Connection] = {}
        self._next_id = 0
        self._dirty: list[_Connection] = []
        self._close: list[ConnectionId] = []
        self._records: list[Record] = []
        # Durable only. A topic's records are made once per batch, in
        # take_output(), not once per message: a store applies a batch
        # atomically, so only where the batch ended matters. `_bumped` maps a
        # topic sent to in this batch to its first index in the batch;
        # `_trimmed` one that evicted to the newest index it evicted.
        self._bumped: dict[str, int] = {}
        self._trimmed: dict[str, int] = {}
        self._after_write: dict[ConnectionId, list[Record]] = {}

    # -- the transport's side -------------------------------------------------

    def open_connection(self) -> ConnectionId:
        """Register a new connection and return its id."""
        cid = ConnectionId(self._next_id)
        self._next_id += 1
        self._connections[cid] = _Connection(cid)
        return cid

    def connection_lost(self, cid: ConnectionId) -> None:
        """Forget a connection: its subscriptions and anything still owed to it.

        Idempotent, so the transport may call it whatever way the connection ended.
        """
        conn = self._connections.pop(cid, None)
        if conn is None:
            return
        for name in conn.topics:
            self._remove_subscriber(self._topics[name], conn)
        conn.topics.clear()
        conn.out = None

    def receive_data(self, cid: ConnectionId, data: bytes) -> None:
        """Feed bytes read from a connection; they may split lines anywhere."""
        conn = self._connections.get(cid)
        if conn is None or conn.closing:
            return
        buffer = conn.buffer
        limit = self.max_line_bytes
        # One split (in C) frames a whole read: much cheaper than a find()
        # and a slice per line in Python. The last part is an unfinished line.
        lines = data.split(b"\n")
        tail = lines.pop()
        if lines and (buffer or conn.discarding):
            # The first line ends one that began in an earlier read.
            if conn.discarding:
                conn.discarding = False  # its "Line too long" was already sent
                del lines[0]
            elif len(buffer) + len(lines[0]) > limit:
                buffer.clear()
                del lines[0]
                self._emit(conn, _LINE_TOO_LONG)
            else:
                buffer += lines[0]
                lines[0] = bytes(buffer)
                buffer.clear()
        decode = COMMAND_DECODER.decode
        for line in lines:
            # _line(), inlined: this loop runs once per command.
            if len(line) > limit:
                self._emit(conn, _LINE_TOO_LONG)
                continue
            try:
                command = decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
                self._bad_line(conn, line)
                if conn.closing:  # `quit`: ignore the rest
                    return
                continue
            if type(command) is Send:
                self._send(conn, command, line)
            else:
                self._command(conn, command)
        if not tail or conn.discarding:
            return
        # A partial line: keep it, unless it is already over the limit, in
        # which case answer now and drop bytes until its end arrives.
        if len(buffer) + len(tail) > limit:
            buffer.clear()
            conn.discarding = True
            self._emit(conn, _LINE_TOO_LONG)
        else:
            buffer += tail

    def take_output(self) -> Output:
        """Return (and forget) everything produced since the last call."""
        writes: dict[ConnectionId, list[bytes]] = {}
        for conn in self._dirty:
            if conn.out is not None:
                writes[conn.id] = conn.out
                conn.out = None
        self._dirty = []
        records = self._records
        if self._bumped:
            self._topic_records(records)
        output = Output(writes, self._close, records, self._after_write)
        self._close = []
        self._records = []
        self._after_write = {}
        return output

    def _topic_records(self, records: list[Record]) -> None:
        """Append the records of every topic sent to since the last take_output()."""
        topics = self._topics
        trimmed = self._trimmed
        for name, first in self._bumped.items():
            topic = topics[name]
            evicted = trimmed.get(name)
            if evicted is not None:
                records.append(CacheTrim(name, evicted + 1))
            # The batch's messages still cached are at the cache's right end;
            # those already evicted again never need to reach the store.
            fresh: list[_Entry] = []
            for entry in reversed(topic.cache):
                if entry.index < first:
                    break
                fresh.append(entry)
            for entry in reversed(fresh):
                records.append(
                    CacheAdd(name, entry.index, "one" if entry.one else "all", entry.data)
                )
            records.append(NextIndex(name, topic.next_index))
        self._bumped = {}
        if trimmed:
            self._trimmed = {}

    def restore(self, topics: Iterable[TopicState]) -> None:
        """Load topics saved by a store, before any connection is opened.

        A cache holding more than ``cache_size`` messages (a smaller cache size
        than last run, or ``one`` messages whose consumption was never stored)
        keeps its newest ones; a durable broker emits a :class:`CacheTrim`
        record for the rest, for the next :meth:`take_output`.
        """
        for state in topics:
            topic = self._topics.get(state.topic) or self._add_topic(state.topic)
            entries = sorted(state.cache, key=lambda entry: entry[0])
            # Never hand out an index a stored message already has, even if
            # the store's next index lags behind its cache.
            topic.next_index = max(state.next_index, entries[-1][0] + 1 if entries else 0)
            self._uncache(list(topic.cache))
            topic.cache.clear()
            dropped = entries[: max(0, len(entries) - self.cache_size)]
            if self._durable and dropped:
                self._records.append(CacheTrim(state.topic, dropped[-1][0] + 1))
            for index, delivery, data in entries[len(dropped) :]:
                self._cache_append(topic, _Entry(index, delivery == "one", data, state.topic))
        self._shrink_cache()

    # -- inspection, for tests and monitoring ----------------------------------

    def next_index(self, topic: str) -> int:
        """The index the next message sent to ``topic`` will get."""
        state = self._topics.get(topic)
        return 0 if state is None else state.next_index

    def cached(self, topic: str) -> list[bytes]:
        """The wire bytes of the messages cached for ``topic``, oldest first."""
        state = self._topics.get(topic)
        return [] if state is None else [e.data for e in state.cache]

    def subscribers(self, topic: str) -> list[ConnectionId]:
        """The connections subscribed to ``topic``."""
        state = self._topics.get(topic)
        return [] if state is None else [c.id for c in state.snapshot]

    # -- the protocol ------------------------------------------------------------

    def _emit(self, conn: _Connection, chunk: bytes) -> None:
        out = conn.out
        if out is None:
            conn.out = [chunk]
            self._dirty.append(conn)
        else:
            out.append(chunk)

    def _line(self, conn: _Connection, line: bytes) -> None:
        try:
            command = COMMAND_DECODER.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            self._bad_line(conn, line)
            return
        # Most lines are sends: test for them first.
        if type(command) is Send:
            self._send(conn, command, line)
        else:
            self._command(conn, command)

    def _command(self, conn: _Connection, command: Command) -> None:
        if type(command) is Subscribe:
            self._subscribe(conn, command)
        elif type(command) is Unsubscribe:
            self._unsubscribe(conn, command)
        elif type(command) is Hello and self._hello is not None:
            self._emit(conn, self._hello)
        else:
            self._emit(conn, _MALFORMED)

    def _bad_line(self, conn: _Connection, line: bytes) -> None:
        # The slow path, for lines that did not decode as they came: whitespace,
        # `quit`, or an error whose reason the reference defines by precedence.
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._emit(conn, _NOT_UTF8)
            return
        if not text:
            return
        if text == "quit":
            self._quit(conn)
            return
        stripped = text.encode("utf-8")
        if stripped != line:
            # Unicode whitespace that the fast path left on: try again without it.
            self._line(conn, stripped)
            return
        try:
            msgspec.json.decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            # Nesting deeper than the decoder's limit counts as unparseable
            # (the reference's own parser gives up on it too).
            self._emit(conn, _NOT_JSON)
            return
        self._emit(conn, _MALFORMED)

    def _quit(self, conn: _Connection) -> None:
        conn.closing = True
        conn.buffer = bytearray()
        for name in conn.topics:
            self._remove_subscriber(self._topics[name], conn)
        conn.topics.clear()
        self._close.append(conn.id)

    def _add_topic(self, name: str) -> _Topic:
        topic = self._topics[name] = _Topic(self.cache_size)
        return topic

    def _new_topic(self, conn: _Connection, name: str) -> _Topic | None:
        """Create topic ``name``, or answer ``conn`` that there are too many."""
        if len(self._topics) >= self.max_topics:
            self._emit(conn, _TOO_MANY_TOPICS)
            return None
        return self._add_topic(name)

    def _cache_append(self, topic: _Topic, entry: _Entry) -> None:
        cache = topic.cache
        if len(cache) == self.cache_size:
            # The deque drops its oldest entry as this one goes in.
            old = cache[0]
            if self._durable:
                self._trimmed[entry.topic] = old.index
            self._uncache([old])
        cache.append(entry)
        self._cached += 1
        self._cache_bytes += len(entry.data)
        order = self._cache_order
        order.append(entry)
        if len(order) > 2 * self._cached + 1024:
            # Mostly entries already gone: compact, at a cost amortised over
            # the appends that made them.
            self._cache_order = deque(e for e in order if not e.gone)

    def _uncache(self, entries: list[_Entry]) -> None:
        for entry in entries:
            entry.gone = True
            self._cached -= 1
            self._cache_bytes -= len(entry.data)
            # It may wait in _cache_order until a compaction: without its bytes.
            entry.data = b""

    def _shrink_cache(self) -> None:
        """Evict the oldest cached messages, over all topics, until within max_cache_bytes."""
        order = self._cache_order
        while self._cache_bytes > self.max_cache_bytes and order:
            entry = order.popleft()
            if entry.gone:
                continue
            # Each topic's cache is in the same order as `order`, so the
            # oldest entry still cached anywhere is its own topic's oldest.
            topic = self._topics[entry.topic]
            topic.cache.popleft()
            self._uncache([entry])
            if self._durable:
                # Exactly this message, not a trim of everything older: the
                # store may still hold an older `one` message of the topic that
                # waits for its consumer's bytes to be written.
                self._records.append(CacheRemove(entry.topic, entry.index))

    def _remove_subscriber(self, topic: _Topic, conn: _Connection) -> None:
        if topic.subscribers.pop(conn, 0) is None:
            topic.snapshot = tuple(topic.subscribers)

    def _subscribe(self, conn: _Connection, command: Subscribe) -> None:
        topic = self._topics.get(command.topic) or self._new_topic(conn, command.topic)
        if topic is None:
            return
        if conn not in topic.subscribers:
            topic.subscribers[conn] = None
            topic.snapshot = tuple(topic.subscribers)
            conn.topics.add(command.topic)
        self._emit(conn, SUCCESS)
        if not command.cache or not topic.cache:
            return
        last_seen = command.last_seen
        consumed = False
        for entry in topic.cache:
            if entry.index > last_seen:
                self._emit(conn, entry.data)
                consumed = consumed or entry.one
        if consumed:
            # A replayed `one` message has found its consumer: drop it. The
            # store forgets it only once it is written (at least once).
            kept = [e for e in topic.cache if not (e.one and e.index > last_seen)]
            consumed_entries = [e for e in topic.cache if e.one and e.index > last_seen]
            if self._durable:
                self._consumed(conn, command.topic, consumed_entries)
            self._uncache(consumed_entries)
            topic.cache = deque(kept, maxlen=self.cache_size)

    def _consumed(self, conn: _Connection, name: str, entries: list[_Entry]) -> None:
        # Sent in this batch, these would reach the store in take_output(),
        # which only sees what is still cached: store them now, so that a crash
        # before their replay is written cannot lose them.
        first = self._bumped.get(name)
        if first is not None:
            self._records.extend(
                CacheAdd(name, e.index, "one", e.data) for e in entries if e.index >= first
            )
        self._after_write.setdefault(conn.id, []).extend(
            CacheRemove(name, e.index) for e in entries
        )

    def _unsubscribe(self, conn: _Connection, command: Unsubscribe) -> None:
        topic = self._topics.get(command.topic)
        if topic is not None:
            self._remove_subscriber(topic, conn)
            conn.topics.discard(command.topic)
        self._emit(conn, SUCCESS)

    def _send(self, conn: _Connection, command: Send, line: bytes) -> None:
        topic = self._topics.get(command.topic)
        if topic is None:
            topic = self._new_topic(conn, command.topic)
            if topic is None:
                return
        index = topic.next_index
        topic.next_index = index + 1
        # Validation rejected every unknown key, so the sender's own object
        # plus its index is the delivered message: splice, don't re-encode.
        # Unless it may hold a key twice (the decoder keeps the last, as the
        # reference does, but the spliced line would pass both on): see
        # _SPLICE_QUOTES.
        # A send's last value is a string, number or boolean, so stripping
        # JSON whitespace and "}" from the ends removes exactly the closing
        # brace (and a trailing \r): one copy instead of strip() and a slice.
        if line.count(b'"') < _SPLICE_QUOTES:
            data = line.strip(b" \t\r}") + b', "index": %d}\r\n' % index
        else:
            data = delivery_bytes(line, index)
        subscribers = topic.snapshot
        cache = command.cache and self.cache_size > 0
        if command.delivery == "all":
            dirty = self._dirty
            for subscriber in subscribers:
                # _emit(), inlined: this loop runs once per delivery.
                out = subscriber.out
                if out is None:
                    subscriber.out = [data]
                    dirty.append(subscriber)
                else:
                    out.append(data)
        elif subscribers:
            target = subscribers[self._pick(topic, len(subscribers))]
            self._emit(target, data)
            if cache and self._durable:
                # Not cached in memory, but stored as cached until its bytes
                # are written to `target`: a crash in between delivers it
                # again after the restart (at least once), never loses it.
                self._records.append(CacheAdd(command.topic, index, "one", data))
                self._after_write.setdefault(target.id, []).append(
                    CacheRemove(command.topic, index)
                )
            cache = False
        if cache:
            self._cache_append(topic, _Entry(index, command.delivery == "one", data, command.topic))
            if self._cache_bytes > self.max_cache_bytes:
                self._shrink_cache()
        if self._durable:
            # take_output() turns this into the topic's records for the batch.
            self._bumped.setdefault(command.topic, index)
        self._emit(conn, SUCCESS)

    def _pick(self, topic: _Topic, n: int) -> int:
        if self._choose is not None:
            return self._choose(n)
        topic.rr = (topic.rr + 1) % n
        return topic.rr

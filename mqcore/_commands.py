"""The commands: what ``subscribe``, ``unsubscribe``, ``send`` and ``hello`` do.

:class:`Commands` is the half of :class:`~mqcore.Broker` that carries out a
decoded command for a connection; the other half (framing, the slow path for
bad lines, connection lifecycle, output) is in :mod:`mqcore._broker`. The
rules of topics, subscribers and caches are :mod:`mqcore._topics`'s; the
records a durable broker emits, :mod:`mqcore._journal`'s; acknowledged
delivery (``ack``, ``nack``, ``subscribe`` with ``ack``), :mod:`mqcore._acks`'s
through the hooks of :class:`~mqcore._ack_commands.AckCommands`.

- Every command gets exactly one reply; a ``send``'s deliveries (and a
  ``subscribe``'s replay) come before the reply to it when the sender is a
  subscriber.
- A delivery is the sender's own line plus ``"index"``, spliced when that is
  exact (see ``_SPLICE_QUOTES``), re-encoded otherwise; its bytes object is
  shared by every subscriber and the cache.
- A replay hands out the cached bytes objects themselves, never copies, and
  consumes the ``one`` messages it replays.
- A ``subscribe`` or ``unsubscribe`` whose topic is a pattern is a pattern
  subscription's (rules in :mod:`mqcore._patterns`); a ``send`` reaches the
  topic's pattern subscribers too, each connection once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._ack_commands import AckCommands
from ._connection import Connection
from ._journal import Journal
from ._protocol import (
    REFUSED,
    SUCCESS,
    Ack,
    Command,
    Hello,
    Nack,
    Reason,
    Send,
    Subscribe,
    Unsubscribe,
    delivery_bytes,
)
from ._state import Entry, Topic
from ._subjects import EMPTY_TOKEN, is_pattern, pattern_problem
from ._topics import TopicTable

__all__ = ["Commands"]

#: A send without a repeated key has 16 quote characters (four keys, four
#: string values), 18 with "cache"; a repeated key adds at least two more. So
#: a line with fewer than 20 cannot repeat a key and is spliced as it is;
#: one with more (a repeated key, or escaped quotes in a value) is re-encoded.
_SPLICE_QUOTES: Final = 20


class Commands(AckCommands):
    """Carries out decoded commands; :class:`~mqcore.Broker` sets the state up."""

    _choose: Callable[[int], int] | None
    #: cache_size > 0
    _caching: bool
    _journal: Journal | None
    _table: TopicTable
    _topics: dict[str, Topic]
    _hello: bytes | None
    _dirty: list[Connection]
    _failures: dict[bytes, int]
    _auth_required: bool

    def _refused(self, conn: Connection, command: Command) -> bool:
        raise NotImplementedError  # mqcore._guard.Guarded

    def _greet(self, conn: Connection, command: Hello) -> None:
        raise NotImplementedError  # mqcore._guard.Guarded

    def _emit(self, conn: Connection, chunk: bytes) -> None:
        out = conn.out
        if out is None:
            conn.out = [chunk]
            self._dirty.append(conn)
        else:
            out.append(chunk)

    def _fail(self, conn: Connection, reply: bytes) -> None:
        self._failures[reply] = self._failures.get(reply, 0) + 1
        self._emit(conn, reply)

    def _command(self, conn: Connection, command: Command) -> None:
        if self._auth_required and self._refused(conn, command):
            return
        if type(command) is Subscribe:
            self._subscribe(conn, command)
        elif type(command) is Unsubscribe:
            self._unsubscribe(conn, command)
        elif type(command) is Hello and self._hello is not None:
            self._greet(conn, command)
        elif type(command) is Ack:
            self._ack(conn, command)
        elif type(command) is Nack:
            self._nack(conn, command)
        else:
            self._fail(conn, REFUSED[Reason.MALFORMED])

    def _create(self, conn: Connection, name: str) -> Topic | None:
        """Create topic ``name``, or answer ``conn`` why not."""
        created = self._table.create(name)
        if isinstance(created, bytes):
            self._fail(conn, created)
            return None
        return created

    def _join(self, conn: Connection, name: str) -> Topic | None:
        """Subscribe ``conn`` to topic ``name`` (made if new); None if it cannot be made."""
        topic = self._topics.get(name) or self._create(conn, name)
        if topic is not None:
            self._table.subscribe(topic, conn)
        return topic

    def _subscribe(self, conn: Connection, command: Subscribe) -> None:
        if command.ack is True:
            self._subscribe_ack(conn, command)
            return
        name = command.topic
        if is_pattern(name):
            self._subscribe_pattern(conn, command)
            return
        topic = self._join(conn, name)
        if topic is None:
            return
        self._emit(conn, SUCCESS)
        if command.cache and topic.cache:
            self._replay(conn, topic, command.last_seen)

    def _pattern_refusal(self, command: Subscribe) -> bytes | None:
        """The reply refusing a subscribe to the pattern ``command.topic`` as such, or None."""
        pattern = command.topic
        if self._table.name_too_long(pattern):
            return REFUSED[Reason.TOPIC_TOO_LONG]
        problem = pattern_problem(pattern)
        if problem is not None:
            empty = problem is EMPTY_TOKEN
            return REFUSED[Reason.PATTERN_EMPTY_TOKEN if empty else Reason.PATTERN_MULTI_NOT_LAST]
        if command.last_seen != -1:
            return REFUSED[Reason.PATTERN_LAST_SEEN]
        return None

    def _subscribe_pattern(self, conn: Connection, command: Subscribe) -> None:
        """Subscribe ``conn`` to a pattern; replay every matching topic's cache."""
        pattern = command.topic
        table = self._table
        refusal = self._pattern_refusal(command)
        if refusal is not None:
            self._fail(conn, refusal)
            return
        if not table.patterns.subscribe(conn, pattern):
            self._fail(conn, REFUSED[Reason.TOO_MANY_PATTERNS])
            return
        self._emit(conn, SUCCESS)
        if command.cache and self._caching:
            for topic in table.cached_matching(pattern):
                self._replay(conn, topic, -1)
                if not topic.cache and not topic.subscribers:
                    # Its last `one` messages were consumed: nothing left to
                    # keep. The store keeps them until their bytes are written.
                    topic.waiting = self._journal is not None
                    table.forget(topic)

    def _replay(self, conn: Connection, topic: Topic, last_seen: int) -> None:
        """Hand ``conn`` the cached messages of ``topic`` after ``last_seen``."""
        name = topic.name
        # The cached bytes objects themselves, never copies.
        replay = [e for e in topic.cache if e.index > last_seen]
        if not replay:
            return
        out = conn.out
        if out is None:
            conn.out = out = []
            self._dirty.append(conn)
        out.extend([e.data for e in replay])
        consumed = [e for e in replay if e.one]
        if consumed:
            # A replayed `one` message has found its consumer: drop it. The
            # store forgets it only once it is written (at least once).
            if self._journal is not None:
                self._journal.consumed(conn.id, name, consumed)
            self._table.consume(topic, consumed)

    def _unsubscribe(self, conn: Connection, command: Unsubscribe) -> None:
        name = command.topic
        topic = None if is_pattern(name) else self._topics.get(name)
        if topic is not None:
            self._table.unsubscribe(topic, conn)
            self._acks.unsubscribe(conn.id, name)
        elif self._table.name_too_long(name):
            self._fail(conn, REFUSED[Reason.TOPIC_TOO_LONG])
            return
        else:
            # Exactly that pattern subscription, if it is one (else nothing to do).
            self._table.patterns.unsubscribe(conn, name)
        self._emit(conn, SUCCESS)

    def _refuse_send(self, conn: Connection, command: Send, line: bytes) -> None:
        self._fail(conn, REFUSED[Reason.STORAGE_UNAVAILABLE])

    def _send(self, conn: Connection, command: Send, line: bytes) -> None:
        # The hot path: runs once per message. Attributes are read once into
        # locals, and _emit() is inlined where it runs once per delivery.
        name = command.topic
        delivery = command.delivery
        jobs = None
        acks = self._acks
        if acks.queues and delivery == "one":
            # The topic has acknowledging subscribers: a job (see mqcore._acks).
            jobs = acks.consuming(name)
            if jobs is not None and not acks.has_room(len(line)):
                self._fail(conn, REFUSED[Reason.WORK_QUEUE_FULL])
                return
        topic = self._topics.get(name)
        if topic is None:
            topic = self._create(conn, name)
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
        subscribers = topic.subscribers
        table = self._table
        patterns = table.patterns
        # Exact and pattern subscribers, each once; just the exact ones while
        # there is no pattern subscription (see mqcore._patterns).
        targets = patterns.targets(topic) if patterns.count else subscribers
        cache = command.cache and self._caching
        journal = self._journal
        dirty = self._dirty
        if delivery == "all":
            for subscriber in targets:
                out = subscriber.out
                if out is None:
                    subscriber.out = [data]
                    dirty.append(subscriber)
                else:
                    out.append(data)
        elif jobs is not None:
            acks.add(jobs, index, data)
            acks.dispatch(jobs)
            cache = False
        elif targets:
            target = targets[self._pick(topic, len(targets))]
            self._emit(target, data)
            if cache and journal is not None:
                # Not cached in memory, but stored as cached until its bytes
                # are written to `target`.
                journal.delivered_one(target.id, name, index, data)
                topic.waiting = True
            cache = False
        if cache:
            table.cache_append(topic, Entry(index, delivery == "one", data, name))
            if table.cache_bytes > table.max_cache_bytes:
                table.shrink()
        elif not subscribers and not topic.cache:
            # Nothing to keep: forget it (its index raises the floor).
            table.forget(topic)
        if journal is not None:
            # take_output() turns this into the topic's records for the batch.
            journal.sent(name, index)
        self._emit(conn, SUCCESS)

    def _pick(self, topic: Topic, n: int) -> int:
        if self._choose is not None:
            return self._choose(n)
        topic.rr = (topic.rr + 1) % n
        return topic.rr

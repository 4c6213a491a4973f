"""The Broker: the whole protocol as a pure state machine, with no I/O.

A transport registers each connection, feeds it the bytes it reads (in any
chunks), tells the broker when a connection's input ended and when it is
gone, and after each batch of input takes an :class:`Output`: the bytes owed
to each connection, the connections to close once their bytes are written,
and (for a durable broker) the records that must be stored before any of
those bytes are released.

Rules this module holds (framing is :mod:`mqcore._connection`'s, topics and
caches :mod:`mqcore._topics`', records :mod:`mqcore._journal`'s):

- **Every line gets exactly one reply, and receive_data never raises.** A
  line that does not decode goes to the slow path, which finds the
  reference's reason; any exception while decoding a line (a ``RecursionError``
  from deep nesting included) becomes ``Could not parse json``, any while
  handling one becomes ``Internal error``; either way the next line is
  handled as usual and replies already owed stay owed.
- **End of input** (:meth:`Broker.receive_eof`, or a ``quit`` line): a partial
  line is dropped, the connection leaves every topic (no new deliveries), what
  is already owed stays owed, and the connection is listed in
  :attr:`Output.close`, after its writes.
- **A repeated subscribe replays what it asks for**, as the reference does:
  each ``subscribe`` with ``cache`` replays every cached message after its
  ``last_seen``. A replay adds references to the cached bytes objects, never
  copies: the bytes a subscriber is owed are shared with the cache and with
  every other subscriber, and the output of one read is bounded by the read's
  lines times ``cache_size`` references. Bounding what a connection is owed
  in bytes is the transport's job (it sums chunk lengths before joining them).
- **Storage unavailable** (durable brokers, :meth:`Broker.set_storage_available`):
  every ``send`` is refused with ``Storage unavailable`` and changes nothing;
  subscribes and replays go on; ``hello`` reports ``"storage": "unavailable"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from ._acks import (
    DEFAULT_ACK_WAIT,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_JOB_BYTES,
    DEFAULT_MAX_JOBS,
    WorkQueues,
)
from ._auth import Grant, HelloRequest, Pending
from ._cluster_batch import TopicBatch
from ._connection import Connection, ConnectionId
from ._guard import SendFn, hello_for
from ._inspect import Inspection
from ._journal import Journal
from ._limits import AckLimits, TopicLimits
from ._protocol import (
    COMMAND_DECODER,
    PROTOCOL_FEATURES,
    REFUSED,
    Reason,
    Send,
)
from ._records import Record, TopicState
from ._topics import TopicTable

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_TOPICS",
    "DEFAULT_MAX_TOPIC_BYTES",
    "Broker",
    "ConnectionId",
    "Output",
]

DEFAULT_CACHE_SIZE: Final = 100
DEFAULT_MAX_LINE_BYTES: Final = 1 << 20
DEFAULT_MAX_TOPICS: Final = 1_000_000
DEFAULT_MAX_TOPIC_BYTES: Final = 1024
DEFAULT_MAX_CACHE_BYTES: Final = 1 << 30


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
    #: ``hello`` commands the transport must act on: credentials to check
    #: (answer :meth:`Broker.auth_result`) and agreed heartbeats (see :mod:`mqcore._auth`).
    hellos: list[HelloRequest] = field(default_factory=list)
    #: Cluster mode only (:mod:`mqcore._cluster`): sends to publish through the
    #: backend before this output is released, one batch per topic.
    publishes: list[TopicBatch] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.writes
            or self.close
            or self.records
            or self.after_write
            or self.hellos
            or self.publishes
        )


class Broker(Inspection):
    """An aiomemq-compatible message broker with no I/O of its own.

    ``cache_size`` bounds each topic's replay cache (0 disables it);
    ``max_line_bytes`` bounds one input line; ``max_topic_bytes`` bounds a
    topic name in UTF-8 (longer: ``Topic name too long``); ``max_topics``
    bounds how many topics exist (a new topic first evicts the one idle for
    longest; if every topic has subscribers it is refused with ``Too many
    topics``: see :mod:`mqcore._topics`); ``max_cache_bytes`` bounds the bytes
    cached over all topics (past it, the oldest cached messages, whatever
    their topic, are evicted); ``choose(n)`` returns the index, in
    ``range(n)``, of the subscriber that gets a ``delivery: "one"`` message
    (pass ``random.Random().randrange``; the default is round robin, so that
    the core needs no randomness of its own). With ``durable=True`` every
    change to a topic's index or cache is also emitted as a :class:`Record`
    in :attr:`Output.records` (or, for the consumption of a ``one`` message,
    :attr:`Output.after_write`). ``epoch`` names this run of index numbering
    (the transport makes a new one whenever numbering starts over); with it
    the broker answers the ``hello`` handshake, without it ``hello`` is an
    unknown command, as it is for the reference. With ``auth=True`` (and an
    ``epoch``) a connection must authenticate in ``hello`` before anything
    else, and every ``send`` and ``subscribe`` is checked against its
    permissions: see :mod:`mqcore._auth`.
    """

    #: What ``hello`` lists (a cluster node leaves out what it does not support).
    _features: tuple[str, ...] = PROTOCOL_FEATURES

    def __init__(
        self,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        choose: Callable[[int], int] | None = None,
        durable: bool = False,
        epoch: str | None = None,
        ack_wait: float = DEFAULT_ACK_WAIT,
        max_deliver: int = DEFAULT_MAX_DELIVER,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        auth: bool = False,
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be >= 1")
        limits = TopicLimits(cache_size, max_topics, max_topic_bytes, max_cache_bytes)
        self.cache_size: Final = cache_size
        self.max_line_bytes: Final = max_line_bytes
        self.max_topics: Final = max_topics
        self.max_topic_bytes: Final = max_topic_bytes
        self.max_cache_bytes: Final = max_cache_bytes
        self._choose = choose
        self._caching = cache_size > 0
        self._durable = durable
        self._journal = Journal() if durable else None
        self._table = TopicTable(limits, self._journal)
        # Acknowledged delivery: ack_wait (seconds), max_deliver and the
        # bounds on jobs held are mqcore._acks's.
        self._acks = WorkQueues(
            AckLimits(ack_wait, max_deliver, max_jobs, max_job_bytes),
            self._journal,
            self._emit,
            self._dead_letter,
        )
        # The table's dict itself (never rebound): one lookup less per send.
        self._topics = self._table.by_name
        self._epoch = epoch
        self._storage_available = True
        if auth and epoch is None:
            raise ValueError("auth needs an epoch: clients authenticate in hello")
        self._auth_required = auth
        self._grants: dict[ConnectionId, Grant] = {}
        self._pending: dict[ConnectionId, Pending] = {}
        self._hellos: list[HelloRequest] = []
        self._hello = self._hello_bytes()
        self._connections: dict[ConnectionId, Connection] = {}
        self._next_id = 0
        self._dirty: list[Connection] = []
        self._close: list[ConnectionId] = []
        # Cluster mode: connections paused in the middle of their input (a
        # subscribe waits for its topic's mirror), with the input kept.
        self._held: dict[ConnectionId, list[bytes]] = {}
        # Counters for monitoring (see stats()), bumped once per read or
        # per output, never per message: they cost nothing on the hot path.
        self._lines = 0
        self._sends = 0
        self._chunks = 0
        self._failures: dict[bytes, int] = {}

    # -- the transport's side -------------------------------------------------

    def open_connection(self) -> ConnectionId:
        """Register a new connection and return its id."""
        cid = ConnectionId(self._next_id)
        self._next_id += 1
        self._connections[cid] = Connection(cid)
        return cid

    def receive_eof(self, cid: ConnectionId) -> None:
        """The peer will send nothing more: finish what is owed, then close.

        A partial line is discarded; the connection gets no new deliveries,
        but everything already owed to it stays owed, and it is listed in
        :attr:`Output.close` (after its writes). The transport still calls
        :meth:`connection_lost` once the socket is gone. Idempotent.
        """
        conn = self._connections.get(cid)
        if conn is not None and not conn.closing:
            self._end(conn)

    def connection_lost(self, cid: ConnectionId) -> None:
        """Forget a connection: its subscriptions and anything still owed to it.

        Idempotent, so the transport may call it whatever way the connection ended.
        """
        conn = self._connections.pop(cid, None)
        if conn is None:
            return
        self._table.drop_connection(conn)
        self._acks.drop_connection(cid)
        conn.out = None
        self._forget_guard(cid)

    def receive_data(self, cid: ConnectionId, data: bytes) -> None:
        """Feed bytes read from a connection; they may split lines anywhere. Never raises."""
        conn = self._connections.get(cid)
        if conn is None or conn.closing:
            return
        send: SendFn = self._send if self._storage_available else self._refuse_send
        if self._auth_required:
            # Once per read: a dict lookup, and the permission check in front of send.
            checked = self._checked_send(conn, send)
            if checked is None:
                self._receive_guarded(conn, data)
                return
            send = checked
        limit = self.max_line_bytes
        lines, tail, first_too_long = conn.split(data, limit)
        if first_too_long:
            self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])
        decode = COMMAND_DECODER.decode
        sends = 0
        for line in lines:
            # _line(), inlined: this loop runs once per command.
            if len(line) > limit:
                self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])
                continue
            try:
                command = decode(line)
            except Exception:
                self._undecodable(conn, line)
                if conn.closing:  # `quit`: ignore the rest
                    break
                if self._held and conn.id in self._held:
                    self._hold_rest(conn, lines, line, tail)
                    break
                continue
            try:
                # Most lines are sends: test for them first.
                if type(command) is Send:
                    sends += 1
                    send(conn, command, line)
                else:
                    self._command(conn, command)
                    if self._held and conn.id in self._held:
                        self._hold_rest(conn, lines, line, tail)
                        break
            except Exception:
                self._fail(conn, REFUSED[Reason.INTERNAL_ERROR])
        else:
            self._keep_tail(conn, tail, limit)
        self._lines += len(lines)
        self._sends += sends

    def _keep_tail(self, conn: Connection, tail: bytes, limit: int) -> None:
        if not conn.closing and conn.keep(tail, limit):
            self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])

    def _hold_rest(self, conn: Connection, lines: list[bytes], line: bytes, tail: bytes) -> None:
        """Cluster mode: keep the input after ``line`` until the connection resumes."""
        # By identity: a subscribe line is never one of bytes' shared singletons.
        position = next(i for i, each in enumerate(lines) if each is line)
        held = self._held[conn.id]
        held.extend(each + b"\n" for each in lines[position + 1 :])
        held.append(tail)

    def take_output(self) -> Output:
        """Return (and forget) everything produced since the last call."""
        writes: dict[ConnectionId, list[bytes]] = {}
        for conn in self._dirty:
            out = conn.out
            if out is not None:
                writes[conn.id] = out
                self._chunks += len(out)
                conn.out = None
        self._dirty = []
        close = self._close
        self._close = []
        hellos = self._hellos
        if hellos:
            self._hellos = []
        if self._journal is None:
            return Output(writes, close, [], {}, hellos if hellos else [])
        records, after_write = self._journal.take(self._topics)
        return Output(writes, close, records, after_write, hellos if hellos else [])

    def restore(self, topics: Iterable[TopicState], index_floor: int = 0) -> None:
        """Load topics saved by a store, before any connection is opened.

        ``index_floor`` is the store's :attr:`~mqcore.Snapshot.index_floor`: a
        topic created from now on starts numbering there. A cache holding more
        than ``cache_size`` messages (a smaller cache size than last run, or
        ``one`` messages whose consumption was never stored) keeps its newest
        ones; a durable broker emits a :class:`CacheTrim` record for the rest,
        for the next :meth:`take_output`. Restored topics are idle (see
        :mod:`mqcore._topics`) until subscribed to.
        """
        self._table.restore(topics, index_floor)

    def set_storage_available(self, ok: bool) -> None:
        """Say whether the store can be written (durable brokers only).

        While it cannot, every ``send`` is answered ``Storage unavailable``
        and changes nothing; subscriptions and replays go on as usual.
        """
        if not self._durable:
            raise ValueError("set_storage_available: this broker is not durable")
        self._storage_available = ok
        self._hello = self._hello_bytes()

    # -- the protocol ------------------------------------------------------------

    @property
    def _line_limit(self) -> int:
        return self.max_line_bytes

    def _hello_bytes(self, heartbeat: float | None = None) -> bytes | None:
        return hello_for(
            self._epoch,
            cache_size=self.cache_size,
            max_line_bytes=self.max_line_bytes,
            durable=self._durable,
            storage_available=self._storage_available,
            auth=self._auth_required,
            heartbeat=heartbeat,
            features=self._features,
        )

    def _undecodable(self, conn: Connection, line: bytes) -> None:
        """The slow path: a line that did not decode as it came. Never raises."""
        try:
            self._bad_line(conn, line)
        except RecursionError:
            self._fail(conn, REFUSED[Reason.NOT_JSON])
        except Exception:
            self._fail(conn, REFUSED[Reason.MALFORMED])

    def _line(self, conn: Connection, line: bytes) -> None:
        try:
            command = COMMAND_DECODER.decode(line)
        except Exception:
            self._bad_line(conn, line)
            return
        try:
            if type(command) is Send:
                denial = self._send_denial(conn, command.topic) if self._auth_required else None
                if denial is not None:
                    self._fail(conn, denial)
                elif self._storage_available:
                    self._send(conn, command, line)
                else:
                    self._refuse_send(conn, command, line)
            else:
                self._command(conn, command)
        except Exception:
            self._fail(conn, REFUSED[Reason.INTERNAL_ERROR])

    def _bad_line(self, conn: Connection, line: bytes) -> None:
        # Whitespace, `quit`, or an error whose reason the reference defines
        # by precedence: not UTF-8, then not JSON, then not a command.
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._fail(conn, REFUSED[Reason.NOT_UTF8])
            return
        if not text:
            return
        if text == "quit":
            self._end(conn)
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
            self._fail(conn, REFUSED[Reason.NOT_JSON])
            return
        self._fail(conn, REFUSED[Reason.MALFORMED])

    def _end(self, conn: Connection) -> None:
        """End of input (or `quit`): no more input or deliveries; close once flushed."""
        conn.end_input()
        self._table.drop_connection(conn)
        self._acks.drop_connection(conn.id)
        self._close.append(conn.id)

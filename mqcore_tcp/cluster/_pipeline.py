"""Publishing to a standalone Redis (or Valkey) over one connection, pipelined.

Theory of operation:

- **One connection, in order.** Every publishing script call goes over one
  dedicated connection. Redis runs one connection's commands in the order
  sent and answers them in that order, so each *flight* (the outputs the
  node's writer took from its queue at once: one ``EVALSHA`` per topic, that
  topic's sends in order) is written as soon as it is formed, without waiting
  for earlier replies, and one reader task matches replies to flights first
  in, first out. A flight is released (its outputs handed back, in order)
  once all its replies are in, after every earlier flight: replies keep the
  order the hub submitted them in, and a topic's batches take their indices
  in the order they were sent. A flight with no call (outputs that only wait
  behind others) is released right after the flight before it.
- **Commands packed here.** The RESP of each call is built from a per-topic
  prefix (command, script, keys, channel, cache size: packed once) plus the
  batch's arguments; replies are read with redis-py's connection (its
  hiredis parser). No per-call work of redis-py's command layer remains.
- **Bounds.** At most :data:`MAX_FLIGHTS` flights and
  :data:`MAX_FLIGHT_BYTES` bytes of commands are unanswered; past either, the
  writer waits for replies (and outputs queue in the node, whose bound
  pauses the readers: TCP then slows the senders).
- **Timeouts.** The oldest unanswered flight must be answered within
  :data:`CALL_TIMEOUT` of being sent, and a flight's commands must be taken
  by the socket within as long (a Redis that stopped reading would hold
  the writer).
- **Failure.** A call answered with an error did nothing (a script does its
  topic's batch whole or not at all): its sends get ``Backend unavailable``
  and the node is told (:attr:`PublishPipeline.on_error`). A timeout, a lost
  connection or a failed write leaves every unanswered call's outcome
  *unknown*: its script may have run before the connection dropped. Those
  sends all get ``Backend unavailable``, never a success: a success is only
  written for a reply seen, so nothing is acknowledged that Redis did not
  store. (A message stored without its reply reaching the node is delivered
  all the same, and the sender, told it failed, may send it again: at least
  once, as with any broker whose acknowledgement was lost.) The connection is
  then aborted (commands still in its buffer are dropped, not sent late);
  the next flight opens a new one.
- **Scripts.** The publishing script is loaded (``SCRIPT LOAD``) on every
  connect. A ``NOSCRIPT`` reply (Redis flushed or lost its scripts but kept
  the connection) means that call did not run: its sends get ``Backend
  unavailable`` and the next flight loads the script again before its calls.
  Those calls are not retried: another node may load the script between two
  of our calls of a topic, so a retried batch could take indices after a
  later one of the same sender.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from mqcore import Output, Reason, error_reply
from mqcore._cluster import TopicBatch

from ._backend import CALL_TIMEOUT, BackendError
from ._keys import TopicKeys
from ._scripts import PUBLISH

__all__ = [
    "MAX_FLIGHTS",
    "MAX_FLIGHT_BYTES",
    "Calls",
    "PublishPipeline",
    "group",
    "refuse",
]

#: Flights (writer turns) sent and not yet answered.
MAX_FLIGHTS: Final = 64
#: Bytes of commands sent and not yet answered.
MAX_FLIGHT_BYTES: Final = 8 << 20
#: Packed per-topic prefixes kept (cleared when more).
_MAX_PREFIXES: Final = 100_000

_BACKEND_UNAVAILABLE: Final = error_reply(Reason.BACKEND_UNAVAILABLE)

#: Each topic's batches, in order, and the output each came from.
Calls = dict[str, tuple[list[TopicBatch], list[Output]]]


def group(outputs: list[Output]) -> Calls:
    """The sends of ``outputs`` by topic: one script call each, in order."""
    calls: Calls = {}
    for output in outputs:
        for batch in output.publishes:
            call = calls.get(batch.topic)
            if call is None:
                call = calls[batch.topic] = ([], [])
            call[0].append(batch)
            call[1].append(output)
    return calls


def refuse(batches: list[TopicBatch], owners: list[Output]) -> None:
    """Replace the senders' successes of ``batches`` by ``Backend unavailable``."""
    for batch, output in zip(batches, owners, strict=True):
        for cid, position in batch.slots:
            output.writes[cid][position] = _BACKEND_UNAVAILABLE


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@dataclass(slots=True, eq=False)
class _Flight:
    """One writer turn's outputs and its script calls, sent together."""

    outputs: list[Output]
    calls: list[tuple[list[TopicBatch], list[Output]]]
    size: int
    #: A SCRIPT LOAD was sent first: its reply comes before the calls'.
    load: bool = False
    conn: Any = None
    deadline: float = math.inf
    replies: list[Any] = field(default_factory=list)


class PublishPipeline:
    """Pipelined publishing on one connection (see the module's docstring).

    ``release`` gets each flight's outputs, in order, once answered (their
    refused sends already replaced); ``on_error`` is told of each failure;
    ``created`` of the topics whose first message a flight published (new
    to the cluster).
    """

    def __init__(
        self,
        url: str,
        cache_size: int,
        release: Callable[[list[Output]], None],
        on_error: Callable[[BaseException], None],
        created: Callable[[list[str]], None],
    ) -> None:
        self._pool: Any = ConnectionPool.from_url(
            url,
            socket_connect_timeout=CALL_TIMEOUT,
            socket_timeout=None,  # bounded here instead (redis-py's costs a task per send)
            health_check_interval=0,
            protocol=2,
        )
        self._cache_size = b"%d" % cache_size
        self._release = release
        self.on_error = on_error
        self._created = created
        self._conn: Any = None
        self._sha = b""
        self._reload = True
        self._prefixes: dict[str, bytes] = {}
        self._flights: deque[_Flight] = deque()
        self._bytes = 0
        self._sent = anyio.Event()
        self._room = anyio.Event()
        self._random = random.Random()

    # -- the writer's side -----------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self._flights) >= MAX_FLIGHTS or self._bytes >= MAX_FLIGHT_BYTES

    @property
    def in_flight(self) -> int:
        """Flights sent (or waiting behind those) and not yet released."""
        return len(self._flights)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of commands sent and not yet answered."""
        return self._bytes

    async def send(self, outputs: list[Output]) -> None:
        """Send ``outputs``' script calls; they are released once answered (or refused)."""
        while self.full:
            await self._room.wait()
        calls = group(outputs)
        if not calls:
            if not self._flights:
                self._release(outputs)
            else:
                self._push(_Flight(outputs, [], 0))
            return
        conn = self._conn
        try:
            if conn is None:
                conn = await self._connect()
            packed = [self._pack(topic, batches) for topic, (batches, _) in calls.items()]
            flight = _Flight(outputs, list(calls.values()), sum(map(len, packed)), self._reload)
            if self._reload:
                packed.insert(0, b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" + _bulk(PUBLISH.encode()))
                self._reload = False
        except Exception as exc:  # could not connect: nothing was sent
            flight = _Flight(outputs, list(calls.values()), 0)
            self._push(flight)
            self._fail(conn, exc)
            return
        flight.conn = conn
        flight.deadline = anyio.current_time() + CALL_TIMEOUT
        self._push(flight)
        try:
            # Bounded: a Redis that stopped reading would hold the writer at drain().
            with anyio.move_on_after(CALL_TIMEOUT) as scope:
                await conn.send_packed_command(packed, check_health=False)
        except Exception as exc:  # whatever the socket raised: the outcome is unknown
            self._fail(conn, exc)
            return
        if scope.cancelled_caught:
            self._fail(conn, BackendError(f"Redis took no command within {CALL_TIMEOUT} s"))

    def _push(self, flight: _Flight) -> None:
        self._flights.append(flight)
        self._bytes += flight.size
        self._sent.set()

    def _pack(self, topic: str, batches: list[TopicBatch]) -> bytes:
        prefix = self._prefixes.get(topic)
        if prefix is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()
            keys = TopicKeys(topic)
            # EVALSHA, sha, key count, the keys, then 7 arguments (2 here, 5 below).
            count = len(keys.keys)
            prefix = self._prefixes[topic] = b"".join(
                [b"*%d\r\n$7\r\nEVALSHA\r\n" % (10 + count), _bulk(self._sha)]
                + [_bulk(b"%d" % count)]
                + [_bulk(key) for key in keys.keys]
                + [_bulk(keys.channel), _bulk(self._cache_size)]
            )
        if len(batches) == 1:
            kinds = "".join(batches[0].kinds).encode("ascii")
            heads = b"\n".join(batches[0].heads)
        else:
            kinds = "".join(kind for batch in batches for kind in batch.kinds).encode("ascii")
            heads = b"\n".join(head for batch in batches for head in batch.heads)
        seed = b"%d" % self._random.randrange(1, 2147483646)
        return b"".join(
            (
                prefix,
                _bulk(seed),
                b"$1\r\nn\r\n$0\r\n\r\n$%d\r\n" % len(kinds),
                kinds,
                b"\r\n$%d\r\n" % (len(heads) + 1),
                heads,
                b"\n\r\n",
            )
        )

    async def _connect(self) -> Any:
        conn = self._pool.make_connection()
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                await conn.connect()
                await conn.send_command("SCRIPT", "LOAD", PUBLISH)
                sha = await conn.read_response()
        except BaseException:
            with anyio.move_on_after(CALL_TIMEOUT, shield=True):
                await conn.disconnect(nowait=True)
            raise
        sha = sha if isinstance(sha, bytes) else str(sha).encode("ascii")
        if sha != self._sha:
            self._sha = sha
            self._prefixes.clear()
        self._conn = conn
        self._reload = False
        return conn

    # -- the reader's side -----------------------------------------------------------

    async def read_replies(self) -> None:
        """Match replies to flights and release them in order, until cancelled."""
        while True:
            while not self._flights:
                await self._sent.wait()
                self._sent = anyio.Event()
            flight = self._flights[0]
            if flight.conn is not None and len(flight.replies) < len(flight.calls) + flight.load:
                await self._read(flight)
            if self._flights and self._flights[0] is flight:
                self._land(flight)

    async def _read(self, flight: _Flight) -> None:
        conn = flight.conn
        expected = len(flight.calls) + flight.load
        replies = flight.replies
        failure: BaseException | None = None
        with anyio.CancelScope(deadline=flight.deadline) as scope:
            try:
                while len(replies) < expected:
                    try:
                        replies.append(await conn.read_response(disconnect_on_error=False))
                    except ResponseError as exc:  # an error reply: the connection is fine
                        replies.append(exc)
            except Exception as exc:  # whatever the client raised: the connection is lost
                failure = exc
        if scope.cancelled_caught:
            failure = BackendError(f"no reply from Redis within {CALL_TIMEOUT} s")
        if failure is not None:
            self._fail(conn, failure)
            with anyio.move_on_after(CALL_TIMEOUT, shield=True):
                await conn.disconnect(nowait=True)

    def _land(self, flight: _Flight) -> None:
        """Release the answered ``flight`` (refusing what failed); it is the oldest."""
        self._flights.popleft()
        self._bytes -= flight.size
        replies = flight.replies[1:] if flight.load else flight.replies
        error: BaseException | None = None
        new: list[str] = []
        for (batches, owners), reply in zip(flight.calls, replies, strict=True):
            if reply == 0:  # its first index: the topic is new
                new.append(batches[0].topic)
            elif isinstance(reply, Exception):
                refuse(batches, owners)
                if isinstance(reply, NoScriptError):
                    self._reload = True
                elif error is None:
                    error = reply
        if new:
            self._created(new)
        self._release(flight.outputs)
        self._room.set()
        self._room = anyio.Event()
        if error is not None:
            self.on_error(error)

    def _fail(self, conn: Any, exc: BaseException) -> None:
        """``conn`` failed: every flight not yet answered is refused, in order.

        ``conn`` is aborted: commands it still buffers are dropped, not sent
        to Redis later (their senders are told they failed).
        """
        if conn is not None and conn is not self._conn:
            return  # an older connection, already failed
        if conn is not None:
            _abort(conn)
        self._conn = None
        self._reload = True
        failed, self._flights = self._flights, deque()
        self._bytes = 0
        for flight in failed:
            for batches, owners in flight.calls:
                refuse(batches, owners)
            self._release(flight.outputs)
        self._room.set()
        self._room = anyio.Event()
        self.on_error(exc)

    def reconnect(self) -> None:
        """Drop an idle connection (Redis was lost since it was made): the next flight
        opens a new one, rather than failing on the old socket first."""
        if self._conn is not None and not self._flights:
            _abort(self._conn)
            self._conn = None
            self._reload = True

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.move_on_after(CALL_TIMEOUT, shield=True):
                await conn.disconnect(nowait=True)


def _abort(conn: Any) -> None:
    """Close ``conn``'s socket now, dropping what it buffers (redis-py's close would send it)."""
    writer = getattr(conn, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()

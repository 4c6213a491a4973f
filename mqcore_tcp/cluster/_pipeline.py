"""Publishing to a standalone Redis (or Valkey) over one connection, pipelined.

Theory of operation:

- **One connection, in order.** Every publishing script call goes over one
  dedicated connection. Redis runs one connection's commands in the order
  sent and answers them in that order, so each *flight* (the outputs the
  node's writer took from its queue at once: one ``EVALSHA`` per topic, that
  topic's sends in order) is written as soon as it is formed, without waiting
  for earlier replies, and replies are matched to flights first in, first
  out. A flight is released (its outputs handed back, in order)
  once all its replies are in, after every earlier flight: replies keep the
  order the hub submitted them in, and a topic's batches take their indices
  in the order they were sent. A flight with no call (outputs that only wait
  behind others) is released right after the flight before it.
- **Commands packed here, replies read in the loop's read callback.** The
  RESP of each call is built from a per-topic prefix (command, script, keys,
  channel, cache size: packed once) plus the batch's arguments. The
  connection is a :class:`~._resp.RespLink`: replies are parsed (hiredis)
  and matched as each read arrives, and the flights they complete are
  released there and then, with no task in between. :meth:`PublishPipeline.send_now`
  sends a flight synchronously (the node calls it from the hub's flush);
  :meth:`PublishPipeline.send` is its waiting form (connecting, or waiting
  for room).
- **Bounds.** At most :data:`MAX_FLIGHTS` flights and
  :data:`MAX_FLIGHT_BYTES` bytes of commands are unanswered; past either, the
  writer waits for replies (and outputs queue in the node, whose bound
  pauses the readers: TCP then slows the senders).
- **Timeouts.** The oldest unanswered flight must be answered within
  :data:`CALL_TIMEOUT` of being sent (checked every :data:`WATCH_INTERVAL`
  by :meth:`PublishPipeline.watch`). That also bounds a Redis that stopped
  reading: its commands wait in the transport's buffer, counted in the
  bytes bound, and get no reply.
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
  the next flight opens a new one. An idle connection that closes (nothing
  unanswered) is only forgotten: the next flight opens a new one.
- **Scripts.** The publishing script is loaded (``SCRIPT LOAD``) on every
  connect. A ``NOSCRIPT`` reply (Redis flushed or lost its scripts but kept
  the connection) means that call did not run: its sends get ``Backend
  unavailable`` and the next flight loads the script again before its calls.
  Those calls are not retried: another node may load the script between two
  of our calls of a topic, so a retried batch could take indices after a
  later one of the same sender.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from mqcore import Output, Reason, error_reply
from mqcore._cluster import TopicBatch

from ._backend import CALL_TIMEOUT, BackendError
from ._keys import TopicKeys
from ._resp import RespLink, bulk, command, open_link
from ._scripts import PUBLISH

__all__ = [
    "MAX_FLIGHTS",
    "MAX_FLIGHT_BYTES",
    "PIPELINE_NAME",
    "WATCH_INTERVAL",
    "Calls",
    "PublishPipeline",
    "group",
    "refuse",
]

#: Flights (writer turns) sent and not yet answered.
MAX_FLIGHTS: Final = 64
#: Bytes of commands sent and not yet answered.
MAX_FLIGHT_BYTES: Final = 8 << 20
#: Seconds between two checks of the oldest unanswered flight's deadline.
WATCH_INTERVAL: Final = CALL_TIMEOUT / 8
#: The publishing connection's client name (``CLIENT LIST``).
PIPELINE_NAME: Final = "mqcore-publish"
#: Packed per-topic prefixes kept (cleared when more).
_MAX_PREFIXES: Final = 100_000

_BACKEND_UNAVAILABLE: Final = error_reply(Reason.BACKEND_UNAVAILABLE)
_LOAD_SCRIPT: Final = command(b"SCRIPT", b"LOAD", PUBLISH.encode())

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


def _has_sends(outputs: list[Output]) -> bool:
    return any(output.publishes for output in outputs)


@dataclass(slots=True, eq=False)
class _Flight:
    """One writer turn's outputs and its script calls, sent together."""

    outputs: list[Output]
    calls: list[tuple[list[TopicBatch], list[Output]]]
    size: int
    #: Replies it waits for (its calls, and a SCRIPT LOAD's sent first).
    expected: int = 0
    #: A SCRIPT LOAD was sent first: its reply comes before the calls'.
    load: bool = False
    deadline: float = 0.0
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
        self._url = url
        self._cache_size = b"%d" % cache_size
        self._release = release
        self.on_error = on_error
        self._created = created
        self._link: RespLink | None = None
        self._sha = b""
        self._reload = False
        self._prefixes: dict[str, bytes] = {}
        #: Flights not yet released, in order (sent, or waiting behind those).
        self._flights: deque[_Flight] = deque()
        #: Flights sent whose replies are not all in, in order.
        self._awaiting: deque[_Flight] = deque()
        self._bytes = 0
        self._room = anyio.Event()
        self._room_wanted = False
        self._random = random.Random()

    # -- the writer's side -----------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self._flights) >= MAX_FLIGHTS or self._bytes >= MAX_FLIGHT_BYTES

    @property
    def ready(self) -> bool:
        """Whether :meth:`send_now` may be called: connected, and within the bounds."""
        link = self._link
        return link is not None and not link.closing and not self.full

    @property
    def in_flight(self) -> int:
        """Flights sent (or waiting behind those) and not yet released."""
        return len(self._flights)

    @property
    def in_flight_bytes(self) -> int:
        """Bytes of commands sent and not yet answered."""
        return self._bytes

    async def send(self, outputs: list[Output]) -> None:
        """Send ``outputs``' script calls once there is room, connecting first if needed."""
        while self.full:
            self._room_wanted = True
            await self._room.wait()
        link = self._link
        if link is not None and link.closing and not self._awaiting:
            self._link = None  # closed while idle (Redis's client timeout?): connect again
            link.abort()
        if self._link is None and _has_sends(outputs):
            try:
                await self._connect()
            except Exception as exc:  # could not connect: nothing was sent
                calls = group(outputs)
                self._flights.append(_Flight(outputs, list(calls.values()), 0))
                self._fail(None, exc)
                return
        self.send_now(outputs)

    def send_now(self, outputs: list[Output]) -> None:
        """Send ``outputs``' script calls now (:attr:`ready`, or no sends among them)."""
        calls = group(outputs)
        if not calls:
            if self._flights:
                self._flights.append(_Flight(outputs, [], 0))
            else:
                self._release(outputs)
            return
        link = self._link
        packed = [self._pack(topic, batches) for topic, (batches, _) in calls.items()]
        flight = _Flight(outputs, list(calls.values()), sum(map(len, packed)), len(calls))
        if self._reload:
            packed.insert(0, _LOAD_SCRIPT)
            self._reload = False
            flight.load = True
            flight.expected += 1
        flight.deadline = time.monotonic() + CALL_TIMEOUT
        self._flights.append(flight)
        self._bytes += flight.size
        if link is None or not link.write(packed):
            self._fail(link, BackendError("the connection to Redis is closed"))
            return
        self._awaiting.append(flight)

    def _pack(self, topic: str, batches: list[TopicBatch]) -> bytes:
        prefix = self._prefixes.get(topic)
        if prefix is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()
            keys = TopicKeys(topic)
            # EVALSHA, sha, key count, the keys, then 7 arguments (2 here, 5 below).
            count = len(keys.keys)
            prefix = self._prefixes[topic] = b"".join(
                [b"*%d\r\n$7\r\nEVALSHA\r\n" % (10 + count), bulk(self._sha)]
                + [bulk(b"%d" % count)]
                + [bulk(key) for key in keys.keys]
                + [bulk(keys.channel), bulk(self._cache_size)]
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
                bulk(seed),
                b"$1\r\nn\r\n$0\r\n\r\n$%d\r\n" % len(kinds),
                kinds,
                b"\r\n$%d\r\n" % (len(heads) + 1),
                heads,
                b"\n\r\n",
            )
        )

    async def _connect(self) -> None:
        link, (sha,) = await open_link(
            self._url, self._received, self._lost, [("SCRIPT", "LOAD", PUBLISH)], PIPELINE_NAME
        )
        sha = sha if isinstance(sha, bytes) else str(sha).encode("ascii")
        if sha != self._sha:
            self._sha = sha
            self._prefixes.clear()
        self._link = link
        self._reload = False

    # -- the replies' side -----------------------------------------------------------

    def _received(self, replies: list[Any]) -> None:
        """One read's replies: matched to the flights awaiting them, in order."""
        awaiting = self._awaiting
        unasked: list[Any] = []
        for reply in replies:
            if not awaiting:
                unasked.append(reply)
                break
            flight = awaiting[0]
            flight.replies.append(reply)
            if len(flight.replies) == flight.expected:
                awaiting.popleft()
        flights = self._flights
        while flights and len(flights[0].replies) == flights[0].expected:
            self._land(flights.popleft())
        if unasked:  # the connection is out of step: what is unanswered has an unknown outcome
            self._fail(self._link, BackendError(f"a reply nothing asked for: {unasked[0]!r:.80}"))

    def _land(self, flight: _Flight) -> None:
        """Release the answered ``flight`` (refusing what failed); it was the oldest."""
        self._bytes -= flight.size
        replies = flight.replies[1:] if flight.load else flight.replies
        error: BaseException | None = None
        new: list[str] = []
        for (batches, owners), reply in zip(flight.calls, replies, strict=True):
            if reply == 0:  # its first index: the topic is new
                new.append(batches[0].topic)
            elif isinstance(reply, Exception):  # an error reply: that script did nothing
                refuse(batches, owners)
                if str(reply).startswith("NOSCRIPT"):
                    self._reload = True
                elif error is None:
                    error = reply
        if new:
            self._created(new)
        self._release(flight.outputs)
        self._wake_writer()
        if error is not None:
            self.on_error(error)

    def _lost(self, link: RespLink, why: BaseException) -> None:
        if link is not self._link:
            return  # already failed, or let go
        if self._awaiting:
            self._fail(link, why)
        else:  # idle: forgotten (the next flight connects again)
            self._link = None

    async def watch(self) -> None:
        """Fail every unanswered flight once the oldest is late; until cancelled."""
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            if self._awaiting and self._awaiting[0].deadline <= time.monotonic():
                self._fail(self._link, BackendError(f"no reply from Redis within {CALL_TIMEOUT} s"))

    def _fail(self, link: RespLink | None, exc: BaseException) -> None:
        """``link`` failed: every flight not yet answered is refused, in order.

        ``link`` is aborted: commands it still buffers are dropped, not sent
        to Redis later (their senders are told they failed).
        """
        if link is not self._link:
            return  # an older connection, already failed
        self._link = None
        if link is not None:
            link.abort(exc)
        self._reload = True
        failed, self._flights, self._awaiting = self._flights, deque(), deque()
        self._bytes = 0
        for flight in failed:
            for batches, owners in flight.calls:
                refuse(batches, owners)
            self._release(flight.outputs)
        self._wake_writer()
        self.on_error(exc)

    def _wake_writer(self) -> None:
        if self._room_wanted:
            self._room_wanted = False
            self._room.set()
            self._room = anyio.Event()

    def reconnect(self) -> None:
        """Drop an idle connection (Redis was lost since it was made): the next flight
        opens a new one, rather than failing on the old socket first."""
        link = self._link
        if link is not None and not self._flights:
            self._link = None
            link.abort()

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.abort()

"""The async client, on anyio: it runs under asyncio and trio.

One connection carries every command and every subscription. The protocol has
no request ids: each command line gets exactly one reply, in order, and
deliveries are interleaved with the replies. So the client keeps one FIFO of
reply handlers per connection, appended to in the same (synchronous) step that
queues the command's bytes, and one reader task that pops a handler for every
reply and routes every delivery to the subscriptions of its topic.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Final

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from mqcore import (
    SUCCESS,
    Command,
    Delivery,
    Hello,
    HelloReply,
    Message,
    Reply,
    Send,
    Subscribe,
    Unsubscribe,
)

from ._errors import (
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    MQError,
    ProtocolError,
    ServerError,
    SubscriptionOverflowError,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_PORT",
    "Client",
    "Received",
    "Subscription",
    "connect",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7000
#: Commands sent but not yet answered before ``publish``/``send`` wait.
DEFAULT_MAX_IN_FLIGHT: Final = 4096
#: Messages a subscription holds for the application before it overflows.
DEFAULT_MAX_QUEUED: Final = 10_000
#: Unwritten bytes after which publish() lets the writer catch up: with the
#: in-flight limit (a count) this bounds memory whatever the message size.
_OUT_HIGH: Final = 256 << 10
#: How much one read may return: large reads mean fewer, larger batches.
_READ_SIZE: Final = 256 << 10
#: A line from the server longer than this is not the protocol (the server's
#: own default input limit is 1 MiB; a delivery is that plus its index).
_MAX_LINE: Final = 64 << 20


class Received(Message, frozen=True, gc=False, omit_defaults=True):
    """A message delivered to a :class:`Subscription`.

    ``topic``, ``msg``, ``delivery`` and ``index`` are the server's; ``gap`` is
    the client's: it is ``True`` on the first message after a reconnection
    that may have lost messages (the server's index numbering started over,
    or the subscription had no position to resume from). See the README's
    *Resume* section.
    """

    gap: bool = False


class _EpochMark:
    """Queued before the first message of a new epoch, so ``Subscription.epoch`` follows it."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: str | None) -> None:
        self.epoch = epoch


_DELIVERY_DECODER: Final = msgspec.json.Decoder(Received)
_REPLY_DECODER: Final = msgspec.json.Decoder(Reply)
_HELLO_DECODER: Final = msgspec.json.Decoder(HelloReply)
_ENCODER: Final = msgspec.json.Encoder()
#: Every successful command gets this reply; recognising it needs no decoding.
#: Lines are split at "\n", so a line keeps the reply's "\r".
_OK_LINE: Final = SUCCESS.removesuffix(b"\n")
#: The same reply with other line ends or without the space, as another server
#: may write it: only lines this short are worth stripping to compare.
_OK_LINES: Final = frozenset({SUCCESS.strip(), b"".join(SUCCESS.split())})
_OK_MAX: Final = len(SUCCESS)
_OK: Final = Reply(success=True)
#: What decoding a line from the server can raise besides DecodeError: invalid
#: UTF-8 inside a string, and JSON nested deeper than msgspec recurses. Each
#: means the server is not speaking the protocol.
_UNDECODABLE: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

#: Called with the reply to a command, or with the error that lost it.
_Handler = Callable[[Reply | ConnectionLostError, bytes], None]


def _unexpected(line: bytes) -> ProtocolError:
    return ProtocolError(f"unexpected line from the server: {line[:200]!r}")


class _Waiter:
    """The handler of a command a task is waiting on."""

    __slots__ = ("done", "error", "line")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: MQError | None = None
        self.line = b""

    def __call__(self, outcome: Reply | ConnectionLostError, line: bytes) -> None:
        if isinstance(outcome, ConnectionLostError):
            self.error = outcome
        elif not outcome.success:
            self.error = ServerError(outcome.reason)
        self.line = line
        self.done.set()

    async def wait(self) -> bytes:
        """Return the reply line; raise what the reply (or losing it) means."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.line


class _Conn:
    """One TCP connection: its stream, the bytes to write, the handlers owed a reply."""

    __slots__ = ("drained", "ended", "error", "idle", "out", "pending", "seen", "stream", "wake")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.out = bytearray()
        self.pending: deque[_Handler | None] = deque()
        self.wake = anyio.Event()
        # True while the writer waits for `wake`: a plain flag is cheaper to
        # test on every command than Event.is_set().
        self.idle = False
        # Set (and dropped) by the writer once it has written what was buffered.
        self.drained: anyio.Event | None = None
        self.ended = anyio.Event()
        self.error: ConnectionLostError | None = None
        # Per topic, the highest index delivered on this connection since it
        # last subscribed to the topic: no replay can hold a message above it
        # that was not delivered live too (see "subscriptions" in Client).
        self.seen: dict[str, int] = {}


class Client:
    """A connection to an mqcore (or any aiomemq-compatible) server.

    Create it with :func:`connect`. All methods must be called from the event
    loop (or trio run) that created it; for threads and scripts use
    :class:`mqcore_client.SyncClient`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        reconnect: bool,
        reconnect_delay: float,
        reconnect_max_delay: float,
        offline_timeout: float | None,
        max_in_flight: int,
        max_queued: int,
        on_disconnect: Callable[[ConnectionLostError], object] | None,
        on_reconnect: Callable[[], object] | None,
    ) -> None:
        if max_in_flight < 1 or max_queued < 1:
            raise ValueError("max_in_flight and max_queued must be >= 1")
        self.host = host
        self.port = port
        #: The server's ``hello`` reply, or ``None`` for a plain (reference) server.
        self.server: HelloReply | None = None
        self._connect_timeout = connect_timeout
        self._reconnect = reconnect
        self._reconnect_delay = reconnect_delay
        self._reconnect_max_delay = reconnect_max_delay
        self._offline_timeout = offline_timeout
        self._max_in_flight = max_in_flight
        self._low_water = max_in_flight // 2
        self._max_queued = max_queued
        self._on_disconnect = on_disconnect
        self._on_reconnect = on_reconnect
        self._conn: _Conn | None = None
        self._started = anyio.Event()
        self._start_error: ConnectionLostError | None = None
        self._online = anyio.Event()
        self._closed: ConnectionLostError | None = None
        self._closing = False
        self._subs: dict[str, list[Subscription]] = {}
        # Commands queued and commands answered (or lost), over the client's
        # life: flush() waits for the second to reach the first.
        self._enqueued = 0
        self._completed = 0
        self._flush_waiters: deque[tuple[int, anyio.Event]] = deque()
        self._window: anyio.Event | None = None
        self._failed_publishes = 0
        self._first_failure = ""
        self._lost_publishes = 0

    # -- public API ---------------------------------------------------------------

    @property
    def epoch(self) -> str | None:
        """The server's current index-numbering epoch (``None`` for a plain server)."""
        return None if self.server is None else self.server.epoch

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now (``False`` while reconnecting)."""
        return self._conn is not None

    async def send(
        self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True
    ) -> None:
        """Send a message and return once the server has acknowledged it.

        Raises :class:`ServerError` if the server refused it, and
        :class:`ConnectionLostError` if the connection dropped first (the
        message may or may not have been delivered) or stayed down for
        longer than ``offline_timeout``.
        """
        conn = self._conn
        if conn is None or len(conn.pending) >= self._max_in_flight or len(conn.out) >= _OUT_HIGH:
            conn = await self._writable()
        waiter = _Waiter()
        self._enqueue(conn, Send(topic, msg, delivery, cache), waiter)
        await waiter.wait()

    async def publish(
        self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True
    ) -> None:
        """Queue a message without waiting for its reply; see :meth:`flush`.

        Returns at once unless ``max_in_flight`` commands are already
        unanswered (then it waits for the server to catch up) or the client
        is offline (then it waits as :meth:`send` does).
        """
        conn = self._conn
        if conn is None or len(conn.pending) >= self._max_in_flight or len(conn.out) >= _OUT_HIGH:
            conn = await self._writable()
        # _enqueue(), inlined: this is a pipelining producer's hot path.
        out = conn.out
        _ENCODER.encode_into(Send(topic, msg, delivery, cache), out, -1)
        out += b"\n"
        conn.pending.append(None)
        self._enqueued += 1
        if conn.idle:
            conn.idle = False
            conn.wake.set()

    async def flush(self) -> None:
        """Wait until every command queued so far has its reply.

        Then report the publishes that failed since the last report: raise
        :class:`ConnectionLostError` if any was lost with a connection (it
        may or may not have been delivered), else :class:`ServerError` (with
        the first reason and the count) if the server refused any.
        """
        target = self._enqueued
        if self._completed < target:
            done = anyio.Event()
            self._flush_waiters.append((target, done))
            await done.wait()
        else:
            await anyio.lowlevel.checkpoint()
        lost, failed = self._lost_publishes, self._failed_publishes
        self._lost_publishes = self._failed_publishes = 0
        if lost:
            raise ConnectionLostError(
                f"{lost} published message(s) unconfirmed: the connection was lost"
            )
        if failed:
            raise ServerError(self._first_failure, failed)

    def subscribe(
        self,
        topic: str,
        last_seen: int | None = None,
        cache: bool = True,
        *,
        epoch: str | None = None,
        max_queued: int | None = None,
    ) -> Subscription:
        """Return a subscription to ``topic``; ``async with`` it, then ``async for`` over it.

        The server replays its cached messages with an index above
        ``last_seen`` (all of them when ``None``; none with ``cache=False``),
        then live ones. Give the ``epoch`` that ``last_seen`` belongs to (a
        saved :attr:`Subscription.epoch`) and, if the server's numbering has
        started over since, the client replays the whole cache instead and
        flags the first message ``gap=True``. ``max_queued`` bounds the
        messages waiting for the application (default: the client's).

        With ``cache=False`` and no ``last_seen``, it starts after the newest
        message of ``topic`` this connection has received; if there is none,
        see the README's *Client* section for what it may miss while another
        subscription to ``topic`` gets its replay.
        """
        if max_queued is not None and max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        return Subscription(
            self,
            topic,
            last_seen,
            cache,
            epoch,
            self._max_queued if max_queued is None else max_queued,
        )

    # -- sending ------------------------------------------------------------------

    def _enqueue(self, conn: _Conn, command: Command, handler: _Handler | None) -> None:
        # Bytes and handler are queued in one synchronous step: that is what
        # keeps the handler FIFO in the order the server will answer.
        _ENCODER.encode_into(command, conn.out, -1)
        conn.out += b"\n"
        conn.pending.append(handler)
        self._enqueued += 1
        if conn.idle:
            conn.idle = False
            conn.wake.set()

    async def _writable(self) -> _Conn:
        """Wait for a connection with room for one more command in flight."""
        while True:
            conn = self._conn
            if conn is None:
                await self._wait_online()
            elif len(conn.pending) >= self._max_in_flight:
                if self._window is None:
                    self._window = anyio.Event()
                await self._window.wait()
            elif len(conn.out) >= _OUT_HIGH:
                if conn.drained is None:
                    conn.drained = anyio.Event()
                await conn.drained.wait()
            else:
                return conn

    async def _wait_online(self) -> None:
        if self._closed is not None:
            raise ConnectionLostError(str(self._closed))
        with anyio.move_on_after(self._offline_timeout):
            await self._online.wait()
        if self._closed is not None:
            raise ConnectionLostError(str(self._closed))
        if self._conn is None:
            raise ConnectionLostError(
                f"not connected to {self.host}:{self.port} "
                f"(still reconnecting after {self._offline_timeout} s)"
            )

    async def _write_loop(self, conn: _Conn) -> None:
        try:
            while True:
                if conn.out:
                    data = bytes(conn.out)
                    conn.out.clear()
                    await conn.stream.send(data)
                    if conn.drained is not None:
                        conn.drained.set()
                        conn.drained = None
                else:
                    conn.wake = anyio.Event()
                    conn.idle = True
                    await conn.wake.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._end(conn, ConnectionLostError(f"connection lost: {exc!r}"))

    # -- receiving ----------------------------------------------------------------

    async def _read_loop(self, conn: _Conn) -> None:
        receive = conn.stream.receive
        tail = b""
        try:
            while True:
                data = await receive(_READ_SIZE)
                if tail:
                    data = tail + data
                lines = data.split(b"\n")
                tail = lines.pop()
                if len(tail) > _MAX_LINE:
                    raise ProtocolError("the server sent a line longer than 64 MiB")
                self._handle_lines(conn, lines)
        except anyio.EndOfStream:
            error = ConnectionLostError(f"{self.host}:{self.port} closed the connection")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            error = ConnectionLostError(f"connection lost: {exc!r}")
        except ProtocolError as exc:
            error = exc
        self._end(conn, error)

    def _handle_lines(self, conn: _Conn, lines: list[bytes]) -> None:
        pending = conn.pending
        subs = self._subs
        seen = conn.seen
        replies = 0
        try:
            for line in lines:
                if line == _OK_LINE or (len(line) <= _OK_MAX and line.strip() in _OK_LINES):
                    outcome = _OK
                else:
                    try:
                        message = _DELIVERY_DECODER.decode(line)
                    except msgspec.ValidationError:
                        # Not a delivery: a reply (a failure, or `hello`'s).
                        try:
                            outcome = _REPLY_DECODER.decode(line)
                        except _UNDECODABLE:
                            raise _unexpected(line) from None
                    except _UNDECODABLE:
                        if not line.strip():
                            continue
                        raise _unexpected(line) from None
                    else:
                        topic = message.topic
                        targets = subs.get(topic)
                        if targets:
                            # max(): a replay goes back below live messages.
                            if message.index > seen.get(topic, -1):
                                seen[topic] = message.index
                            for sub in targets:
                                sub._deliver(message)
                        continue
                if not pending:
                    raise ProtocolError(f"a reply with no command to answer: {line[:200]!r}")
                handler = pending.popleft()
                replies += 1
                if handler is not None:
                    handler(outcome, line)
                elif not outcome.success:
                    if not self._failed_publishes:
                        self._first_failure = outcome.reason
                    self._failed_publishes += 1
        finally:
            # Also on a protocol error: flush() counts on every popped handler.
            if replies:
                self._completed += replies
                self._release(conn)

    def _release(self, conn: _Conn | None) -> None:
        """Wake the flushes whose commands are all answered, and blocked publishers."""
        waiters = self._flush_waiters
        while waiters and waiters[0][0] <= self._completed:
            waiters.popleft()[1].set()
        window = self._window
        if window is not None and (conn is None or len(conn.pending) <= self._low_water):
            self._window = None
            window.set()

    # -- subscriptions ----------------------------------------------------------
    #
    # Every subscription of a topic sees every delivery of that topic on the
    # connection, replays for the others included, and drops what is at or
    # below its position. A subscription with no position (cache=False,
    # nothing received yet) cannot do that: replayed messages are older than
    # it, but in index order, like the live ones that may follow them, so
    # nothing in a delivery tells where a replay ends. Two rules cover it:
    #
    # - Once active, it takes as its position the highest index the
    #   connection has seen on the topic (conn.seen), if any. A later replay
    #   holds nothing above that which was not delivered live (and so queued,
    #   or dropped as before it) too.
    # - Otherwise a subscribe that replays the topic is "fenced": the same
    #   write carries a second, no-op subscribe (cache=False) right behind it.
    #   The server writes a replay right after its subscribe's reply, before
    #   it reads another line, so the fence's reply comes after the replay;
    #   position-less subscriptions ignore the topic from one reply to the
    #   other, then take conn.seen as their position. What other clients
    #   send while the server is between the two lines is lost to them (the
    #   README says so); both mqcore and the reference server handle the
    #   lines of one read together, so that takes a split TCP segment.

    def _subscribe(self, conn: _Conn, command: Subscribe, subs: list[Subscription]) -> None:
        """Queue ``command`` on behalf of ``subs``, fenced when its replay needs to be."""
        topic = command.topic
        fenced = command.cache and any(sub._last is None for sub in self._subs.get(topic, ()))
        self._enqueue(conn, command, partial(self._subscribe_sent, conn, topic, subs, fenced))
        if fenced:
            # Queued in the same synchronous step: one write carries both lines.
            fence = Subscribe(topic, cache=False)
            self._enqueue(conn, fence, partial(self._fence_passed, conn, topic))

    def _subscribe_sent(
        self,
        conn: _Conn,
        topic: str,
        subs: list[Subscription],
        fenced: bool,
        outcome: Reply | ConnectionLostError,
        line: bytes,
    ) -> None:
        """The handler of a ``subscribe``, for every local subscription it serves."""
        if isinstance(outcome, ConnectionLostError):
            # Reconnection re-issues it (or closing the client fails the subscriptions).
            return
        if outcome.success:
            floor = conn.seen.get(topic)
            for sub in subs:
                if not sub._closed:
                    sub._activate(self.epoch, floor)
            if fenced:
                # Its replay comes next: the fence's reply says when it is over.
                for sub in self._subs.get(topic, ()):
                    sub._fence()
        else:
            error = ServerError(outcome.reason)
            for sub in subs:
                sub._fail(error)

    def _fence_passed(
        self, conn: _Conn, topic: str, outcome: Reply | ConnectionLostError, line: bytes
    ) -> None:
        """The handler of a fence: the replay before it is over, whatever the reply says."""
        if isinstance(outcome, ConnectionLostError):
            return  # _end() lifted the fence; the resubscription decides anew.
        floor = conn.seen.get(topic)
        for sub in self._subs.get(topic, ()):
            sub._unfence(floor)

    def _unsubscribed(
        self, conn: _Conn, topic: str, outcome: Reply | ConnectionLostError, line: bytes
    ) -> None:
        """The handler of an ``unsubscribe``: whatever the reply, the topic's deliveries are over.

        So what the connection has seen of the topic is no floor for a later
        subscription: messages sent from now on do not reach it.
        """
        conn.seen.pop(topic, None)

    def _remove(self, sub: Subscription) -> None:
        """Forget a local subscription; unsubscribe if it was the topic's last."""
        subs = self._subs.get(sub.topic)
        if subs is None or sub not in subs:
            return
        # A new list, not remove(): the reader may be iterating the old one.
        subs = [other for other in subs if other is not sub]
        if subs:
            self._subs[sub.topic] = subs
        else:
            del self._subs[sub.topic]
            if self._conn is not None:
                # The reference server answers an unsubscribe it does not expect
                # with an error: nothing to do about it, so nothing waits for it.
                handler = partial(self._unsubscribed, self._conn, sub.topic)
                self._enqueue(self._conn, Unsubscribe(sub.topic), handler)

    def _resubscribe(self, conn: _Conn, epoch_changed: bool) -> None:
        """After a reconnection, re-issue every topic's subscription from where it stopped."""
        for topic, subs in self._subs.items():
            for sub in subs:
                if epoch_changed:
                    sub._new_epoch(self.epoch)
                elif sub._last is None:
                    # No position to resume from: what was sent meanwhile is lost.
                    sub._gap = True
            positions = [sub._last for sub in subs if sub._last is not None]
            # One subscribe per topic, from the least advanced subscription;
            # the others drop the replayed copies they already have.
            command = (
                Subscribe(topic, min(positions)) if positions else Subscribe(topic, cache=False)
            )
            self._subscribe(conn, command, list(subs))

    # -- the connection's life ----------------------------------------------------

    async def _run(self) -> None:
        """Connect, then keep a connection up (or not) until the client closes.

        The outcome of the first attempt goes to ``_started``: :func:`connect`
        waits for it and raises its error, so no exception crosses a task group.
        """
        delay = self._reconnect_delay
        first = True
        while True:
            try:
                with anyio.fail_after(self._connect_timeout):
                    stream = await anyio.connect_tcp(self.host, self.port)
            except TimeoutError:
                error: ConnectionLostError = ConnectTimeoutError(
                    f"timed out connecting to {self.host}:{self.port} "
                    f"after {self._connect_timeout} s"
                )
            except OSError as exc:
                # anyio says "All connection attempts failed"; its cause says why.
                cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
                error = ConnectError(
                    f"cannot connect to {self.host}:{self.port}: {cause.strerror or cause}"
                )
            else:
                established, error = await self._session(stream, first)
                if established:
                    first = False
                    delay = self._reconnect_delay
            if first:
                self._start_error = error
                self._started.set()
                return
            if self._closing or not self._reconnect:
                self._shut(error)
                return
            # Full jitter, so that many clients of one restarted server spread out.
            await anyio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._reconnect_max_delay)

    async def _session(
        self, stream: anyio.abc.SocketStream, first: bool
    ) -> tuple[bool, ConnectionLostError]:
        """Run one connection: handshake, resubscribe, then serve until it ends."""
        conn = _Conn(stream)
        established = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_loop, conn)
                tg.start_soon(self._write_loop, conn)
                info = await self._handshake(conn)
                if conn.error is None:
                    established = True
                    self._established(conn, info, first)
                    self._started.set()
                    await conn.ended.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        assert conn.error is not None
        return established, conn.error

    async def _handshake(self, conn: _Conn) -> HelloReply | None:
        """Send ``hello``; return the server's description, or ``None`` for a plain server."""
        waiter = _Waiter()
        self._enqueue(conn, Hello(), waiter)
        try:
            with anyio.fail_after(self._connect_timeout):
                line = await waiter.wait()
        except TimeoutError:
            self._end(
                conn,
                ConnectTimeoutError(
                    f"{self.host}:{self.port} did not answer hello within {self._connect_timeout} s"
                ),
            )
            return None
        except ServerError:
            return None  # A reference server: "Malformed json message".
        except ConnectionLostError:
            return None  # conn.error says why.
        try:
            return _HELLO_DECODER.decode(line)
        except msgspec.DecodeError:
            return None  # Answers hello, but not as mqcore does: treat it as plain.
        except (UnicodeDecodeError, RecursionError):
            # The reply decoder skipped the field that holds it; no server
            # speaking JSON writes this.
            self._end(conn, _unexpected(line))
            return None

    def _established(self, conn: _Conn, info: HelloReply | None, first: bool) -> None:
        old, self.server = self.server, info
        if not first:
            if old is None or info is None:
                # Plain before and after: no way to tell a restart (see the README).
                changed = (old is None) != (info is None)
            else:
                changed = old.epoch != info.epoch or old.server != info.server
            self._resubscribe(conn, changed)
        self._conn = conn
        self._online.set()
        if not first and self._on_reconnect is not None:
            self._on_reconnect()

    def _end(self, conn: _Conn, error: ConnectionLostError) -> None:
        """The connection is over: fail what it owed, and go offline. Idempotent."""
        if conn.error is not None:
            return
        conn.error = error
        conn.ended.set()
        if conn.drained is not None:
            conn.drained.set()
        pending = conn.pending
        self._completed += len(pending)
        while pending:
            handler = pending.popleft()
            if handler is None:
                self._lost_publishes += 1
            else:
                handler(error, b"")
        self._release(None)
        if self._conn is not conn:
            return  # It failed in its handshake: it never went online.
        self._conn = None
        self._online = anyio.Event()
        for subs in self._subs.values():
            for sub in subs:
                sub._active = False
                sub._fenced = False
        if self._on_disconnect is not None and not self._closing:
            self._on_disconnect(error)

    def _shut(self, error: ConnectionLostError) -> None:
        """The client is done for good: fail every waiter and subscription."""
        if self._closed is not None:
            return
        self._closed = error
        if self._conn is not None:
            self._end(self._conn, error)
        for subs in self._subs.values():
            for sub in subs:
                sub._fail(error, remove=False)
        self._subs.clear()
        self._online.set()
        self._release(None)


class Subscription:
    """One subscription to a topic: an async context manager and an async iterator.

    Leaving the ``async with`` block unsubscribes (when it is the
    connection's last subscription to that topic). Iterating yields
    :class:`Received` messages in index order, without duplicates, across
    reconnections. At most ``max_queued`` messages wait for the application;
    one more and the subscription ends: iteration yields what was queued,
    then raises :class:`SubscriptionOverflowError`.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        last_seen: int | None,
        cache: bool,
        epoch: str | None,
        max_queued: int,
    ) -> None:
        self.topic = topic
        #: The epoch of the last message yielded (of the subscription, before any).
        self.epoch: str | None = None
        #: The index of the last message yielded (before any: the ``last_seen``
        #: it started after), to save for resuming.
        self.last_index: int | None = last_seen
        self._client = client
        self._last_seen = last_seen
        self._cache = cache
        self._expected_epoch = epoch
        self._max_queued = max_queued
        self._queue: deque[Received | _EpochMark] = deque()
        # The index of the last message queued: resumption starts after it,
        # and any copy at or below it is a duplicate. None: no position yet.
        self._last: int | None = None
        self._gap = False
        self._active = False
        # Inactive while another subscription's replay goes by (no position yet).
        self._fenced = False
        self._entered = False
        self._closed = False
        self._ready: anyio.Event | None = None
        self._error: MQError | None = None
        self._waiter: anyio.Event | None = None

    async def __aenter__(self) -> Subscription:
        if self._entered:
            raise RuntimeError("a Subscription can be entered only once")
        self._entered = True
        client = self._client
        conn = await client._writable()
        last_seen = self._last_seen
        if self._expected_epoch is not None and self._expected_epoch != client.epoch:
            # last_seen counts in an index numbering that has ended.
            last_seen = None
            self._gap = True
        self.last_index = last_seen
        self._last = last_seen if last_seen is not None else (-1 if self._cache else None)
        client._subs.setdefault(self.topic, []).append(self)
        self._ready = ready = anyio.Event()
        command = Subscribe(self.topic, -1 if last_seen is None else last_seen, self._cache)
        client._subscribe(conn, command, [self])
        try:
            await ready.wait()
        except BaseException:
            self._close()
            raise
        if self._error is not None:
            self._close()
            raise self._error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Received:
        """Return the next message, waiting for one if need be."""
        if not self._entered:
            raise RuntimeError("use `async with client.subscribe(...)` before iterating")
        while True:
            queue = self._queue
            # No checkpoint when a message is ready (as asyncio.Queue.get):
            # draining a backlog should not cost an event-loop turn per message.
            if queue:
                item = queue.popleft()
                if isinstance(item, _EpochMark):
                    self.epoch = item.epoch
                    continue
                self.last_index = item.index
                return item
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._waiter = waiter = anyio.Event()
            await waiter.wait()

    # -- driven by the client's reader ----------------------------------------------

    def _deliver(self, message: Received) -> None:
        if not self._active:
            return
        last = self._last
        if last is not None and message.index <= last:
            # A replay for another subscription of this topic: already queued,
            # or older than this subscription (see Client._subscribe).
            return
        if len(self._queue) >= self._max_queued:
            self._fail(SubscriptionOverflowError(self.topic, last, self._queue_epoch()))
            return
        if self._gap:
            self._gap = False
            message = msgspec.structs.replace(message, gap=True)
        self._last = message.index
        self._queue.append(message)
        self._wake()

    def _activate(self, epoch: str | None, floor: int | None) -> None:
        if self._last is None:
            self._last = floor
        self._active = True
        self._fenced = False
        if self._ready is not None and not self._ready.is_set():
            self.epoch = epoch
            self._ready.set()

    def _fence(self) -> None:
        if self._active and self._last is None:
            self._active = False
            self._fenced = True

    def _unfence(self, floor: int | None) -> None:
        if self._fenced and not self._closed:
            self._fenced = False
            self._active = True
            if self._last is None:
                self._last = floor

    def _new_epoch(self, epoch: str | None) -> None:
        """The server's numbering started over: replay its whole cache, flag the gap."""
        self._last = -1
        self._gap = True
        if self._ready is not None and self._ready.is_set():
            self._queue.append(_EpochMark(epoch))
        else:
            self.epoch = epoch

    def _queue_epoch(self) -> str | None:
        for item in reversed(self._queue):
            if isinstance(item, _EpochMark):
                return item.epoch
        return self.epoch

    def _fail(self, error: MQError, *, remove: bool = True) -> None:
        if self._closed:
            return
        self._error = error
        self._close(remove=remove)

    def _close(self, *, remove: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._active = False
        if remove:
            self._client._remove(self)
        if self._ready is not None:
            self._ready.set()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()


def connect(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    connect_timeout: float = 10.0,
    reconnect: bool = False,
    reconnect_delay: float = 0.1,
    reconnect_max_delay: float = 5.0,
    offline_timeout: float | None = 10.0,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    max_queued: int = DEFAULT_MAX_QUEUED,
    on_disconnect: Callable[[ConnectionLostError], object] | None = None,
    on_reconnect: Callable[[], object] | None = None,
) -> AbstractAsyncContextManager[Client]:
    """Connect to a server: ``async with connect(host, port) as client: ...``.

    ``connect_timeout`` bounds the TCP connect plus the ``hello`` handshake
    (:class:`ConnectTimeoutError`, both a :class:`ConnectError` and an
    :class:`MQTimeoutError`); a refused connection raises :class:`ConnectError`.

    With ``reconnect=True`` a lost connection (not the first attempt: that
    one raises, so a misconfigured address fails fast) is re-established with
    exponential backoff (``reconnect_delay`` doubling up to
    ``reconnect_max_delay``, with jitter) and every subscription resumes where
    it stopped; meanwhile ``send``, ``publish`` and ``subscribe`` wait up to
    ``offline_timeout`` seconds (``None``: forever, ``0``: not at all) for the
    connection, then raise :class:`ConnectionLostError`. Without it, a lost
    connection ends the client: later calls raise, and subscriptions end with
    :class:`ConnectionLostError` once their queued messages are consumed.

    ``on_disconnect(error)`` and ``on_reconnect()`` are called synchronously,
    from the client's task, when the connection drops and when it is back
    (its resubscriptions are then sent, ahead of any later command, but not
    yet answered). ``max_in_flight`` bounds the commands awaiting a reply
    before ``publish`` waits; ``max_queued`` is the default bound of a
    subscription's queue. Leaving the block normally waits for the replies to
    everything published (:meth:`Client.flush`, whose errors it raises).
    """
    return _run_client(
        partial(
            Client,
            host,
            port,
            connect_timeout=connect_timeout,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            offline_timeout=offline_timeout,
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
        )
    )


@asynccontextmanager
async def _run_client(make: Callable[[], Client]) -> AsyncIterator[Client]:
    # Built here, not in connect(): its events belong to the running event loop,
    # and a SyncClient calls connect() from a thread without one.
    client = make()
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(client._run)
        await client._started.wait()
        if client._start_error is None:
            try:
                yield client
                await client.flush()
            except Exception as exc:
                # Raised again below, outside the task group, which would
                # otherwise wrap it in an ExceptionGroup.
                error = exc
            finally:
                client._closing = True
                client._shut(ConnectionLostError("the client is closed"))
                tg.cancel_scope.cancel()
    if client._start_error is not None:
        raise client._start_error
    if error is not None:
        raise error

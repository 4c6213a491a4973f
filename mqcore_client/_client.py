"""The async client, on anyio (asyncio or trio): commands, waits, and the connection's life.

One connection carries every command and every subscription. The
:class:`~mqcore_client._session.Session` matches replies and applies the
subscription rules; a :class:`~mqcore_client._connection.Connection` moves
the bytes. The client adds what needs a clock or a task:

- **Waits.** Every wait on the server is bounded by ``timeout`` (default
  10 s, ``None`` for none) and raises :class:`MQTimeoutError`: a reply to
  ``send`` or to a subscribe, ``flush``, room in the in-flight window or in
  the write buffer. A timed-out command stays in the reply FIFO, so the
  replies that follow still match their commands. Waiting for a connection
  while reconnecting is bounded by ``offline_timeout`` instead.
- **Backpressure.** ``publish`` waits only when ``max_in_flight`` commands
  are unanswered or 256 KiB are unwritten, so memory stays bounded.
- **The connection's life.** One task connects (the first failure is
  raised by :func:`connect`), runs a connection until it ends, and with
  ``reconnect`` tries again; the session re-issues every subscription from
  where it stopped. Which server (of several addresses) and when is the
  :class:`~mqcore_client._dialer.Dialer`'s rule.
- **Credentials, TLS, heartbeats** go in every connection's ``hello``
  (see ``_hello``); an :class:`AuthenticationError` ends the client, never retried.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import anyio.lowlevel
import msgspec

from mqcore import (
    DEFAULT_PREFETCH,
    Delivery,
    HelloReply,
    Send,
)

from ._connection import Connection
from ._consume import Consumer, ConsumerLink
from ._dialer import Dialer, handshake
from ._errors import ConnectionLostError, MQTimeoutError, ServerError
from ._hello import heartbeat
from ._pattern_state import new_state
from ._session import Request, Session
from ._subscription import Subscription
from ._subscription_state import DEFAULT_MAX_QUEUED, DEFAULT_MAX_QUEUED_BYTES, SubscriptionState
from ._url import Address

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_TIMEOUT",
    "Client",
]

#: Commands sent but not yet answered before ``publish``/``send`` wait.
DEFAULT_MAX_IN_FLIGHT: Final = 4096
#: How long any call waits for the server.
DEFAULT_TIMEOUT: Final = 10.0
#: Unwritten bytes after which publish() lets the writer catch up: with the
#: in-flight limit (a count) this bounds memory whatever the message size.
_OUT_HIGH: Final = 256 << 10
#: Closing a stream never waits longer than this.
_CLOSE_TIMEOUT: Final = 1.0


class Client:
    """A connection to an mqcore (or any aiomemq-compatible) server.

    Create it with :func:`mqcore_client.connect`. All methods must be called
    from the event loop (or trio run) that created it; for threads and
    scripts use :class:`mqcore_client.SyncClient`.
    """

    def __init__(
        self,
        addresses: Address | Sequence[Address],
        *,
        connect_timeout: float,
        timeout: float | None,
        reconnect: bool,
        reconnect_delay: float,
        reconnect_max_delay: float,
        offline_timeout: float | None,
        max_in_flight: int,
        max_queued: int,
        max_queued_bytes: int,
        on_disconnect: Callable[[ConnectionLostError], object] | None,
        on_reconnect: Callable[[], object] | None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        heartbeat: float | None = None,
    ) -> None:
        if max_in_flight < 1 or max_queued < 1 or max_queued_bytes < 1:
            raise ValueError("max_in_flight, max_queued and max_queued_bytes must be >= 1")
        self._dialer = Dialer(
            addresses,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            token=token,
            user=user,
            password=password,
            heartbeat=heartbeat,
        )
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._reconnect = reconnect
        self._offline_timeout = offline_timeout
        self._max_in_flight = max_in_flight
        self._low_water = max_in_flight // 2
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        self._on_disconnect = on_disconnect
        self._on_reconnect = on_reconnect
        self._session = Session()
        self._conn: Connection | None = None
        self.started = anyio.Event()
        #: Why the first connection failed, once ``started`` is set.
        self.start_error: ConnectionLostError | None = None
        self._online = anyio.Event()
        self._closed: ConnectionLostError | None = None
        self._closing = False
        self._flush_waiters: deque[tuple[int, anyio.Event]] = deque()
        self._window: anyio.Event | None = None

    # -- public API ---------------------------------------------------------------

    @property
    def address(self) -> Address:
        """Where the server in use (or being tried) is."""
        return self._dialer.address

    @property
    def addresses(self) -> list[Address]:
        """Every server address the client may use, in the order given."""
        return list(self._dialer.addresses)

    @property
    def host(self) -> str:
        """The server's host (for a Unix socket, its path)."""
        return self.address.path or self.address.host

    @property
    def port(self) -> int:
        """The server's TCP port (0 for a Unix socket)."""
        return 0 if self.address.path is not None else self.address.port

    @property
    def server(self) -> HelloReply | None:
        """The server's ``hello`` reply, or ``None`` for a plain (reference) server."""
        return self._session.server

    @property
    def epoch(self) -> str | None:
        """The server's current index-numbering epoch (``None`` for a plain server)."""
        return self._session.epoch

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now (``False`` while reconnecting)."""
        return self._conn is not None

    async def send(
        self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True
    ) -> None:
        """Send a message and return once the server has acknowledged it.

        Raises :class:`ServerError` if the server refused it,
        :class:`MQTimeoutError` if no reply came within ``timeout``, and
        :class:`ConnectionLostError` if the connection dropped first (the
        message may or may not have been delivered) or stayed down for
        longer than ``offline_timeout``.
        """
        conn = await self._writable()
        request = self._session.request(Send(topic, msg, delivery, cache))
        conn.kick()
        await self._reply(request, "send")

    async def publish(
        self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True
    ) -> None:
        """Queue a message without waiting for its reply; see :meth:`flush`.

        Returns at once unless ``max_in_flight`` commands are already
        unanswered (then it waits for the server to catch up) or the client
        is offline (then it waits as :meth:`send` does).
        """
        session, conn = self._session, self._conn
        if (
            conn is None
            or len(session.pending) >= self._max_in_flight
            or (len(session.out) >= _OUT_HIGH)
        ):
            conn = await self._writable()
        session.enqueue(Send(topic, msg, delivery, cache), None)
        conn.kick()

    async def flush(self) -> None:
        """Wait until every command queued so far has its reply.

        Then report the publishes that failed since the last report: raise
        :class:`ConnectionLostError` if any was lost with a connection (it
        may or may not have been delivered), else :class:`ServerError` (with
        the first reason and the count) if the server refused any. Raises
        :class:`MQTimeoutError` if the replies take over ``timeout``.
        """
        target = self._session.enqueued
        if self._session.completed < target:
            done = anyio.Event()
            self._flush_waiters.append((target, done))
            await self._bounded(done, "the replies to what was published")
        else:
            await anyio.lowlevel.checkpoint()
        lost, failed, reason = self._session.take_publish_failures()
        if lost:
            raise ConnectionLostError(
                f"{lost} published message(s) unconfirmed: the connection was lost"
            )
        if failed:
            raise ServerError(reason, failed)

    def subscribe(
        self,
        topic: str,
        last_seen: int | None = None,
        cache: bool = True,
        *,
        epoch: str | None = None,
        max_queued: int | None = None,
        max_queued_bytes: int | None = None,
    ) -> Subscription:
        """Return a subscription to ``topic``; ``async with`` it, then ``async for`` over it.

        The server replays its cached messages with an index above
        ``last_seen`` (all of them when ``None``; none with ``cache=False``),
        then live ones. Give the ``epoch`` that ``last_seen`` belongs to (a
        saved :attr:`Subscription.epoch`) and, if the server's numbering has
        started over since, the client replays the whole cache instead and
        flags the first message ``gap=True``. ``max_queued`` and
        ``max_queued_bytes`` bound the messages, and the bytes of message
        text, waiting for the application (default: the client's).

        With ``cache=False`` and no ``last_seen``, it starts after the newest
        message of ``topic`` this connection has received; if there is none,
        see the README's *Client* section for what it may miss while another
        subscription to ``topic`` gets its replay.

        A ``topic`` with a ``*`` or ``>`` token is a pattern: every matching
        topic's messages, each naming its own topic and index; no
        ``last_seen`` (ValueError); a reconnection resumes per topic.
        """
        state = new_state(
            topic,
            last_seen,
            cache,
            epoch=epoch,
            max_queued=self._max_queued if max_queued is None else max_queued,
            max_queued_bytes=self._max_queued_bytes
            if max_queued_bytes is None
            else max_queued_bytes,
        )
        return Subscription(state, self._open, self._close, self._timeout)

    def consume(self, topic: str, prefetch: int = DEFAULT_PREFETCH) -> Consumer:
        """Return a consumer of ``topic``'s jobs; ``async with`` it, then ``async for`` over it.

        Each :class:`Job` must be acked (``async with job:`` does it, or
        nacks on an exception); at most ``prefetch`` are unacked at once.
        See :mod:`mqcore_client._consume` for the rules.
        """
        link = ConsumerLink(self._session, self._writable, self._reply, self._kick, self._ended)
        return Consumer(link, topic, prefetch)

    # -- waiting --------------------------------------------------------------------

    async def _open(self, state: SubscriptionState) -> None:
        """Write ``state``'s subscribe once there is a connection with room for it."""
        conn = await self._writable()
        self._session.subscribe(state)
        conn.kick()

    def _close(self, state: SubscriptionState) -> None:
        self._session.remove(state)
        if self._conn is not None:
            self._conn.kick()

    def _kick(self) -> None:
        if self._conn is not None:
            self._conn.kick()

    def _ended(self) -> ConnectionLostError | None:
        return self._closed

    async def _reply(self, request: Request, what: str) -> bytes:
        """Wait for ``request``'s reply; raise what it (or losing it) means."""
        if not request.done:
            done = anyio.Event()
            request.notify = done.set
            await self._bounded(done, f"the reply to {what}")
        if request.error is not None:
            raise request.error
        return request.line

    async def _bounded(self, event: anyio.Event, what: str) -> None:
        """Wait for ``event`` at most ``timeout`` seconds, else raise MQTimeoutError."""
        with anyio.move_on_after(self._timeout):
            await event.wait()
        if not event.is_set():
            raise MQTimeoutError(f"waited {self._timeout} s for {what} from {self.address}")

    async def _writable(self) -> Connection:
        """Wait for a connection with room for one more command in flight."""
        session = self._session
        while True:
            conn = self._conn
            if conn is None:
                await self._wait_online()
            elif len(session.pending) >= self._max_in_flight:
                if self._window is None:
                    self._window = anyio.Event()
                await self._bounded(self._window, "room in the in-flight window")
            elif len(session.out) >= _OUT_HIGH:
                if conn.drained is None:
                    conn.drained = anyio.Event()
                await self._bounded(conn.drained, "the server to read")
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
                f"not connected to {self.address} "
                f"(still reconnecting after {self._offline_timeout} s)"
            )

    def _release(self, lost: bool = False) -> None:
        """Wake the flushes whose commands are all answered, and blocked publishers."""
        waiters = self._flush_waiters
        completed = self._session.completed
        while waiters and waiters[0][0] <= completed:
            waiters.popleft()[1].set()
        window = self._window
        if window is not None and (lost or len(self._session.pending) <= self._low_water):
            self._window = None
            window.set()

    # -- the connection's life ----------------------------------------------------

    async def run(self) -> None:
        """Connect, then keep a connection up (or not) until the client closes.

        The outcome of the first attempt goes to ``started``/``start_error``:
        :func:`connect` waits for it and raises its error, so no exception
        crosses a task group.
        """
        await self._dialer.run(self._serve, self._give_up, self._may_reconnect)

    def _may_reconnect(self) -> bool:
        return self._reconnect and not self._closing

    def _give_up(self, error: ConnectionLostError) -> None:
        """End the client with ``error``: raised by :func:`connect` if it never started."""
        if not self.started.is_set():
            self.start_error = error
            self.started.set()
        else:
            self.shut(error)

    async def _serve(
        self, stream: anyio.abc.ByteStream, first: bool
    ) -> tuple[bool, ConnectionLostError]:
        """Run one connection: handshake, resubscribe, then serve until it ends."""
        hello = self._session.start_connection(self._dialer.hello)
        conn = Connection(
            stream, self._session, self.address, on_input=self._release, on_lost=self._lost
        )
        established = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.read_loop)
                tg.start_soon(conn.write_loop)
                conn.kick()
                info = await handshake(
                    self._session, conn, hello, self.address, self._connect_timeout
                )
                if conn.error is None:
                    established = True
                    self._session.establish(info, first=first)
                    self._conn = conn
                    conn.kick()
                    self._online.set()
                    self.started.set()
                    if not first and self._on_reconnect is not None:
                        self._on_reconnect()
                    if info is not None and info.heartbeat is not msgspec.UNSET:
                        tg.start_soon(heartbeat, self._session, conn, info.heartbeat)
                    await conn.ended.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                await stream.aclose()
        assert conn.error is not None
        return established, conn.error

    def _lost(self, conn: Connection, error: ConnectionLostError) -> None:
        """The connection ended: fail what it owed, and go offline."""
        self._session.connection_lost(error)
        self._release(lost=True)
        if self._conn is not conn:
            return  # It failed in its handshake: it never went online.
        self._conn = None
        self._online = anyio.Event()
        if self._on_disconnect is not None and not self._closing:
            self._on_disconnect(error)

    def shut(self, error: ConnectionLostError) -> None:
        """The client is done for good: fail every waiter and subscription."""
        if self._closed is not None:
            return
        self._closed = error
        self._closing = True
        if self._conn is not None:
            self._conn.end(error)
        self._session.close(error)
        self._online.set()
        self._release(lost=True)

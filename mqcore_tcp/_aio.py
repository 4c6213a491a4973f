"""The asyncio fast path: connections as asyncio Protocols, with no task per connection.

Under asyncio each accepted socket becomes an :class:`AioConnection`, an
asyncio Protocol whose ``data_received`` feeds the hub directly and whose
bytes are written by ``transport.write`` (which sends at once when the
socket has room and buffers the rest), instead of a reader and a writer
task that wake each other through events. That removes, per read, two task
switches, an event, and the epoll re-registration that anyio's streams do
to pause and resume reading; per connection, two tasks and a task group.
Under any other backend (trio) the server uses ``_streams`` instead.

Output is applied once per event-loop turn, not once per read: reads that
arrive together (several publishers, one subscriber) share one write.

Accepting is our own loop (``loop.sock_accept``), not ``loop.create_server``:
asyncio's accept loop, at the open-file limit, logs a traceback for each of
up to ``backlog`` attempts per wake-up. Ours backs off (see ``_accept``).

Closing (``quit``, end of input, shutdown) flushes what is owed, ends the
write side (FIN) and then reads and discards until the peer ends its side,
for at most :data:`CLOSE_TIMEOUT`: closing a socket with unread input makes
the kernel send a reset, which can destroy replies the peer has not read yet.

TLS (``mqcores://``): asyncio's own SSL transport, handshake bounded by
``_tls.HANDSHAKE_TIMEOUT``; a connection reaches the hub only once its
handshake succeeded (see ``_tls``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import cast

import anyio

from mqcore import ConnectionId

from ._accept import CLOSE_TIMEOUT, AcceptBackoff, peer_name, tune_accepted
from ._hub import Hub
from ._tls import HANDSHAKE_TIMEOUT, peer_identity

__all__ = ["AioConnection", "running_loop", "serve_sockets"]

log = logging.getLogger("mqcore_tcp")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Flusher:
    """Applies the broker's output once per event-loop turn, after the turn's reads."""

    def __init__(self, hub: Hub, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.loop = loop
        self.pending = False

    def soon(self) -> None:
        if not self.pending:
            self.pending = True
            # Runs after every callback already queued, i.e. after the reads
            # the selector reported together: their output goes out as one batch.
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        if self.pending:
            self.pending = False
            self.hub.flush()


class AioConnection(asyncio.Protocol):
    """One connection on the asyncio path: feeds the hub, writes what it is owed."""

    # No __dict__ (asyncio's protocol classes have empty __slots__): less memory per connection.
    __slots__ = (
        "_closing",
        "_deadline",
        "_durable",
        "_eof",
        "_refused",
        "_resume",
        "_tls",
        "_unsent",
        "cid",
        "flusher",
        "hub",
        "transport",
    )

    def __init__(self, hub: Hub, flusher: _Flusher) -> None:
        self.hub = hub
        self.flusher = flusher
        # Only a durable hub can fall behind (its store): no check per read otherwise.
        self._durable = hub.durable
        self.transport: asyncio.Transport | None = None
        self.cid = ConnectionId(-1)
        self._closing = False
        self._eof = False
        # Bytes not yet handed to the kernel, as last seen (a closed transport
        # forgets its buffer), plus bytes refused because it was closing.
        self._unsent = 0
        self._refused = 0
        self._resume: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # asyncio's SSL transport closes at end of input whatever eof_received returns.
        self._tls = False

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the new connection with the hub."""
        # A stream transport (not an isinstance check: uvloop's do not subclass asyncio's).
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("sslcontext") is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            tune_accepted(sock)
        identity = peer_identity(transport.get_extra_info("peercert"))
        self.cid = self.hub.connect(self, peer_name(transport.get_extra_info("peername")), identity)
        if self.hub.durable:
            # Have asyncio call resume_writing() whenever its buffer drains
            # into the kernel, so records that wait for bytes to be written
            # (consumed `one` messages) are stored then.
            self.transport.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        """Feed the hub; its output is applied once, at the end of this loop turn."""
        if self._closing:
            return  # read only so that closing sends no reset: discard
        hub = self.hub
        hub.receive(self.cid, data)
        self.flusher.soon()
        if self._durable and self._resume is None and hub.backlogged(self.cid):
            # The store is behind: stop reading, so TCP slows the sender.
            assert self.transport is not None
            self.transport.pause_reading()
            self._resume = asyncio.ensure_future(self._resume_when_room())

    def eof_received(self) -> bool:
        """The peer is done sending: it gets what it is owed, then the close.

        Returning True keeps the transport open until the hub closes it;
        False (when already closing) lets asyncio close it now.
        """
        self._eof = True
        if self._closing:
            return False
        self.flusher.flush()
        self.hub.receive_eof(self.cid)
        return not self._tls

    def resume_writing(self) -> None:
        """asyncio's buffer drained into the kernel (durable mode sets a high-water mark of 0)."""
        assert self.transport is not None
        self._unsent = self.transport.get_write_buffer_size() + self._refused
        self.hub.sent(self.cid)

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed: forget the connection."""
        self._closing = True
        self._stop_waiting()
        self.hub.disconnected(self.cid)

    # -- the Connection interface -------------------------------------------------------

    @property
    def queued(self) -> int:
        """Bytes not yet handed to the kernel."""
        return self._unsent

    def write(self, chunks: list[bytes]) -> int:
        """Write ``chunks`` in one write (the hub bounds their total); return :attr:`queued`."""
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            refused = sum(map(len, chunks))
            self._refused += refused
            self._unsent += refused
            return self._unsent
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        self._unsent = unsent = transport.get_write_buffer_size() + self._refused
        return unsent

    def close_when_flushed(self) -> None:
        """Flush, end the write side, and close once the peer ends its side (or time is up)."""
        transport = self.transport
        if self._closing or transport is None:
            return
        self._closing = True
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # sent after the buffer drains
        self._stop_waiting()
        transport.resume_reading()  # in case the store had paused it
        self._deadline = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals --------------------------------------------------------------------

    def _stop_waiting(self) -> None:
        if self._resume is not None:
            self._resume.cancel()  # it would only resume reading
            self._resume = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def _resume_when_room(self) -> None:
        await self.hub.wait_for_room(self.cid)
        self._resume = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def serve_sockets(
    hub: Hub, sockets: list[socket.socket], name: str, tls: ssl.SSLContext | None = None
) -> None:
    """Serve connections accepted on the listening ``sockets`` until cancelled; TLS with ``tls``."""
    loop = asyncio.get_running_loop()
    flusher = _Flusher(hub, loop)
    async with anyio.create_task_group() as tg:
        for sock in sockets:
            tg.start_soon(_accept_loop, hub, loop, flusher, sock, name, tls)


async def _accept_loop(
    hub: Hub,
    loop: asyncio.AbstractEventLoop,
    flusher: _Flusher,
    sock: socket.socket,
    name: str,
    tls: ssl.SSLContext | None,
) -> None:
    backoff = AcceptBackoff(name)
    starting: set[asyncio.Task[object]] = set()

    def started(task: asyncio.Task[object]) -> None:
        starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s: a connection failed while starting: %r", name, task.exception())

    while True:
        conn, _ = await backoff.accept(lambda: loop.sock_accept(sock))
        task: asyncio.Task[object] = loop.create_task(
            loop.connect_accepted_socket(
                lambda: AioConnection(hub, flusher),
                conn,
                ssl=tls,
                ssl_handshake_timeout=None if tls is None else HANDSHAKE_TIMEOUT,
            )
        )
        starting.add(task)
        task.add_done_callback(started)

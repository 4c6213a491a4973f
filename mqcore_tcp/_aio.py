"""The asyncio fast path: connections as asyncio Protocols, with no task per connection.

Under asyncio, :meth:`TCPServer.serve` hands its (anyio-bound) listening
sockets to ``loop.create_server``. Each connection is then a Protocol
whose ``data_received`` feeds the broker directly, and whose bytes are
written by ``transport.write`` (which sends at once when the socket has
room and buffers the rest), instead of a reader and a writer task that
wake each other through events. That removes, per read, two task switches,
an event, and the epoll re-registration that anyio's streams do to pause
and resume reading; per connection, two tasks and a task group. Under any
other backend (trio) the server keeps its anyio streams.

Output is applied once per event-loop turn, not once per read: reads that
arrive together (several publishers, one subscriber) share one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Final, cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from mqcore import ConnectionId, Output, Record

if TYPE_CHECKING:
    from ._server import TCPServer

__all__ = ["Connection", "accept", "running_loop"]

log = logging.getLogger("mqcore_tcp")

#: The kernel caps it at net.core.somaxconn; asyncio's default of 100 is too
#: small for thousands of clients connecting at once.
BACKLOG: Final = 65535


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None under another backend (trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Flusher:
    """Applies the broker's output once per event-loop turn, after the turn's reads."""

    def __init__(self, server: TCPServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
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
            server = self.server
            server._dispatch(server.broker.take_output())


class Connection(asyncio.Protocol):
    """One client connection on the asyncio path: feeds the broker, writes what it is owed.

    It has the write-side interface of the anyio path's client (``push``,
    ``close_when_flushed``, ``abort``, ``queue``/``queued``/``confirm``), so
    :meth:`TCPServer._dispatch` applies an Output to either kind alike.
    """

    def __init__(self, server: TCPServer, flusher: _Flusher) -> None:
        self.server = server
        self.flusher = flusher
        self.transport: asyncio.Transport | None = None
        self.cid = ConnectionId(-1)
        self.peer = "?"
        self.closing = False
        # Bytes go to the transport as soon as they are pushed, so nothing
        # ever waits here; records waiting for a write wait in `confirm`
        # until asyncio's buffer has drained (resume_writing).
        self.queue: list[bytes] = []
        self.queued = 0
        self.confirm: list[Record] = []
        self._resume: asyncio.Task[None] | None = None

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the new connection with the broker and the server."""
        # A stream transport (not an isinstance check: uvloop's do not subclass asyncio's).
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        self.cid = server.broker.open_connection()
        address = transport.get_extra_info("peername")
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        server._clients[self.cid] = self
        if server._committer is not None:
            # Durable: have asyncio call resume_writing() whenever its buffer
            # drains into the kernel, so records that wait for bytes to be
            # written (consumed `one` messages) are stored only then.
            self.transport.set_write_buffer_limits(high=0)
        log.debug("connection %d from %s", self.cid, self.peer)

    def data_received(self, data: bytes) -> None:
        """Feed the broker; its output is applied once, at the end of this loop turn."""
        server = self.server
        server.broker.receive_data(self.cid, data)
        self.flusher.soon()
        committer = server._committer
        if committer is not None and committer.backlogged and self._resume is None:
            # The store is behind: stop reading, so TCP slows the sender.
            assert self.transport is not None
            self.transport.pause_reading()
            self._resume = asyncio.ensure_future(self._resume_when_room())

    def eof_received(self) -> bool:
        """The peer is done sending: close once what it is owed is written.

        It gets no new deliveries (a `one` message must not go to a peer that
        may be gone). The close goes through the server's dispatch like a
        `quit`, so with a store it waits behind replies still held for a
        commit. Returning True keeps the transport open until then.
        """
        server = self.server
        self.flusher.flush()
        server.broker.connection_lost(self.cid)
        server._dispatch(Output(close=[self.cid]))
        return True

    def resume_writing(self) -> None:
        """asyncio's buffer drained into the kernel (durable mode sets a high-water mark of 0)."""
        if self.confirm:
            confirm, self.confirm = self.confirm, []
            self.server._written(confirm)

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed: forget the connection."""
        self._forget()
        log.debug("connection %d from %s closed", self.cid, self.peer)

    # -- the client interface ---------------------------------------------------------

    def push(self, chunks: list[bytes]) -> int:
        """Write ``chunks`` (one write for all); return the bytes still unsent."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        self.queued = transport.get_write_buffer_size()
        return self.queued

    def owes(self) -> bool:
        """Whether bytes pushed to it still wait in asyncio's buffer."""
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def close_when_flushed(self) -> None:
        """Close once everything owed so far is sent."""
        self.flusher.flush()  # what the broker owes it but has not yet handed out
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
        # connection_lost() follows on the next loop turn; forget it now, so
        # nothing more is pushed to it meanwhile.
        self._forget()

    # -- internals --------------------------------------------------------------------

    def _forget(self) -> None:
        server = self.server
        if server._clients.get(self.cid) is not self:
            return
        del server._clients[self.cid]
        server.broker.connection_lost(self.cid)
        if self._resume is not None:
            self._resume.cancel()  # it would only resume reading a closed transport
            self._resume = None
        if self.confirm and server._committer is not None:
            server._committer.store_later(self.confirm)
            self.confirm = []
        if not server._clients:
            server._idle.set()

    async def _resume_when_room(self) -> None:
        committer = self.server._committer
        if committer is not None:
            await committer.wait_for_room()
        self._resume = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def accept(
    server: TCPServer,
    loop: asyncio.AbstractEventLoop,
    listener: anyio.abc.Listener[anyio.abc.SocketStream],
) -> None:
    """Serve ``listener``'s sockets with :class:`Connection` protocols until cancelled."""
    listeners = getattr(listener, "listeners", [listener])
    sockets: list[socket.socket] = [sub.extra(SocketAttribute.raw_socket) for sub in listeners]
    flusher = _Flusher(server, loop)
    servers = [
        await loop.create_server(lambda: Connection(server, flusher), sock=sock, backlog=BACKLOG)
        for sock in sockets
    ]
    try:
        await anyio.sleep_forever()
    finally:
        for aserver in servers:
            aserver.close()
        if not server._stop.is_set():
            # Cancelled from outside, not stopped by shutdown(): no task owns
            # these connections, so close them here.
            for client in list(server._clients.values()):
                client.abort()
        # After shutdown(), serve() flushes and closes the connections itself.

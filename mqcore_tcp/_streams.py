"""The anyio byte-stream path: a reader and a writer task per connection (trio, any stream).

The reader feeds the hub and applies its output once per read; the writer
sends everything owed in one write per wake-up. Closing (``quit``, end of
input, shutdown) sends what is owed, ends the write side and waits for the
peer to end its side (the reader discards what it still reads), all within
:data:`CLOSE_TIMEOUT`: closing with unread input would make the kernel send
a reset that can destroy replies the peer has not read yet.

Accepting backs off when descriptors run out (see ``_accept``). On a TLS
listener each connection's task does its handshake (bounded by
``_tls.HANDSHAKE_TIMEOUT``) before it reaches the hub.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from mqcore import ConnectionId

from ._accept import AcceptBackoff, peer_name, tune_accepted
from ._hub import Hub
from ._queued_writes import QueuedWrites
from ._tls import handshake

__all__ = ["READ_SIZE", "StreamConnection", "serve_listener", "serve_stream"]

log = logging.getLogger("mqcore_tcp")

#: How much one receive() may return: large reads mean fewer, larger batches.
READ_SIZE: Final = 256 << 10

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class StreamConnection(QueuedWrites):
    """One connection's write side on an anyio byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream, tls: bool = False) -> None:
        super().__init__()
        self.stream = stream
        # A TLS stream has no half close before TLS 1.3 (and anyio's fails on a
        # closed one): it is closed after its last bytes instead.
        self._tls = tls
        self._ended = anyio.Event()  # the peer ended its side

    async def read_loop(self, hub: Hub, cid: ConnectionId) -> None:
        """Feed the hub until the peer ends its side; then only discard."""
        receive = self.stream.receive
        while True:
            try:
                data = await receive(READ_SIZE)
            except (*_GONE, OSError):  # OSError: a TLS error (a bad record)
                break
            if self._closing:
                continue
            hub.receive(cid, data)
            hub.flush()
            if hub.backlogged(cid):
                # The store is behind: stop reading, so TCP slows the senders.
                await hub.wait_for_room(cid)
        self._ended.set()
        if not self._closing:
            hub.receive_eof(cid)

    async def write_loop(self, hub: Hub, cid: ConnectionId) -> None:
        """Send what is owed, one write per wake-up; end the write side when closing."""
        stream = self.stream
        try:
            await self._send_owed(stream, hub, cid)
            if not self._tls:
                await stream.send_eof()
                await self._ended.wait()
        except (*_GONE, NotImplementedError, OSError):
            pass  # gone, or the peer reset it before the end
        self.scope.cancel()


async def serve_stream(
    hub: Hub, stream: anyio.abc.ByteStream, peer: str, tls: ssl.SSLContext | None = None
) -> None:
    """Serve one connection on ``stream`` until it ends (after a TLS handshake with ``tls``).

    Closes the stream.
    """
    secured = await handshake(stream, tls, peer)
    if secured is None:
        return
    stream, identity = secured
    conn = StreamConnection(stream, tls=tls is not None)
    cid = hub.connect(conn, peer, identity)
    try:
        with conn.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.write_loop, hub, cid)
                await conn.read_loop(hub, cid)
    finally:
        hub.disconnected(cid)
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def serve_listener(
    hub: Hub,
    listener: anyio.abc.SocketListener,
    name: str,
    task_group: anyio.abc.TaskGroup,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Accept from ``listener`` until cancelled; serve each connection in ``task_group``."""
    backoff = AcceptBackoff(name)
    while True:
        stream = await backoff.accept(listener.accept)
        try:
            raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
            tune_accepted(raw)
            peer = peer_name(stream.extra(SocketAttribute.remote_address, ""))
        except OSError:  # it went away already (getpeername: not connected)
            await stream.aclose()
            continue
        task_group.start_soon(serve_stream, hub, stream, peer, tls)

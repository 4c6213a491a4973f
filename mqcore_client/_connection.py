"""One connection to the server, on anyio: open the stream, then pump bytes both ways.

The session (``_session``) holds all protocol state; a :class:`Connection`
only moves bytes: its reader task feeds every read to
:meth:`Session.receive_data`, its writer task sends everything the session
has queued in one write per wake-up. Whoever queues bytes calls
:meth:`Connection.kick`; a plain ``idle`` flag keeps that cheap on the hot
path. The first failure on either side ends the connection, once, through
the ``on_lost`` callback.

TCP connections have ``SO_KEEPALIVE`` on, so a peer that vanished without a
FIN or RST (a pulled cable, a dropped NAT entry) is noticed eventually even
while nothing is being sent; every wait on a reply has its own timeout too.
With heartbeats agreed in ``hello``, :attr:`Connection.reads` (a count, no
clock on the hot path) lets the client notice a silent server within the interval.

``mqcores://`` addresses connect over TLS, verifying the server's
certificate and name with the given context (by default the system's trust
store): a failed handshake is a :class:`ConnectError` saying why.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ._errors import ConnectError, ConnectionLostError, ProtocolError
from ._session import Session
from ._url import Address
from ._ws import connect_ws

__all__ = ["Connection", "open_stream"]

#: How much one read may return: large reads mean fewer, larger batches.
_READ_SIZE: Final = 256 << 10
#: What a broken or closed stream raises.
_BROKEN: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


async def open_stream(
    address: Address, ssl_context: ssl.SSLContext | None = None
) -> anyio.abc.ByteStream:
    """Connect to ``address`` (TCP with keepalive, TLS, a Unix socket, or a WebSocket).

    Raise ConnectError.
    """
    try:
        if address.websocket is not None:
            return await connect_ws(address.websocket, ssl_context)
        if address.path is not None:
            return await anyio.connect_unix(address.path)
        if address.tls:
            stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                address.host,
                address.port,
                ssl_context=ssl_context or ssl.create_default_context(),
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(address.host, address.port)
    except ssl.SSLError as exc:
        verify = getattr(exc, "verify_message", None)
        why = f"certificate verify failed: {verify}" if verify else exc.reason or exc
        raise ConnectError(f"TLS handshake with {address} failed: {why}") from None
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        raise ConnectError(f"{address} closed the connection during the TLS handshake") from None
    except OSError as exc:
        # anyio says "All connection attempts failed"; its cause says why.
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectError(f"cannot connect to {address}: {cause.strerror or cause}") from None
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass  # Keepalive is a safety net, not a requirement.
    return stream


class Connection:
    """The reader and writer of one stream, for one session."""

    __slots__ = (
        "_on_input",
        "_on_lost",
        "_session",
        "address",
        "drained",
        "ended",
        "error",
        "idle",
        "reads",
        "stream",
        "wake",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        session: Session,
        address: Address,
        *,
        on_input: Callable[[], None],
        on_lost: Callable[[Connection, ConnectionLostError], None],
    ) -> None:
        self.stream = stream
        self.address = address
        self._session = session
        self._on_input = on_input
        self._on_lost = on_lost
        self.wake = anyio.Event()
        # True while the writer waits for `wake`: a plain flag is cheaper to
        # test on every command than Event.is_set().
        self.idle = False
        # Set (and dropped) by the writer once it has written what was buffered.
        self.drained: anyio.Event | None = None
        self.ended = anyio.Event()
        self.error: ConnectionLostError | None = None
        #: Reads so far: the heartbeat watch compares it over time.
        self.reads = 0

    def kick(self) -> None:
        """Bytes were queued: wake the writer if it sleeps."""
        if self.idle:
            self.idle = False
            self.wake.set()

    def end(self, error: ConnectionLostError) -> None:
        """End the connection (idempotent): the tasks stop, waiters are released."""
        if self.error is not None:
            return
        self.error = error
        self.ended.set()
        if self.drained is not None:
            self.drained.set()
        self._on_lost(self, error)

    async def write_loop(self) -> None:
        out = self._session.out
        try:
            while True:
                if out:
                    data = bytes(out)
                    out.clear()
                    await self.stream.send(data)
                    if self.drained is not None:
                        self.drained.set()
                        self.drained = None
                else:
                    self.wake = anyio.Event()
                    self.idle = True
                    await self.wake.wait()
        except _BROKEN as exc:
            self.end(ConnectionLostError(f"connection lost: {exc!r}"))

    async def read_loop(self) -> None:
        receive = self.stream.receive
        feed = self._session.receive_data
        on_input = self._on_input
        try:
            while True:
                feed(await receive(_READ_SIZE))
                self.reads += 1
                on_input()
        except anyio.EndOfStream:
            error = ConnectionLostError(f"{self.address} closed the connection")
        except _BROKEN as exc:
            error = ConnectionLostError(f"connection lost: {exc!r}")
        except ProtocolError as exc:
            error = exc
        self.end(error)

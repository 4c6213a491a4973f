"""``ws://HOST:PORT/PATH``: the mqcore protocol over a WebSocket, as a byte stream for the client.

``wss://HOST:PORT/PATH`` is the same over TLS (a server's ``https://``
listener), verifying the server with the given context (default:
:func:`ssl.create_default_context`, so the system's CAs and the host name).

Theory of operation. :class:`WebSocketByteStream` is an
:class:`anyio.abc.ByteStream`, so the client's line protocol runs over it
unchanged: :meth:`~WebSocketByteStream.send` turns each command line into one
text frame (the server's WebSocket transport reads one command per frame), and
:meth:`~WebSocketByteStream.receive` returns each text frame the server sends
(one reply or delivery) followed by ``\\r\\n``, as the server writes them over
TCP. wsproto (sans-I/O) does the handshake and the framing; pings are
answered, a close frame ends the stream.

Hook (client helper): where the client opens its connection, for a ``ws://``
URL call ``await connect_ws(url)`` instead of ``anyio.connect_tcp(host, port)``.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

__all__ = ["WebSocketByteStream", "connect_ws"]

#: The longest handshake answer read.
MAX_HANDSHAKE = 64 << 10


class WebSocketByteStream(anyio.abc.ByteStream):
    """A byte stream of mqcore lines carried as WebSocket text frames."""

    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self._text: list[str] = []  # the message under way
        self._ready: list[bytes] = []
        self._closed = False
        self._pongs = self._take_events()  # frames that came with the handshake

    @property
    def extra_attributes(self) -> Any:
        return self.stream.extra_attributes

    async def send(self, item: bytes) -> None:
        lines = [line for line in item.split(b"\n") if line.strip()]
        await self.stream.send(
            b"".join(self.ws.send(Message(data=line.decode())) for line in lines)
        )

    async def send_eof(self) -> None:
        # The mqcore `quit`: the server answers what it owes, then closes.
        await self.stream.send(self.ws.send(Message(data="quit")))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._ready:
            if self._closed:
                raise anyio.EndOfStream
            try:
                data = await self.stream.receive(max_bytes)
            except anyio.EndOfStream:
                self._closed = True
                continue
            self.ws.receive_data(data)
            self._pongs += self._take_events()
            if self._pongs:
                pongs, self._pongs = self._pongs, b""
                await self.stream.send(pongs)
        out, self._ready = b"".join(self._ready), []
        return out

    def _take_events(self) -> bytes:
        pongs = b""
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    self._ready.append("".join(self._text).encode() + b"\r\n")
                    self._text = []
            elif isinstance(event, Ping):
                pongs += self.ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self._closed = True
        return pongs

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect_ws(url: str, ssl_context: ssl.SSLContext | None = None) -> WebSocketByteStream:
    """Open ``ws://`` or ``wss://HOST:PORT/PATH`` (path default ``/ws``).

    Raises :class:`OSError` if refused, :class:`ssl.SSLError` (an ``OSError``)
    if a ``wss://`` server's certificate does not verify with ``ssl_context``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r}: expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    stream: anyio.abc.ByteStream
    if secure:
        stream = await anyio.connect_tcp(
            parts.hostname,
            port,
            ssl_context=ssl_context or ssl.create_default_context(),
            tls_standard_compatible=False,
        )
    else:
        stream = await anyio.connect_tcp(parts.hostname, port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        target = (parts.path or "/ws") + (f"?{parts.query}" if parts.query else "")
        await stream.send(ws.send(Request(host=f"{parts.hostname}:{port}", target=target)))
        received = 0
        while True:
            data = await stream.receive()
            received += len(data)
            if received > MAX_HANDSHAKE:
                raise OSError(f"{url}: no WebSocket handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # Frames that came with the handshake are in wsproto already.
                    return WebSocketByteStream(stream, ws)
                if isinstance(event, RejectConnection):
                    raise OSError(f"{url}: WebSocket refused ({event.status_code})")
    except BaseException:
        await stream.aclose()
        raise

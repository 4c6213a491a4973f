"""Web-side test helpers: a server with an HTTP listener, raw HTTP requests, a WebSocket client.

The WebSocket client is wsproto over an anyio TCP stream, so tests see
frames and close codes exactly as the server sent them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from mqcore_tcp import TCPServer

from ..helpers import TIMEOUT


@dataclass
class WebServer:
    """A running server: its TCP port and its HTTP port."""

    server: TCPServer
    tcp_port: int
    http_port: int


@asynccontextmanager
async def web_server(**options: Any) -> AsyncIterator[WebServer]:
    """Run a server with a TCP and an HTTP listener (free ports) in this event loop."""
    server = TCPServer(listen=("mqcore://127.0.0.1:0", "http://127.0.0.1:0"), **options)
    await server.bind()
    # TODO(merge): a public TCPServer.listeners (hub helper); the HTTP one is second.
    http_port = server._listeners[1].port
    assert http_port is not None
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            with anyio.fail_after(TIMEOUT):
                yield WebServer(server, server.port, http_port)
        finally:
            server.shutdown()


@dataclass
class Response:
    """A parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> Response:
    """Parse one complete response (the connection was closed after it)."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for text in header_lines:
        name, _, value = text.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


async def read_all(stream: anyio.abc.ByteStream, limit: int = 64 << 20) -> bytes:
    """Everything until the server closes (at most ``limit`` bytes)."""
    data = bytearray()
    while len(data) < limit:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    return bytes(data)


async def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as is; return everything the server answers before closing."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        return await read_all(stream)


async def get(port: int, path: str) -> Response:
    """``GET path`` on a fresh connection (``Connection: close``)."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    return parse_response(await raw_request(port, request))


class WSClient:
    """A WebSocket client on wsproto: text in, text out, close codes seen."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[str] = []
        self.binary: list[bytes] = []
        self.close_code: int | None = None
        self._partial = ""

    @classmethod
    async def open(cls, port: int, path: str = "/ws") -> WSClient:
        client = cls(await anyio.connect_tcp("127.0.0.1", port))
        await client.stream.send(client.ws.send(Request(host="127.0.0.1", target=path)))
        while True:
            for event in await client._events():
                if isinstance(event, AcceptConnection):
                    return client
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"upgrade rejected: {event.status_code}")

    async def _events(self) -> list[Any]:
        data = await self.stream.receive()
        self.ws.receive_data(data)
        return list(self.ws.events())

    async def send_text(self, text: str) -> None:
        await self.stream.send(self.ws.send(Message(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send(self.ws.send(Message(data=data)))

    async def send_json(self, *objs: Any) -> None:
        """One frame per object."""
        await self.stream.send(b"".join(self.ws.send(Message(data=json.dumps(o))) for o in objs))

    async def pump(self) -> bool:
        """Read once; collect messages; False once the connection is closed."""
        try:
            events = await self._events()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            self.ws.receive_data(None)
            return False
        for event in events:
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.messages.append(self._partial)
                    self._partial = ""
            elif isinstance(event, BytesMessage):
                self.binary.append(bytes(event.data))
            elif isinstance(event, Ping):
                await self.stream.send(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self.stream.send(self.ws.send(event.response()))
                return False
        return True

    async def read(self) -> Any:
        """The next message, parsed as JSON."""
        while not self.messages:
            if not await self.pump():
                raise anyio.EndOfStream
        return json.loads(self.messages.pop(0))

    async def read_n(self, n: int) -> list[Any]:
        return [await self.read() for _ in range(n)]

    async def request(self, obj: Any) -> Any:
        await self.send_json(obj)
        return await self.read()

    async def until_closed(self) -> int | None:
        """Read (collecting messages) until the server closes; return its close code."""
        while await self.pump():
            pass
        return self.close_code

    async def aclose(self) -> None:
        await self.stream.aclose()

"""Test support for the client: an in-process server, a TCP proxy that can drop connections,
and :func:`flaky`, a client linked to a server through that proxy, which tests cut off
and bring back with ``async with link.away():``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

from mqcore_client import Client, ConnectionLostError, Received, Subscription, connect

from ..helpers import in_process

#: Every client test's bound: a hang fails fast instead of stalling the suite.
DEADLINE = 10
#: How a plain (reference) server answers ``hello``.
PLAIN_HELLO = b'{"success": false, "reason": "Malformed json message"}\r\n'


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[int]:
    """Run a TCPServer on 127.0.0.1, a free port, in this event loop; yield the port.

    See :func:`tests.helpers.in_process`, which this wraps.
    """
    async with in_process(**options) as server:
        yield server.port


class Proxy:
    """Forwards TCP connections to ``target_port``, and can break them on demand.

    ``drop()`` closes every connection it carries (the server keeps running);
    while ``paused`` it closes new connections at once, so a client cannot
    reconnect; while ``held`` it forwards nothing from the server to clients;
    changing ``target_port`` sends later connections to another server.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.paused = False
        self._flowing = anyio.Event()
        self._flowing.set()
        self._scopes: set[anyio.CancelScope] = set()

    def drop(self) -> None:
        """Close every connection now."""
        for scope in self._scopes:
            scope.cancel()

    def hold(self) -> None:
        """Stop forwarding what the server writes (until :meth:`release`)."""
        self._flowing = anyio.Event()

    def release(self) -> None:
        """Forward what the server writes again."""
        self._flowing.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int]) -> None:
        """Listen on a free port (reported through ``task_status``) until cancelled."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            task_status.started(listener.extra(SocketAttribute.local_port))
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if self.paused:
                return
            try:
                server = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return
            async with server, anyio.create_task_group() as tg:
                self._scopes.add(tg.cancel_scope)
                tg.start_soon(self._pump, client, server, tg.cancel_scope, False)
                tg.start_soon(self._pump, server, client, tg.cancel_scope, True)
            self._scopes.discard(tg.cancel_scope)

    async def _pump(
        self,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
        to_client: bool,
    ) -> None:
        try:
            async for chunk in source:
                if to_client:
                    await self._flowing.wait()
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        # One side is done: close both, as a broken link would.
        scope.cancel()


@asynccontextmanager
async def proxying(target_port: int) -> AsyncIterator[tuple[Proxy, int]]:
    """Run a :class:`Proxy` to ``target_port``; yield it and its port."""
    proxy = Proxy(target_port)
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(proxy.serve)
        yield proxy, port
        tg.cancel_scope.cancel()


@asynccontextmanager
async def scripted(answers: Sequence[bytes]) -> AsyncIterator[int]:
    """Run a fake server on 127.0.0.1, a free port; yield the port.

    It answers the n-th line a client writes with ``answers[n]``, written as
    is (so one answer can be several lines, or not the protocol at all), and
    reads on without answering once they run out: a hostile server in a few
    bytes.
    """

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            lines = BufferedByteReceiveStream(stream)
            try:
                for answer in answers:
                    await lines.receive_until(b"\n", 1 << 20)
                    await stream.send(answer)
                async for _ in stream:
                    pass  # Unanswered: the client waits for a reply that never comes.
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield listener.extra(SocketAttribute.local_port)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def unix_forwarder(path: str, target_port: int) -> AsyncIterator[None]:
    """Listen on the Unix socket ``path``, forwarding each connection to TCP ``target_port``.

    Lets the client's ``unix://`` transport be tested against the TCP server
    in-process, whatever the server's own listeners.
    """

    async def pump(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def handle(client: anyio.abc.ByteStream) -> None:
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", target_port) as server,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(pump, client, server)
            await pump(server, client)
            tg.cancel_scope.cancel()

    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield
        tg.cancel_scope.cancel()


# -- a client whose connection tests break ---------------------------------------------


async def take(sub: Subscription, n: int) -> list[Received]:
    """The next ``n`` messages of ``sub``."""
    return [await anext(sub) for _ in range(n)]


def reconnecting(port: int, **options: Any) -> AbstractAsyncContextManager[Client]:
    """A client that reconnects quickly, as the resume tests need."""
    return connect(
        port=port, reconnect=True, reconnect_delay=0.005, reconnect_max_delay=0.02, **options
    )


def connecting(port: int, **options: Any) -> AbstractAsyncContextManager[Client]:
    """A client that does not reconnect: :func:`reconnecting`'s counterpart."""
    return connect(port=port, **options)


class Events:
    """on_disconnect/on_reconnect callbacks that tests can await."""

    def __init__(self) -> None:
        self.lost = anyio.Event()
        self.back = anyio.Event()
        self.errors: list[ConnectionLostError] = []
        self.reconnects = 0

    def on_disconnect(self, error: ConnectionLostError) -> None:
        self.errors.append(error)
        self.lost.set()

    def on_reconnect(self) -> None:
        self.reconnects += 1
        self.back.set()

    def options(self) -> dict[str, Any]:
        return {"on_disconnect": self.on_disconnect, "on_reconnect": self.on_reconnect}


@dataclass
class Link:
    """A client connected through a :class:`Proxy`, and a producer connected directly.

    ``port`` is the server's own. The events are awaited once each: a test
    goes :meth:`away` once.
    """

    port: int
    proxy: Proxy
    events: Events
    client: Client
    producer: Client

    async def cut(self) -> None:
        """Drop the client's connection, refuse its reconnection; return once it knows."""
        self.proxy.paused = True
        self.proxy.drop()
        await self.events.lost.wait()

    async def restore(self) -> None:
        """Let the client reconnect; return once it has."""
        self.proxy.paused = False
        await self.events.back.wait()

    @asynccontextmanager
    async def away(self) -> AsyncIterator[None]:
        """The body runs while the client is cut off; leaving waits until it is back."""
        await self.cut()
        yield
        await self.restore()


@asynccontextmanager
async def flaky(
    server: dict[str, Any] | None = None, *, reconnect: bool = True, **client_options: Any
) -> AsyncIterator[Link]:
    """Run a server (``server`` its options), a proxy to it, a client through the proxy
    (reconnecting quickly unless ``reconnect`` is false) and a producer; yield them."""
    events = Events()
    options = {**events.options(), **client_options}
    async with (
        serving(**(server or {})) as port,
        proxying(port) as (proxy, proxy_port),
        (reconnecting if reconnect else connecting)(proxy_port, **options) as client,
        connect(port=port) as producer,
    ):
        yield Link(port, proxy, events, client, producer)

"""The TCP transport: anyio streams around a :class:`mqcore.Broker`."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from mqcore import DEFAULT_CACHE_SIZE, DEFAULT_MAX_LINE_BYTES, Broker, ConnectionId, Output

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "DEFAULT_PORT", "TCPServer", "serve"]

log = logging.getLogger("mqcore_tcp")

DEFAULT_PORT: Final = 7000
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20
#: How much one receive() may return: large reads mean fewer, larger batches.
READ_SIZE: Final = 256 << 10
#: How long a graceful stop waits for owed bytes to be written.
SHUTDOWN_GRACE: Final = 5.0


class _Client:
    """One connection's write side: what is owed to it, and how to wake its writer."""

    __slots__ = ("cid", "closing", "peer", "queue", "queued", "scope", "stream", "wake")

    def __init__(self, cid: ConnectionId, stream: anyio.abc.SocketStream, peer: str) -> None:
        self.cid = cid
        self.stream = stream
        self.peer = peer
        self.queue: list[bytes] = []
        self.queued = 0
        self.wake = anyio.Event()
        self.closing = False
        self.scope: anyio.CancelScope | None = None


class TCPServer:
    """Serves one :class:`mqcore.Broker` over TCP.

    Each connection gets a reader task, which feeds the broker whatever
    arrives, and a writer task, which sends everything owed to it in one
    write per wake-up: replies and deliveries queued during one event-loop
    turn go out together. A connection whose unsent bytes exceed
    ``max_queued_bytes`` (a subscriber that does not read) is disconnected.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        broker: Broker | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_queued_bytes = max_queued_bytes
        self.broker = broker or Broker(
            cache_size=cache_size,
            max_line_bytes=max_line_bytes,
            choose=random.Random().randrange,
            # An in-memory broker numbers from 0 at every start: a new epoch.
            epoch=uuid.uuid4().hex,
        )
        self._clients: dict[ConnectionId, _Client] = {}
        self._stop = anyio.Event()
        self._idle = anyio.Event()
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    async def bind(self) -> anyio.abc.Listener[anyio.abc.SocketStream]:
        """Open the listening socket (and learn :attr:`port`); :meth:`serve` does it if needed.

        Raises :class:`OSError` if the address cannot be bound.
        """
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self._listener = listener
        self.port = listener.listeners[0].extra(SocketAttribute.local_port)
        log.info("mqcore listening on %s:%d", self.host, self.port)
        return listener

    def shutdown(self) -> None:
        """Ask :meth:`serve` to stop accepting, flush what is owed, and return."""
        self._stop.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown`; report the bound port through ``task_status``."""
        listener = self._listener or await self.bind()
        async with anyio.create_task_group() as tg:
            accept_scope = anyio.CancelScope()

            async def accept() -> None:
                with accept_scope:
                    async with listener:
                        await listener.serve(self._handle, task_group=tg)

            tg.start_soon(accept)
            task_status.started(self.port)
            await self._stop.wait()
            accept_scope.cancel()
            log.info("stopping: flushing %d connection(s)", len(self._clients))
            for client in self._clients.values():
                client.closing = True
                client.wake.set()
            self._idle = anyio.Event()
            with anyio.move_on_after(SHUTDOWN_GRACE):
                if self._clients:
                    await self._idle.wait()
            tg.cancel_scope.cancel()
        log.info("stopped")

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        cid = self.broker.open_connection()
        address = stream.extra(SocketAttribute.remote_address)
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        client = _Client(cid, stream, peer)
        self._clients[cid] = client
        log.debug("connection %d from %s", cid, peer)
        try:
            async with anyio.create_task_group() as tg:
                client.scope = tg.cancel_scope
                tg.start_soon(self._write_loop, client)
                await self._read_loop(client)
                # The peer is done sending: it gets no new deliveries (a `one`
                # message must not go to a peer that may be gone), but what it
                # is already owed is flushed before the connection closes.
                self.broker.connection_lost(cid)
                client.closing = True
                client.wake.set()
        finally:
            del self._clients[cid]
            self.broker.connection_lost(cid)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            log.debug("connection %d from %s closed", cid, peer)
            if not self._clients:
                self._idle.set()

    async def _read_loop(self, client: _Client) -> None:
        broker = self.broker
        cid = client.cid
        receive = client.stream.receive
        while True:
            try:
                data = await receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            broker.receive_data(cid, data)
            self._dispatch(broker.take_output())

    async def _write_loop(self, client: _Client) -> None:
        try:
            while True:
                if client.queue:
                    data = b"".join(client.queue)
                    client.queue = []
                    client.queued = 0
                    await client.stream.send(data)
                elif client.closing:
                    break
                else:
                    client.wake = anyio.Event()
                    await client.wake.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # Forget it now, not when its tasks finish: nothing more may be routed to it.
            self.broker.connection_lost(client.cid)
        assert client.scope is not None
        client.scope.cancel()

    def _dispatch(self, output: Output) -> None:
        clients = self._clients
        for cid, chunks in output.writes.items():
            client = clients.get(cid)
            if client is None:
                continue
            client.queue += chunks
            client.queued += sum(map(len, chunks))
            if client.queued > self.max_queued_bytes:
                self._overflow(client)
            else:
                client.wake.set()
        for cid in output.close:
            client = clients.get(cid)
            if client is not None:
                client.closing = True
                client.wake.set()

    def _overflow(self, client: _Client) -> None:
        log.warning(
            "connection %d from %s: disconnected, %d bytes queued exceed the limit of %d "
            "(it is not reading)",
            client.cid,
            client.peer,
            client.queued,
            self.max_queued_bytes,
        )
        client.queue = []
        client.queued = 0
        self.broker.connection_lost(client.cid)
        if client.scope is not None:
            client.scope.cancel()


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    cache_size: int = DEFAULT_CACHE_SIZE,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an in-memory broker over TCP until cancelled.

    Use ``port = await task_group.start(serve, ...)`` (with ``port=0`` for a
    free port) to learn the bound port. For a graceful stop, use
    :class:`TCPServer` and its :meth:`TCPServer.shutdown`.
    """
    server = TCPServer(
        host=host,
        port=port,
        cache_size=cache_size,
        max_line_bytes=max_line_bytes,
        max_queued_bytes=max_queued_bytes,
    )
    await server.serve(task_status=task_status)

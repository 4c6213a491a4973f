"""The TCP transport around a :class:`mqcore.Broker`: anyio, with an asyncio fast path."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from mqcore import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPICS,
    Broker,
    ConnectionId,
    Output,
    Record,
    Store,
    StoreError,
)

from . import _aio
from ._commit import CommitPipeline

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

    __slots__ = (
        "cid",
        "closing",
        "confirm",
        "peer",
        "queue",
        "queued",
        "scope",
        "stream",
        "wake",
    )

    def __init__(self, cid: ConnectionId, stream: anyio.abc.SocketStream, peer: str) -> None:
        self.cid = cid
        self.stream = stream
        self.peer = peer
        self.queue: list[bytes] = []
        self.queued = 0
        self.wake = anyio.Event()
        self.closing = False
        self.scope: anyio.CancelScope | None = None
        # Records to store once the bytes now in `queue` are written (durable only).
        self.confirm: list[Record] = []

    def push(self, chunks: list[bytes]) -> int:
        """Queue ``chunks`` for the writer task; return the bytes now unsent."""
        self.queue += chunks
        self.queued += sum(map(len, chunks))
        self.wake.set()
        return self.queued

    def owes(self) -> bool:
        """Whether bytes pushed to it still wait to be sent."""
        return bool(self.queue)

    def close_when_flushed(self) -> None:
        """Close once everything queued so far is sent."""
        self.closing = True
        self.wake.set()

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        if self.scope is not None:
            self.scope.cancel()


class TCPServer:
    """Serves one :class:`mqcore.Broker` over TCP.

    Under asyncio each connection is an asyncio Protocol (see ``_aio``):
    whatever arrives is fed to the broker at once, and the broker's output is
    applied once per event-loop turn, one write per connection. Under other
    backends (trio) each connection gets a reader task, which feeds the
    broker, and a writer task, which sends everything owed to it in one
    write per wake-up. Either way, replies and deliveries produced during
    one event-loop turn go out together. A connection whose unsent bytes exceed
    ``max_queued_bytes`` (a subscriber that does not read) is disconnected.

    With a ``store`` (e.g. :class:`mqcore_tcp.SQLiteStore`) the broker is
    durable: it is restored from the store, answers ``hello`` with the
    store's epoch, and every output passes through a
    :class:`~mqcore_tcp._commit.CommitPipeline`, so nothing is written to a
    connection before the records it depends on are stored. The caller opens
    and closes the store.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        broker: Broker | None = None,
        store: Store | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.max_queued_bytes = max_queued_bytes
        self._committer: CommitPipeline | None = None
        if broker is not None and store is not None:
            raise ValueError("give a store or a broker, not both")
        if broker is None:
            snapshot = None if store is None else store.load()
            broker = Broker(
                cache_size=cache_size,
                max_line_bytes=max_line_bytes,
                max_topics=max_topics,
                max_cache_bytes=max_cache_bytes,
                choose=random.Random().randrange,
                durable=snapshot is not None,
                # In memory, numbering starts from 0 at every start: a new epoch.
                epoch=uuid.uuid4().hex if snapshot is None else snapshot.epoch,
            )
            if store is not None and snapshot is not None:
                broker.restore(snapshot.topics)
                # Restoring may trim caches (a smaller cache size or byte
                # budget than last run): store that first.
                records = broker.take_output().records
                if records:
                    store.apply(records)
        if store is not None:
            self._committer = CommitPipeline(store, self._dispatch)
        self.broker = broker
        self._clients: dict[ConnectionId, _Client | _aio.Connection] = {}
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
        """Serve until :meth:`shutdown`; report the bound port through ``task_status``.

        With a store, raises :class:`mqcore.StoreError` (after closing every
        connection) if the store fails: nothing more can be acknowledged.
        """
        listener = self._listener or await self.bind()
        committer = self._committer
        async with anyio.create_task_group() as tg:
            if committer is not None:
                tg.start_soon(self._commit, committer)
            accept_scope = anyio.CancelScope()

            # Under asyncio, connections are Protocols (see _aio): measured
            # several times cheaper per read than anyio's streams. Elsewhere
            # (trio), a reader and a writer task per connection.
            loop = _aio.running_loop()

            async def accept() -> None:
                with accept_scope:
                    async with listener:
                        if loop is not None:
                            await _aio.accept(self, loop, listener)
                        else:
                            await listener.serve(self._handle, task_group=tg)

            tg.start_soon(accept)
            task_status.started(self.port)
            await self._stop.wait()
            accept_scope.cancel()
            if committer is not None:
                # Store and release what is queued, so it can be flushed below.
                with anyio.move_on_after(SHUTDOWN_GRACE):
                    await committer.drain()
            log.info("stopping: flushing %d connection(s)", len(self._clients))
            for client in list(self._clients.values()):
                client.close_when_flushed()
            self._idle = anyio.Event()
            with anyio.move_on_after(SHUTDOWN_GRACE):
                if self._clients:
                    await self._idle.wait()
            for client in list(self._clients.values()):
                client.abort()
            tg.cancel_scope.cancel()
        log.info("stopped")
        if committer is not None and committer.error is not None:
            raise committer.error

    async def _commit(self, committer: CommitPipeline) -> None:
        try:
            await committer.run()
        except StoreError as exc:
            log.error("%s; stopping, as nothing more can be acknowledged", exc)
            self.shutdown()

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
                # is already owed is flushed before the connection closes. The
                # close goes through dispatch like a `quit`, so with a store it
                # waits behind replies still held for a commit.
                self.broker.connection_lost(cid)
                self._dispatch(Output(close=[cid]))
        finally:
            del self._clients[cid]
            self.broker.connection_lost(cid)
            if client.confirm and self._committer is not None:
                self._committer.store_later(client.confirm)
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
            if self._committer is not None and self._committer.backlogged:
                # The store is behind: stop reading, so TCP slows the senders.
                await self._committer.wait_for_room()

    async def _write_loop(self, client: _Client) -> None:
        try:
            while True:
                if client.queue:
                    data = b"".join(client.queue)
                    client.queue = []
                    client.queued = 0
                    confirm = client.confirm
                    if confirm:
                        client.confirm = []
                        try:
                            await client.stream.send(data)
                        finally:
                            self._written(confirm)
                    else:
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
        if self._committer is not None and self._committer.hold(output):
            return  # Applied by the committer once its records are stored.
        clients = self._clients
        for cid, chunks in output.writes.items():
            client = clients.get(cid)
            if client is not None and client.push(chunks) > self.max_queued_bytes:
                self._overflow(client)
        for cid in output.close:
            client = clients.get(cid)
            if client is not None:
                client.close_when_flushed()
        if output.after_write:
            for cid, records in output.after_write.items():
                client = clients.get(cid)
                if client is not None and client.owes():
                    client.confirm += records
                else:
                    self._written(records)

    def _written(self, records: list[Record]) -> None:
        """Store ``records`` now that the bytes they wait for are written (or never will be)."""
        if self._committer is not None:
            self._committer.store_later(records)

    def _overflow(self, client: _Client | _aio.Connection) -> None:
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
        self._written(client.confirm)
        client.confirm = []
        self.broker.connection_lost(client.cid)
        client.abort()


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    cache_size: int = DEFAULT_CACHE_SIZE,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    max_topics: int = DEFAULT_MAX_TOPICS,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    store: Store | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a broker over TCP until cancelled: in memory, or durable in ``store``.

    Use ``port = await task_group.start(serve, ...)`` (with ``port=0`` for a
    free port) to learn the bound port. For a graceful stop, use
    :class:`TCPServer` and its :meth:`TCPServer.shutdown`. The caller opens
    and closes ``store`` (e.g. ``mqcore_tcp.SQLiteStore.in_directory(path)``).
    """
    server = TCPServer(
        host=host,
        port=port,
        cache_size=cache_size,
        max_line_bytes=max_line_bytes,
        max_queued_bytes=max_queued_bytes,
        max_topics=max_topics,
        max_cache_bytes=max_cache_bytes,
        store=store,
    )
    await server.serve(task_status=task_status)

"""The hub: one broker, its commit pipeline and the live connections, whatever their transport.

Theory of operation. A transport registers each accepted connection
(:meth:`Hub.connect`, with an object satisfying
:class:`~mqcore_tcp._connection.Connection`), feeds what it reads
(:meth:`Hub.receive`, then :meth:`Hub.flush` once per batch of reads), and
reports the end of input (:meth:`Hub.receive_eof`), bytes handed to the
kernel (:meth:`Hub.sent`) and the end of the connection
(:meth:`Hub.disconnected`). The hub takes the broker's output and applies
it, through the commit pipeline when the broker is durable: each
connection's chunks are written, then closes are started. The hub imports no
transport.

Memory bound. Before the hub writes chunks to a connection it sums their
lengths (the chunks are bytes objects shared between subscribers: summing
is free, joining is not). Within ``max_queued_bytes`` they are written at
once, as one write. Past it (a replay of a large cache, repeated) they are
written in pieces of at most ``max_queued_bytes``, checking after each
piece; once more than ``max_queued_bytes`` wait unsent the connection is
dropped as a slow consumer, so no connection ever makes the server build or
hold much more than twice that for it.

Durability of consumption. A durable broker lists, in
:attr:`mqcore.Output.after_write`, records saying that ``one`` messages were
consumed; they may be stored only once the bytes carrying those messages
left the server. The hub counts every byte it writes to a connection and
notes, with each such list, how many bytes had been written when it came;
the list is stored once the connection reports that many bytes sent
(written minus :attr:`Connection.queued`). When a connection is dropped or
lost with those bytes unsent, the list is discarded: the store still holds
those messages, and they are delivered again after a restart.

Time for acknowledged delivery. The broker has no clock: the hub gives it
the monotonic time before the first read of each batch it feeds (a
delivery's ack wait counts from it; a batch is handled within one loop
turn) and when a connection ends, and :meth:`Hub.run`'s timer task sleeps
until :meth:`mqcore.Broker.next_deadline`, then advances the broker and
applies its output. A deadline earlier than the one the timer sleeps for
(a nack with a short delay) wakes it: :meth:`Hub.flush` checks, once per batch.

Exposure. Past ``max_connections`` a new connection is answered
``Too many connections`` and closed (the others are not affected; one
warning per episode). Timeouts, heartbeats and credential checks are the
:class:`~mqcore_tcp._watch.Watch`'s, which :meth:`Hub.run` runs.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio

from mqcore import Broker, ConnectionId, Output, Reason, Record, Store, StoreError, error_reply

from ._auth import AuthFile
from ._commit import Committer
from ._commit_strategies import committer_for
from ._commit_timing import CommitTiming, TimedStore
from ._config import ServerConfig, default_max_connections
from ._connection import Connection
from ._link import Link, new_broker
from ._watch import Watch

__all__ = ["SHUTDOWN_GRACE", "Hub"]

log = logging.getLogger("mqcore_tcp")

#: How long a graceful stop waits for the store, then for owed bytes to be written.
SHUTDOWN_GRACE: Final = 5.0
#: The longest the ack timer sleeps (it is woken sooner when needed).
TICK: Final = 1.0

_TOO_MANY_CONNECTIONS: Final = error_reply(Reason.TOO_MANY_CONNECTIONS)
#: How every failure reply starts (mqcore.error_reply): a refused command.
_REFUSAL: Final = b'{"success": false, "reason": '


class Hub:
    """Owns the broker, the commit pipeline and the connections of every transport.

    With a ``store`` the broker is restored from it and made durable, and
    every output passes through a :class:`~mqcore_tcp._commit.Committer`.
    Give a ``store`` or a ready ``broker``, not both. The caller opens and
    closes the store.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        broker: Broker | None = None,
        store: Store | None = None,
        auth: AuthFile | None = None,
    ) -> None:
        if broker is not None and store is not None:
            raise ValueError("give a store or a broker, not both")
        self.max_queued_bytes: Final = config.max_queued_bytes
        self.max_connections: Final = config.max_connections or default_max_connections()
        self.broker: Final = (
            broker if broker is not None else new_broker(config, store, auth is not None)
        )
        #: Commit durations, for /metrics (durable only).
        self.commit_timing = CommitTiming()
        self._committer: Committer | None = (
            None
            if store is None
            else committer_for(
                TimedStore(store, self.commit_timing), self._apply, self._storage_changed
            )
        )
        #: A node of a cluster (its backend is Redis, not a store).
        self.clustered: Final = config.cluster is not None
        if config.cluster is not None:
            # Cluster mode: Redis in place of a store (redis is imported only then).
            from .cluster import node_for

            self._committer = node_for(config, self.broker, self._apply, self.flush)
        self._links: dict[ConnectionId, Link] = {}
        #: Every live connection, by id (the Watch's view).
        self.links: Final = self._links
        self._idle = anyio.Event()
        # The ack timer's wake-up: when it is due, and the event that wakes it sooner.
        self._wake_at = 0.0
        self._wake = anyio.Event()
        # Whether the broker's clock must be advanced before the next read is fed.
        self._clock_stale = True
        self.watch: Final = Watch(
            self,
            line_timeout=config.line_timeout,
            auth_timeout=config.auth_timeout,
            auth=auth,
        )
        self._crowded = False
        #: Connections dropped for not reading (a plain counter, read at scrape time).
        self.slow_consumer_disconnects = 0
        #: Set once close() starts: /healthz answers 503 from then on.
        self.closing = False

    # -- the transports' side ---------------------------------------------------------

    @property
    def durable(self) -> bool:
        """Whether outputs wait for a store (then transports report every drain: :meth:`sent`)."""
        return self._committer is not None

    def connect(self, conn: Connection, peer: str, identity: str | None = None) -> ConnectionId:
        """Register a new connection (``peer`` names it in logs); return its id.

        ``identity`` is the subject CN of its verified client certificate, if
        any. Past ``max_connections`` it is answered ``Too many connections``
        and closed once that is written.
        """
        cid = self.broker.open_connection()
        link = self._links[cid] = Link(conn, peer, self.watch.now)
        log.debug("connection %d from %s", cid, peer)
        if len(self._links) > self.max_connections:
            if not self._crowded:
                self._crowded = True
                log.warning(
                    "%d connections: refusing new ones (--max-connections)", self.max_connections
                )
            self.write(cid, link, [_TOO_MANY_CONNECTIONS])
            self.broker.receive_eof(cid)
            self.flush()
        elif identity is not None:
            self.watch.identify(cid, identity)
        return cid

    def receive(self, cid: ConnectionId, data: bytes) -> None:
        """Feed bytes read from ``cid``; call :meth:`flush` after a batch of reads."""
        link = self._links.get(cid)
        if link is not None:
            link.heard = self.watch.now
            if link.partial_since >= 0 and b"\n" in data:
                link.partial_since = -1  # that line ended (the Watch looks again)
        broker = self.broker
        if self._clock_stale:
            # Once per batch of reads, not per read: the reads of one batch
            # are handled within one loop turn, microseconds apart.
            self._clock_stale = False
            broker.advance(time.monotonic())
        broker.receive_data(cid, data)

    def flush(self) -> None:
        """Apply (through the commit pipeline, if durable) everything the broker produced."""
        broker = self.broker
        self._clock_stale = True
        output = broker.take_output()
        if output.hellos:
            self.watch.hellos(output.hellos)
        if output.writes and log.isEnabledFor(logging.DEBUG):
            self._log_refusals(output)
        self._dispatch(output)
        deadline = broker.next_deadline()
        if deadline is not None and deadline < self._wake_at:
            self._wake.set()

    def _log_refusals(self, output: Output) -> None:
        """At debug level only: each refused command's reason and connection."""
        for cid, chunks in output.writes.items():
            for chunk in chunks:
                if chunk.startswith(_REFUSAL):
                    link = self._links.get(cid)
                    peer = "?" if link is None else link.peer
                    reason = chunk[len(_REFUSAL) : -3].decode("utf-8", "replace")
                    log.debug("connection %d from %s: refused: %s", cid, peer, reason)

    def reload_auth(self, auth: AuthFile) -> None:
        """Apply a reloaded auth file to new and existing connections (SIGHUP)."""
        self.watch.reload(auth)

    def receive_eof(self, cid: ConnectionId) -> None:
        """``cid`` will send nothing more: it gets what it is owed, then is closed.

        It gets no new deliveries (a ``one`` message must not go to a peer that
        may be gone). The close follows its replies through the commit
        pipeline like a ``quit``.
        """
        self.broker.receive_eof(cid)
        self.flush()

    def sent(self, cid: ConnectionId) -> None:
        """Some bytes written to ``cid`` were handed to the kernel (its ``queued`` went down)."""
        link = self._links.get(cid)
        if link is not None and link.confirms:
            self._confirm(link)

    def disconnected(self, cid: ConnectionId) -> None:
        """``cid`` is closed, however it ended; idempotent."""
        link = self._links.pop(cid, None)
        if link is None:
            return
        self.broker.advance(time.monotonic())
        self._forget(cid, link)
        # Its pending jobs went to other consumers.
        self.flush()
        log.debug("connection %d from %s closed", cid, link.peer)
        if self._crowded and len(self._links) < self.max_connections:
            self._crowded = False
            log.warning("below %d connections: accepting new ones again", self.max_connections)

    def backlogged(self, cid: ConnectionId) -> bool:
        """True while the transport should stop reading ``cid`` (the store is behind)."""
        committer = self._committer
        return committer is not None and committer.backlogged(cid)

    async def wait_for_room(self, cid: ConnectionId) -> None:
        """Wait until the store has caught up enough to read ``cid`` again."""
        if self._committer is not None:
            await self._committer.wait_for_room(cid)

    # -- the server's side ------------------------------------------------------------

    async def run(self, on_store_failure: Callable[[], None]) -> None:
        """Run the ack timer, the Watch, and the commit pipeline (if durable), until cancelled.

        A store failure is logged, then ``on_store_failure`` is called.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._ack_timer)
            tg.start_soon(self.watch.run)
            if self._committer is None:
                return
            try:
                await self._committer.run()
            except StoreError as exc:
                log.error("%s; stopping, as nothing more can be acknowledged", exc)
                on_store_failure()
            tg.cancel_scope.cancel()

    async def _ack_timer(self) -> None:
        """Advance the broker's clock at its next deadline (at most every TICK)."""
        broker = self.broker
        while True:
            now = time.monotonic()
            deadline = broker.next_deadline()
            if deadline is not None and deadline <= now:
                broker.advance(now)
                self.flush()
                continue
            pause = TICK if deadline is None else min(TICK, deadline - now)
            self._wake_at = now + pause
            self._wake = anyio.Event()
            with anyio.move_on_after(pause):
                await self._wake.wait()

    def _storage_changed(self, available: bool) -> None:
        # Sends are refused ("Storage unavailable") while the store cannot
        # take them; `hello` reports it.
        self.broker.set_storage_available(available)

    @property
    def storage_available(self) -> bool:
        """False while a durable store cannot write (sends are refused meanwhile)."""
        return self._committer is None or self._committer.available

    @property
    def store_error(self) -> StoreError | None:
        """Why the store failed, if it has."""
        return None if self._committer is None else self._committer.error

    def connections(self) -> list[tuple[ConnectionId, str, float, Connection]]:
        """Each live connection: its id, peer, connect time (``time.time()``) and itself."""
        return [(cid, link.peer, link.since, link.conn) for cid, link in self._links.items()]

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Store what is queued, flush and close every connection; abort the rest after grace."""
        self.closing = True
        if self._committer is not None:
            with anyio.move_on_after(grace):
                await self._committer.drain()
        log.info("stopping: flushing %d connection(s)", len(self._links))
        for link in list(self._links.values()):
            link.conn.close_when_flushed()
        self._idle = anyio.Event()
        with anyio.move_on_after(grace):
            if self._links:
                await self._idle.wait()
        self.abort_all()

    def abort_all(self) -> None:
        """Close every connection now, dropping anything unsent."""
        for cid, link in list(self._links.items()):
            self._drop(cid, link)

    # -- applying output ----------------------------------------------------------------

    def _dispatch(self, output: Output) -> None:
        if self._committer is not None:
            self._committer.submit(output)  # it calls _apply once the records are stored
        elif output:
            self._apply(output)

    def _apply(self, output: Output) -> None:
        links = self._links
        cap = self.max_queued_bytes
        for cid, chunks in output.writes.items():
            link = links.get(cid)
            if link is None:
                continue
            size = sum(map(len, chunks))
            if size <= cap:
                link.written += size
                if link.conn.write(chunks) > cap:
                    self._overflow(cid, link)
            else:
                self._write_in_pieces(cid, link, chunks)
        for cid in output.close:
            link = links.get(cid)
            if link is not None:
                link.conn.close_when_flushed()
        if output.after_write:
            for cid, records in output.after_write.items():
                link = links.get(cid)
                if link is None:
                    continue  # its bytes never left: the store keeps the messages
                confirms = link.confirms
                if confirms is None:
                    confirms = link.confirms = deque()
                confirms.append((link.written, records))
                self._confirm(link)

    def _write_in_pieces(self, cid: ConnectionId, link: Link, chunks: list[bytes]) -> None:
        """Write more than ``max_queued_bytes`` without ever joining more than that."""
        cap = self.max_queued_bytes
        piece: list[bytes] = []
        size = 0
        for chunk in chunks:
            if size and size + len(chunk) > cap:
                link.written += size
                if link.conn.write(piece) > cap:
                    self._overflow(cid, link)
                    return
                piece, size = [], 0
            piece.append(chunk)
            size += len(chunk)
        link.written += size
        if link.conn.write(piece) > cap:
            self._overflow(cid, link)

    def _confirm(self, link: Link) -> None:
        """Store the after-write records whose bytes have left."""
        confirms = link.confirms
        if not confirms:
            return
        sent = link.written - link.conn.queued
        ready: list[Record] = []
        while confirms and confirms[0][0] <= sent:
            ready += confirms.popleft()[1]
        if ready and self._committer is not None:
            self._committer.store_later(ready)

    def write(self, cid: ConnectionId, link: Link, chunks: list[bytes]) -> None:
        """Write ``chunks`` to ``cid`` outside any output (refusals, heartbeats)."""
        link.written += sum(map(len, chunks))
        if link.conn.write(chunks) > self.max_queued_bytes:
            self._overflow(cid, link)

    def drop(self, cid: ConnectionId, link: Link, why: str) -> None:
        """Close ``cid`` now (a timeout), saying why in the log."""
        log.info("connection %d from %s: closed: %s", cid, link.peer, why)
        self._drop(cid, link)

    def _overflow(self, cid: ConnectionId, link: Link) -> None:
        self.slow_consumer_disconnects += 1
        log.warning(
            "connection %d from %s: disconnected, %d bytes queued exceed the limit of %d "
            "(it is not reading)",
            cid,
            link.peer,
            link.conn.queued,
            self.max_queued_bytes,
        )
        self._drop(cid, link)

    def _drop(self, cid: ConnectionId, link: Link) -> None:
        if self._links.pop(cid, None) is None:
            return
        self._forget(cid, link)
        link.conn.abort()

    def _forget(self, cid: ConnectionId, link: Link) -> None:
        self.broker.connection_lost(cid)
        if link.confirms:
            self._confirm(link)  # what did leave
            if link.confirms:
                log.debug(
                    "connection %d: %d consumption record(s) not stored, their bytes never left",
                    cid,
                    sum(len(records) for _, records in link.confirms),
                )
            link.confirms.clear()
        if not self._links:
            self._idle.set()

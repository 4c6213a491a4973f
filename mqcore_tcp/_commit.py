"""Group commit: store the broker's records before releasing the bytes that depend on them.

The hub hands every :class:`mqcore.Output` of a durable broker to a
committer's :meth:`~Committer.submit`. The committer stores the output's
records and then calls ``release(output)`` (the hub applying it to the
connections) exactly once per output, in the order submitted, and never
before the records of that output and of every earlier one are stored. So
no reply or delivery is written before its record is stored, and every
connection sees the broker's order. ``release`` never submits again: the
pipeline is not re-entrant.

Storing may wait for more outputs (the inline strategy holds outputs while
reads keep arriving, so that one commit carries several loop turns): that
moves acknowledgements later under load, never earlier than their records
are stored.

Records that wait for bytes to be *written* (the consumption of ``one``
messages, :attr:`mqcore.Output.after_write`) come back through
:meth:`~Committer.store_later`: nothing waits for them, so they ride along
with the next commit.

The two strategies, inline and threaded, are :mod:`mqcore_tcp._commit_strategies`'.

Storage unavailable. A store that cannot write *for now* (disk full, file
made read-only) raises :class:`mqcore.StoreUnavailable` and stores nothing
of the batch. The committer then keeps the batch's outputs *held* (nothing
in them is acknowledged or delivered), tells the hub (``on_storage(False)``:
the broker answers every new ``send`` with ``Storage unavailable``, so no new
work needs the store), and retries the held records with a growing delay
(:data:`RETRY_DELAYS`). While it waits, an output without records is
released at once, but for its writes to connections that have output held
(a connection sees its replies in order): those are held behind. When
a retry succeeds the held outputs are released in order and
``on_storage(True)`` lifts the refusal. Held outputs count toward the
bound on waiting outputs, so readers pause rather than hold without limit.
Any other :class:`mqcore.StoreError` is fatal: :attr:`Committer.error`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Final

import anyio
import anyio.to_thread

from mqcore import ConnectionId, Output, Record, Store, StoreError, StoreUnavailable

__all__ = [
    "MAX_QUEUED_OUTPUTS",
    "RETRY_DELAYS",
    "Committer",
    "Release",
    "StorageCallback",
    "noop_storage",
]

#: Outputs that may wait for a commit before readers stop reading. Each comes
#: from one read (at most the server's read size), so this bounds the memory
#: held while the disk is slow; TCP then pushes back on the senders.
MAX_QUEUED_OUTPUTS: Final = 256

#: Seconds between retries of a store that is unavailable: growing, then the last, repeated.
RETRY_DELAYS: Final = (0.1, 0.25, 0.5, 1.0, 2.0)

Release = Callable[[Output], None]
#: Told False when the store becomes unavailable, True when it is back.
StorageCallback = Callable[[bool], None]

log = logging.getLogger("mqcore_tcp")


def noop_storage(available: bool) -> None:
    pass


class Committer(ABC):
    """What both strategies share: the store, the release callback, failure."""

    def __init__(
        self, store: Store, release: Release, on_storage: StorageCallback = noop_storage
    ) -> None:
        self._store = store
        self._release = release
        self._on_storage = on_storage
        self._lock = threading.Lock()
        # Records to store with the next commit (consumed `one` messages).
        self._later: list[Record] = []
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        #: Why the store failed, once it has; nothing is released after that.
        self.error: StoreError | None = None
        #: False while the store is unavailable (outputs are held, sends refused).
        self.available = True
        # While unavailable: outputs waiting for the store, in order, and the
        # connections they write to (later output for those waits behind them).
        self._held: deque[Output] = deque()
        self._held_cids: set[ConnectionId] = set()
        self._retry = anyio.Event()

    @abstractmethod
    def submit(self, output: Output) -> None:
        """Release ``output`` once its records (and every earlier output's) are stored."""

    def store_later(self, records: list[Record]) -> None:
        """Store ``records`` with the next commit; nothing waits for them."""
        if self.error is None and records:
            with self._lock:
                self._later += records
            self._wake()

    def backlogged(self, cid: ConnectionId) -> bool:
        """True while ``cid``'s reader should wait (:meth:`wait_for_room`) before reading more.

        Too many outputs wait for a commit; or, while the store is
        unavailable, the held outputs reached their bound and ``cid`` is one
        of the connections they write to (the others, whose replies are not
        held, go on being served).
        """
        if self.error is not None:
            return False
        return self._queue_full or (self._held_full and cid in self._held_cids)

    @property
    def _queue_full(self) -> bool:
        """Whether outputs waiting for a commit (the store being slow) reached their bound."""
        return False

    async def wait_for_room(self, cid: ConnectionId) -> None:
        """Wait until :meth:`backlogged` is False for ``cid``."""
        while self.backlogged(cid):
            await self._room.wait()

    async def drain(self) -> None:
        """Wait until every output submitted so far is stored and released (or the store failed)."""
        while not self._idle.is_set():
            await self._idle.wait()

    @abstractmethod
    async def run(self) -> None:
        """Commit until cancelled; on a store failure set :attr:`error` and raise it."""

    @abstractmethod
    def _wake(self) -> None:
        """Have records waiting in ``_later`` stored soon."""

    def _take_later(self) -> list[Record]:
        with self._lock:
            later, self._later = self._later, []
        return later

    def _fail(self, exc: StoreError) -> None:
        self.error = exc
        with self._lock:
            self._later = []
        self._held.clear()
        self._held_cids.clear()
        self._retry.set()
        self._room.set()
        self._idle.set()

    # -- while the store is unavailable ------------------------------------------------

    @property
    def _held_full(self) -> bool:
        return len(self._held) >= MAX_QUEUED_OUTPUTS

    def _become_unavailable(self, exc: StoreUnavailable, outputs: list[Output]) -> None:
        """The store refused ``outputs``' records for now: hold them and retry."""
        if self.available:
            self.available = False
            log.warning(
                "storage unavailable (%s): sends are refused until it recovers; retrying", exc
            )
            self._on_storage(False)
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._retry.set()
        for output in outputs:
            self._hold(output)

    def _hold(self, output: Output) -> None:
        self._held.append(output)
        self._held_cids.update(output.writes)
        self._held_cids.update(output.close)

    def _submit_while_unavailable(self, output: Output) -> None:
        if output.records:
            self._hold(output)
            return
        # One output carries a whole loop turn, many connections: split it, so
        # that only the connections with output held wait.
        held = self._held_cids
        free, stuck = Output(), Output()
        for cid, chunks in output.writes.items():
            (stuck if cid in held else free).writes[cid] = chunks
        for cid in output.close:
            (stuck if cid in held else free).close.append(cid)
        for cid, records in output.after_write.items():
            (stuck if cid in held else free).after_write[cid] = records
        if stuck:
            self._hold(stuck)
        if free:
            self._release(free)

    async def _retry_until_available(self) -> None:
        """Retry the held records until the store takes them; then release the held outputs."""
        attempt = 0
        while not self.available and self.error is None:
            await anyio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1
            count = len(self._held)
            later = self._take_later()
            records = later + [r for output in list(self._held)[:count] for r in output.records]
            try:
                await self._apply_retry(records)
            except StoreUnavailable:
                with self._lock:
                    self._later = later + self._later
                continue
            except StoreError as exc:
                self._fail(exc)  # fatal: run() raises it
                return
            self._recovered(count)

    def _recovered(self, count: int) -> None:
        ready = [self._held.popleft() for _ in range(count)]
        rest = list(self._held)
        self._held.clear()
        self._held_cids.clear()
        self.available = True
        log.warning("storage available again: %d held output(s) stored and released", count)
        self._on_storage(True)
        for output in ready:
            self._release(output)
        for output in rest:
            self.submit(output)  # submitted meanwhile: the usual path now
        self._room.set()
        self._room = anyio.Event()
        self._after_recovery()

    def _after_recovery(self) -> None:
        """What a strategy does once held outputs are released (default: nothing waits)."""
        self._idle.set()

    async def _apply_retry(self, records: list[Record]) -> None:
        """Apply ``records`` for a retry (on the loop; the threaded strategy uses its thread)."""
        self._store.apply(records)

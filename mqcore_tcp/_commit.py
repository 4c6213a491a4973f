"""Group commit: store the broker's records before releasing the bytes that depend on them.

The hub hands every :class:`mqcore.Output` of a durable broker to a
committer's :meth:`~Committer.submit`. The committer stores the output's
records and then calls ``release(output)`` (the hub applying it to the
connections) exactly once per output, in the order submitted, and never
before the records of that output and of every earlier one are stored. So
no reply or delivery is written before its record is stored, and every
connection sees the broker's order. ``release`` never submits again: the
pipeline is not re-entrant.

Records that wait for bytes to be *written* (the consumption of ``one``
messages, :attr:`mqcore.Output.after_write`) come back through
:meth:`~Committer.store_later`: nothing waits for them, so they ride along
with the next commit.

Two strategies, chosen by the store (:attr:`mqcore.Store.commit_in_thread`):

* :class:`ThreadedCommitter`, when a commit waits for the disk (SQLite with
  ``--fsync always``): while a commit is under way outputs queue up; when it
  ends, the records of *all* queued outputs go to the store in one
  transaction in a worker thread (so the event loop keeps reading: one disk
  sync covers everything that arrived meanwhile), and the batch is then
  released on the event loop. An output without records still waits behind
  earlier ones.
* :class:`InlineCommitter`, when a commit only hands pages to the OS (SQLite
  with ``batch`` or ``off``, the memory store): each output is stored as it
  is submitted and released at once. This is measured faster: a commit of a
  few hundred messages takes a fraction of a millisecond, while a round trip
  through a thread costs more than that.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from mqcore import Output, Record, Store, StoreError

__all__ = [
    "MAX_QUEUED_OUTPUTS",
    "Committer",
    "InlineCommitter",
    "ThreadedCommitter",
    "committer_for",
]

#: Outputs that may wait for a commit before readers stop reading. Each comes
#: from one read (at most the server's read size), so this bounds the memory
#: held while the disk is slow; TCP then pushes back on the senders.
MAX_QUEUED_OUTPUTS: Final = 256

Release = Callable[[Output], None]


class Committer(ABC):
    """What both strategies share: the store, the release callback, failure."""

    def __init__(self, store: Store, release: Release) -> None:
        self._store = store
        self._release = release
        self._lock = threading.Lock()
        # Records to store with the next commit (consumed `one` messages).
        self._later: list[Record] = []
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        #: Why the store failed, once it has; nothing is released after that.
        self.error: StoreError | None = None

    @abstractmethod
    def submit(self, output: Output) -> None:
        """Release ``output`` once its records (and every earlier output's) are stored."""

    def store_later(self, records: list[Record]) -> None:
        """Store ``records`` with the next commit; nothing waits for them."""
        if self.error is None and records:
            with self._lock:
                self._later += records
            self._wake()

    @property
    def backlogged(self) -> bool:
        """True while readers should wait (:meth:`wait_for_room`) before reading more."""
        return False

    async def wait_for_room(self) -> None:
        """Wait until fewer outputs wait for a commit than the bound (or the store failed)."""
        while self.backlogged:
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
        self._room.set()
        self._idle.set()


class InlineCommitter(Committer):
    """Stores each output's records on the event loop as it is submitted, then releases it."""

    def __init__(self, store: Store, release: Release) -> None:
        super().__init__(store, release)
        # Set when records wait in `_later` or the store failed.
        self._nudge = anyio.Event()

    def submit(self, output: Output) -> None:
        if self.error is not None:
            return  # the store failed: nothing more is acknowledged
        if (output.records or self._later) and not self._commit(output.records):
            return
        self._release(output)

    def _wake(self) -> None:
        self._nudge.set()

    def _commit(self, records: list[Record]) -> bool:
        """Store ``records`` (and any records stored later) now; False if that failed."""
        later = self._take_later()
        try:
            self._store.apply(later + records if later else records)
        except StoreError as exc:
            self._fail(exc)
            self._nudge.set()
            return False
        return True

    async def run(self) -> None:
        while True:
            await self._nudge.wait()
            self._nudge = anyio.Event()
            # Give the outputs of this loop turn a chance to carry these records along.
            await anyio.lowlevel.checkpoint()
            if self._later and self.error is None:
                self._commit([])
            if self.error is not None:
                raise self.error


class ThreadedCommitter(Committer):
    """Stores queued outputs' records in a worker thread, one transaction per batch."""

    def __init__(
        self, store: Store, release: Release, *, max_queued_outputs: int = MAX_QUEUED_OUTPUTS
    ) -> None:
        super().__init__(store, release)
        self._max_queued = max_queued_outputs
        # Shared with the worker thread, under the lock: what awaits a commit.
        self._work = threading.Condition(self._lock)
        self._queue: list[Output] = []
        self._stopping = False
        # Event-loop side only: outputs submitted and not yet released.
        self._pending = 0
        self._stopped = anyio.Event()

    def submit(self, output: Output) -> None:
        if self.error is not None:
            return
        if not output.records and not self._pending:
            self._release(output)  # nothing to store, nothing to wait behind
            return
        with self._lock:
            self._queue.append(output)
            self._work.notify()
        self._pending += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

    @property
    def backlogged(self) -> bool:
        return self._pending >= self._max_queued and self.error is None

    def _wake(self) -> None:
        with self._lock:
            self._work.notify()

    async def run(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._worker, abandon_on_cancel=True)
        finally:
            with self._lock:
                self._stopping = True
                self._work.notify()
            with anyio.CancelScope(shield=True):
                # Events the worker sends meanwhile still run: we are on the loop.
                await self._stopped.wait()
        if self.error is not None:
            raise self.error

    def _worker(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._queue or self._later or self._stopping):
                        self._work.wait()
                    if self._stopping:
                        return
                    batch, self._queue = self._queue, []
                    later, self._later = self._later, []
                records = later + [r for output in batch for r in output.records]
                try:
                    if records:
                        self._store.apply(records)
                except StoreError as exc:
                    anyio.from_thread.run_sync(self._fail_batch, exc)
                    return
                anyio.from_thread.run_sync(self._release_batch, batch)
        finally:
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                anyio.from_thread.run_sync(self._stopped.set)

    # -- called on the event loop by the worker --------------------------------------

    def _release_batch(self, batch: list[Output]) -> None:
        # `_pending` still counts the batch while it is released, so whatever is
        # submitted meanwhile queues behind it.
        for output in batch:
            self._release(output)
        self._pending -= len(batch)
        self._room.set()
        self._room = anyio.Event()
        if not self._pending:
            self._idle.set()

    def _fail_batch(self, exc: StoreError) -> None:
        with self._lock:
            self._queue = []
        self._pending = 0
        self._fail(exc)


def committer_for(store: Store, release: Release) -> Committer:
    """The strategy ``store`` asks for (:attr:`mqcore.Store.commit_in_thread`)."""
    if store.commit_in_thread:
        return ThreadedCommitter(store, release)
    return InlineCommitter(store, release)

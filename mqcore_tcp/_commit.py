"""Group commit: store the broker's records before releasing the bytes that depend on them.

The server hands every :class:`mqcore.Output` to :meth:`CommitPipeline.hold`
before applying it. While a commit is under way, outputs queue up in order;
when it ends, the records of *all* queued outputs go to the store in one
transaction, in a worker thread (so the event loop keeps reading), and only
then are those outputs applied, in order. So no reply or delivery is written
before its record is stored, one commit (one disk sync, with ``--fsync
always``) covers everything that arrived meanwhile, and an output without
records still waits behind earlier ones, so every connection sees the
broker's order.

Where the commit runs depends on the store (:attr:`mqcore.Store.commit_in_thread`):

* in a worker thread when a commit waits for the disk (SQLite with
  ``--fsync always``): the event loop keeps reading while it syncs, and what
  it reads forms the next group. The worker is one long-lived thread that
  takes the queue, commits and hands the batch back to the event loop
  (``anyio.from_thread.run_sync``);
* on the event loop itself when a commit only hands pages to the OS (SQLite
  with ``batch`` or ``off``, the memory store): each output is stored as it
  is held, and applied at once. The output of one batch of input (a read,
  or one event-loop turn of reads) is one transaction. This is measured
  faster: a commit of a few hundred messages takes a fraction of a
  millisecond, while handing it to a thread and back cost more than that
  (the worker waits for the GIL while the event loop runs Python, and the
  batch then waits a loop turn to be released).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from mqcore import Output, Record, Store, StoreError

__all__ = ["MAX_QUEUED_OUTPUTS", "CommitPipeline"]

#: Outputs that may wait for a commit before readers stop reading. Each comes
#: from one read (at most the server's read size), so this bounds the memory
#: held while the disk is slow; TCP then pushes back on the senders.
MAX_QUEUED_OUTPUTS: Final = 256


class CommitPipeline:
    """Stores records in group commits and releases outputs after them, in order.

    ``release(output)`` applies an output to the connections; the pipeline
    calls it on the event loop once the output's records (and every earlier
    output's) are stored. Run :meth:`run` in a task for as long as the
    server serves. Everything but the worker thread runs on the event loop.
    """

    def __init__(
        self,
        store: Store,
        release: Callable[[Output], None],
        *,
        max_queued_outputs: int = MAX_QUEUED_OUTPUTS,
    ) -> None:
        self._store = store
        self._release = release
        self._inline = not store.commit_in_thread
        # Inline only: set when records wait in `_later` or the store failed.
        self._nudge = anyio.Event()
        self._max_queued = max_queued_outputs
        # Shared with the worker thread, under the lock: what awaits a commit.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: list[Output] = []
        # Records to store once their bytes were written (consumed `one`
        # messages): nothing waits for them, so they ride along with the next commit.
        self._later: list[Record] = []
        self._stopping = False
        # Event-loop side only: outputs held and not yet released.
        self._pending = 0
        # The output being released: hold() lets exactly that one through.
        # Anything dispatched meanwhile (a close flushing what the broker owes
        # its connection) still queues behind the batch, as it must.
        self._releasing: Output | None = None
        self._room = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._stopped = anyio.Event()
        #: Why the store failed, once it has; nothing is released after that.
        self.error: StoreError | None = None

    def hold(self, output: Output) -> bool:
        """Queue ``output`` if it must wait for a commit; False: apply it now.

        Called for every output, including those the pipeline releases (then
        it returns False, so the caller's usual path applies them).
        """
        if output is self._releasing:
            return False
        if self.error is not None:
            return True  # the store failed: nothing more is acknowledged
        if self._inline:
            return bool((output.records or self._later) and not self._commit_now(output.records))
        if not output.records and not self._pending:
            return False
        with self._lock:
            self._queue.append(output)
            self._work.notify()
        self._pending += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        return True

    def store_later(self, records: list[Record]) -> None:
        """Store ``records`` with the next commit; nothing waits for them."""
        if self.error is not None or not records:
            return
        with self._lock:
            self._later += records
            self._work.notify()
        if self._inline:
            self._nudge.set()

    @property
    def backlogged(self) -> bool:
        """True while readers should wait (:meth:`wait_for_room`) before reading more."""
        return self._pending >= self._max_queued and self.error is None

    async def wait_for_room(self) -> None:
        """Wait until fewer outputs wait for a commit than the bound (or the store failed)."""
        while self.backlogged:
            await self._room.wait()

    async def drain(self) -> None:
        """Wait until every output held so far is stored and released (or the store failed)."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def run(self) -> None:
        """Commit and release, batch after batch, until cancelled or the store fails.

        A cancellation lets a commit under way finish. On a store failure
        :attr:`error` is set and :class:`StoreError` is raised.
        """
        if self._inline:
            await self._run_inline()
            return
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

    # -- inline commits ----------------------------------------------------------------

    def _commit_now(self, records: list[Record]) -> bool:
        """Store ``records`` (and any waiting after-write records) now; False if that failed."""
        later, self._later = self._later, []
        try:
            self._store.apply(later + records if later else records)
        except StoreError as exc:
            self._fail(exc)
            return False
        return True

    async def _run_inline(self) -> None:
        while True:
            await self._nudge.wait()
            self._nudge = anyio.Event()
            # Give the outputs of this loop turn a chance to carry these records along.
            await anyio.lowlevel.checkpoint()
            if self._later and self.error is None:
                self._commit_now([])
            if self.error is not None:
                raise self.error

    # -- the worker thread -------------------------------------------------------------

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
                    anyio.from_thread.run_sync(self._fail, exc)
                    return
                anyio.from_thread.run_sync(self._release_batch, batch)
        finally:
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                anyio.from_thread.run_sync(self._stopped.set)

    # -- called on the event loop by the worker --------------------------------------

    def _release_batch(self, batch: list[Output]) -> None:
        try:
            for output in batch:
                self._releasing = output
                self._release(output)
        finally:
            self._releasing = None
        self._pending -= len(batch)
        self._room.set()
        self._room = anyio.Event()
        if not self._pending:
            self._idle.set()

    def _fail(self, exc: StoreError) -> None:
        self.error = exc
        self._nudge.set()
        with self._lock:
            self._queue = []
            self._later = []
        self._pending = 0
        self._room.set()
        self._idle.set()

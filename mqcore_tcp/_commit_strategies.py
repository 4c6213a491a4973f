"""The two commit strategies of :mod:`mqcore_tcp._commit`, and which one a store gets.

Two strategies, chosen by the store (:attr:`mqcore.Store.commit_in_thread`):

* :class:`ThreadedCommitter`, when a commit waits for the disk (SQLite with
  ``--fsync always``): while a commit is under way outputs queue up; when it
  ends, the records of *all* queued outputs go to the store in one
  transaction in a worker thread (so the event loop keeps reading: one disk
  sync covers everything that arrived meanwhile), and the batch is then
  released on the event loop. An output without records still waits behind
  earlier ones.
* :class:`InlineCommitter`, when a commit only hands pages to the OS (SQLite
  with ``batch`` or ``off``, the memory store): outputs are stored on the
  event loop, no thread involved. This is measured faster: a commit of a
  few hundred messages takes a fraction of a millisecond, while a round trip
  through a thread costs more than that. An output is held while reads keep
  arriving, and stored with the following loop turns' outputs in one commit
  (a *span*, :mod:`mqcore_tcp._commit_span`), so a commit carries many
  messages per topic; a span ends as soon as a loop turn brings no read, or
  at its bounds in outputs, records, bytes and time, and an output submitted
  while none is held and with nothing to store is released at once.
"""

from __future__ import annotations

import contextlib
import threading
import time

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from mqcore import Output, Record, Store, StoreError, StoreUnavailable

from ._commit import MAX_QUEUED_OUTPUTS, Committer, Release, StorageCallback, noop_storage
from ._commit_span import Span

__all__ = ["InlineCommitter", "ThreadedCommitter", "committer_for"]


class InlineCommitter(Committer):
    """Stores outputs' records on the event loop, one commit per span of loop turns.

    See :mod:`mqcore_tcp._commit_span` for when a span ends.
    """

    def __init__(
        self, store: Store, release: Release, on_storage: StorageCallback = noop_storage
    ) -> None:
        super().__init__(store, release, on_storage)
        # Set when a span opens, records wait in `_later`, or the store failed.
        self._nudge = anyio.Event()
        self._span = Span()
        # Outputs held so far: a check that sees no new one knows no read followed.
        self._held_count = 0
        # What the previous commit took (seconds): how long the next span may stay open.
        self._last_commit = 0.0

    def submit(self, output: Output) -> None:
        if self.error is not None:
            return  # the store failed: nothing more is acknowledged
        if not self.available:
            self._submit_while_unavailable(output)
            return
        span = self._span
        if not span.outputs:
            if not output.records and not self._later:
                self._release(output)  # nothing to store, nothing to wait behind
                return
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._nudge.set()
        self._held_count += 1
        if span.add(output, time.monotonic()):
            self._commit_span()

    def _wake(self) -> None:
        self._nudge.set()

    def _commit_span(self) -> None:
        """Store the span's records (and any stored later), then release its outputs."""
        outputs = self._span.take()
        later = self._take_later()
        records = later
        for output in outputs:
            records += output.records
        started = time.perf_counter()
        try:
            self._store.apply(records)
        except StoreUnavailable as exc:
            with self._lock:
                self._later = later + self._later
            self._become_unavailable(exc, [])
            # In order: outputs with records are held; of the others, only the
            # writes to connections with output held wait behind them.
            for output in outputs:
                self._submit_while_unavailable(output)
            self._nudge.set()
            return
        except StoreError as exc:
            self._fail(exc)
            self._nudge.set()
            return
        self._last_commit = time.perf_counter() - started
        for output in outputs:
            self._release(output)
        if self.available:
            self._idle.set()

    async def run(self) -> None:
        while True:
            await self._nudge.wait()
            self._nudge = anyio.Event()
            if not self._span.outputs:
                # Only records stored later wait: let this turn's outputs carry them.
                await anyio.lowlevel.checkpoint()
            await self._hold_while_reads_follow()
            if not self.available:
                await self._retry_until_available()
            if self.error is None and (self._span.outputs or self._later):
                self._commit_span()
            if self.error is not None:
                raise self.error

    async def _hold_while_reads_follow(self) -> None:
        """Return once the open span (if any) should be committed."""
        span = self._span
        while span.outputs and self.available and self.error is None:
            seen = self._held_count
            # Two passes: the loop polls its sockets between them, and a read
            # it finds is fed to the broker (and submitted) by the second.
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            if seen == self._held_count or span.due(time.monotonic(), self._last_commit):
                return

    def _after_recovery(self) -> None:
        # Outputs submitted while unavailable went through submit() again: they may hold a span.
        if not self._span.outputs:
            self._idle.set()


class ThreadedCommitter(Committer):
    """Stores queued outputs' records in a worker thread, one transaction per batch."""

    def __init__(
        self,
        store: Store,
        release: Release,
        on_storage: StorageCallback = noop_storage,
        *,
        max_queued_outputs: int = MAX_QUEUED_OUTPUTS,
    ) -> None:
        super().__init__(store, release, on_storage)
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
        if not self.available:
            self._submit_while_unavailable(output)
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
    def _queue_full(self) -> bool:
        return self._pending >= self._max_queued

    def _wake(self) -> None:
        with self._lock:
            self._work.notify()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._retry_loop)
                await anyio.to_thread.run_sync(self._worker, abandon_on_cancel=True)
                tg.cancel_scope.cancel()
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
                    # While the store is unavailable the event loop retries
                    # (the worker would only spin on the same failure).
                    while not self._stopping and (
                        not self.available or not (self._queue or self._later)
                    ):
                        self._work.wait()
                    if self._stopping:
                        return
                    batch, self._queue = self._queue, []
                    later, self._later = self._later, []
                records = later + [r for output in batch for r in output.records]
                try:
                    if records:
                        self._store.apply(records)
                except StoreUnavailable as exc:
                    with self._lock:
                        self._later = later + self._later
                    anyio.from_thread.run_sync(self._unavailable_batch, exc, batch)
                    continue
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

    def _unavailable_batch(self, exc: StoreUnavailable, batch: list[Output]) -> None:
        # The batch and whatever queued behind it are held until a retry
        # succeeds; the worker idles meanwhile (nothing reaches its queue).
        with self._lock:
            queued, self._queue = self._queue, []
        self._pending -= len(batch) + len(queued)
        self._become_unavailable(exc, [])
        # In order: outputs with records are held; of the others, only the
        # writes to connections with output held wait behind them.
        for output in batch + queued:
            self._submit_while_unavailable(output)
        # Readers paused behind the queue re-check: only those of held
        # connections keep waiting.
        self._room.set()
        self._room = anyio.Event()

    async def _retry_loop(self) -> None:
        while self.error is None:
            await self._retry.wait()
            self._retry = anyio.Event()
            await self._retry_until_available()
        with self._lock:  # failed for good: stop the worker, so run() raises
            self._stopping = True
            self._work.notify()

    async def _apply_retry(self, records: list[Record]) -> None:
        await anyio.to_thread.run_sync(self._store.apply, records)

    def _after_recovery(self) -> None:
        self._wake()  # the worker waits while the store is unavailable
        if not self._pending:
            self._idle.set()

    def _fail_batch(self, exc: StoreError) -> None:
        with self._lock:
            self._queue = []
        self._pending = 0
        self._fail(exc)


def committer_for(
    store: Store, release: Release, on_storage: StorageCallback = noop_storage
) -> Committer:
    """The strategy ``store`` asks for (:attr:`mqcore.Store.commit_in_thread`)."""
    if store.commit_in_thread:
        return ThreadedCommitter(store, release, on_storage)
    return InlineCommitter(store, release, on_storage)

"""The store interface a durable broker's transport writes to, and an in-memory store.

A store keeps what :class:`~mqcore.Broker` (built with ``durable=True``) emits
as records: each topic's next index and cache. The transport applies each
batch of records with :meth:`Store.apply` before it releases the bytes that
depend on them, and at start-up restores a broker from :meth:`Store.load`.
The file-backed store lives outside the core (``mqcore_tcp.SQLiteStore``), so
the core stays free of I/O; :class:`MemoryStore` serves tests and embedders
that want restart semantics without a disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ._protocol import Delivery
from ._records import (
    CacheAdd,
    CacheRemove,
    DropTopic,
    JobAdd,
    JobAttempts,
    JobDone,
    JobState,
    NextIndex,
    Record,
    TopicState,
)

__all__ = ["MemoryStore", "Snapshot", "Store", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """A store cannot be opened, read or written; the message names the store and why."""


class StoreUnavailable(StoreError):
    """A batch could not be stored *for now* (disk full, file made read-only).

    Nothing of the batch was stored (a store applies a batch all or none), and
    the store stays usable: the caller keeps the batch, refuses new work that
    needs the store (``Storage unavailable``) and applies the batch again
    later. Any other :class:`StoreError` is fatal.
    """


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a store holds: its ``epoch`` and its topics.

    ``epoch`` names the store's index numbering: it is made once, when the
    store is created, so it changes exactly when numbering starts over.
    ``index_floor`` is the highest ``next_index`` of any topic forgotten
    (:class:`~mqcore.DropTopic`) in this epoch: a topic created after the
    restore starts numbering there, so no index is ever handed out twice.
    ``jobs`` are the unacknowledged messages of work queues (see
    :mod:`mqcore._acks`), for :meth:`~mqcore.Broker.restore_jobs`.
    """

    epoch: str
    topics: list[TopicState]
    index_floor: int = 0
    jobs: list[JobState] = field(default_factory=list)


class Store(Protocol):
    """What a durable transport needs from a store."""

    #: True if :meth:`apply` waits for the disk (an fsync), so a server should
    #: run it in a worker thread; False if it is quick enough to run inline.
    commit_in_thread: bool

    def load(self) -> Snapshot:
        """Return the epoch and every stored topic, caches oldest first."""
        ...

    def apply(self, records: Sequence[Record]) -> None:
        """Store ``records`` atomically (all or none), applying them in order.

        Raise :class:`StoreError` if they could not be stored; the caller must
        then not acknowledge anything that depends on them.
        """
        ...

    def close(self) -> None:
        """Release the store; nothing may be applied afterwards."""
        ...


class MemoryStore:
    """A :class:`Store` in a dict: survives a broker, not the process.

    ``epoch`` is given by the caller, since the core has no randomness of its
    own; two stores must not share one.
    """

    commit_in_thread = False

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self._next: dict[str, int] = {}
        self._cache: dict[str, dict[int, tuple[Delivery, bytes]]] = {}
        self._floor = 0
        self._jobs: dict[tuple[str, int], tuple[bytes, int]] = {}
        self._closed = False

    def load(self) -> Snapshot:
        """Return a copy of what is stored."""
        names = sorted(self._next.keys() | self._cache.keys())
        return Snapshot(
            self.epoch,
            [
                TopicState(
                    name,
                    self._next.get(name, 0),
                    [(i, d, b) for i, (d, b) in sorted(self._cache.get(name, {}).items())],
                )
                for name in names
            ],
            self._floor,
            [JobState(t, i, d, a) for (t, i), (d, a) in sorted(self._jobs.items())],
        )

    def apply(self, records: Sequence[Record]) -> None:
        """Apply ``records`` in order; a record of an unknown type stores nothing."""
        if self._closed:
            raise StoreError("memory store: closed")
        for record in records:
            if not isinstance(record, Record):
                raise StoreError(f"memory store: not a record: {record!r}")
        for record in records:
            if isinstance(record, JobAdd | JobAttempts | JobDone):
                self._apply_job(record)
                continue
            if isinstance(record, NextIndex):
                # Indices only grow: a stale record must not move one back.
                self._next[record.topic] = max(self._next.get(record.topic, 0), record.next_index)
            elif isinstance(record, DropTopic):
                self._next.pop(record.topic, None)
                self._cache.pop(record.topic, None)
                self._floor = max(self._floor, record.next_index)
            elif isinstance(record, CacheAdd):
                self._cache.setdefault(record.topic, {})[record.index] = (
                    record.delivery,
                    record.data,
                )
            else:
                cache = self._cache.get(record.topic)
                if cache is None:
                    continue
                if isinstance(record, CacheRemove):
                    cache.pop(record.index, None)
                else:
                    for index in [i for i in cache if i < record.below]:
                        del cache[index]
                if not cache:
                    del self._cache[record.topic]

    def _apply_job(self, record: JobAdd | JobAttempts | JobDone) -> None:
        key = (record.topic, record.index)
        if isinstance(record, JobAdd):
            self._jobs[key] = (record.data, record.attempts)
        elif isinstance(record, JobAttempts):
            job = self._jobs.get(key)
            if job is not None:
                self._jobs[key] = (job[0], record.attempts)
        else:
            self._jobs.pop(key, None)

    def close(self) -> None:
        """Refuse further writes (what is stored stays readable with :meth:`load`)."""
        self._closed = True

    def cached_count(self) -> int:
        """How many cached messages are stored, over all topics (for tests)."""
        return sum(map(len, self._cache.values()))

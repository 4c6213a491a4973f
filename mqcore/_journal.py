"""What a durable broker tells its store: records made per batch, not per message.

The rules (the contract a store relies on is in :mod:`mqcore._records`):

- Everything in :attr:`Output.records` is stored before any byte of that
  output is released; :attr:`Output.after_write` is stored once the bytes
  owed to its connection were handed to the socket (or the connection is gone).
- A topic sent to in a batch gets its records once, when the batch is taken:
  a :class:`CacheTrim` if the per-topic bound evicted messages, a
  :class:`CacheAdd` for each message of the batch still cached (one added and
  evicted again within the batch never reaches the store), then its
  :class:`NextIndex`. A store applies a batch atomically, so only where the
  batch ended matters.
- Records of single events go where they happen, in order: a ``one`` message
  delivered live (stored as cached until its bytes are written), a replayed
  ``one`` message consumed, a message evicted for ``max_cache_bytes``, a topic
  forgotten.
- Jobs of work queues (:mod:`mqcore._acks`) are records of their own, in
  order, in :attr:`Output.records`: a job's arrival, each delivery (so an
  attempt is counted before its bytes leave: a crash counts it rather than
  repeat it uncounted), its end; a cached ``one`` message claimed as a job
  leaves the cache in the same batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._connection import ConnectionId
from ._records import (
    CacheAdd,
    CacheRemove,
    CacheTrim,
    DropTopic,
    JobAdd,
    JobAttempts,
    JobDone,
    NextIndex,
    Record,
)
from ._state import Entry, Topic

__all__ = ["Journal"]


class Journal:
    """The records owed to the store since the last :meth:`take`."""

    __slots__ = ("after_write", "bumped", "records", "trimmed")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.after_write: dict[ConnectionId, list[Record]] = {}
        # `bumped` maps a topic sent to in this batch to its first index in
        # the batch; `trimmed` one whose per-topic bound evicted messages to
        # the newest index evicted.
        self.bumped: dict[str, int] = {}
        self.trimmed: dict[str, int] = {}

    def sent(self, name: str, index: int) -> None:
        """Message ``index`` was sent to ``name``: its records come at :meth:`take`."""
        self.bumped.setdefault(name, index)

    def delivered_one(self, target: ConnectionId, name: str, index: int, data: bytes) -> None:
        """A ``one`` message went out live: stored as cached until its bytes are written.

        A crash in between delivers it again after the restart (at least
        once), never loses it.
        """
        self.records.append(CacheAdd(name, index, "one", data))
        self.after_write.setdefault(target, []).append(CacheRemove(name, index))

    def consumed(self, conn: ConnectionId, name: str, entries: Iterable[Entry]) -> None:
        """A replay to ``conn`` consumed these cached ``one`` messages of ``name``."""
        entries = list(entries)
        # Sent in this batch, they would reach the store in take(), which
        # only sees what is still cached: store them now, so that a crash
        # before their replay is written cannot lose them.
        first = self.bumped.get(name)
        if first is not None:
            self.records.extend(
                CacheAdd(name, e.index, "one", e.data) for e in entries if e.index >= first
            )
        self.after_write.setdefault(conn, []).extend(CacheRemove(name, e.index) for e in entries)

    def claimed(self, name: str, entries: Iterable[Entry]) -> None:
        """These cached ``one`` messages of ``name`` became jobs (their JobAdd follows)."""
        self.records.extend(CacheRemove(name, e.index) for e in entries)

    def job_added(self, name: str, index: int, data: bytes, attempts: int) -> None:
        """Message ``index`` of ``name`` became a job."""
        self.records.append(JobAdd(name, index, data, attempts))

    def job_attempts(self, name: str, index: int, attempts: int) -> None:
        """Job ``index`` of ``name`` is being delivered for the ``attempts``-th time."""
        self.records.append(JobAttempts(name, index, attempts))

    def job_done(self, name: str, index: int) -> None:
        """Job ``index`` of ``name`` was acknowledged or dead-lettered."""
        self.records.append(JobDone(name, index))

    def evicted(self, name: str, index: int) -> None:
        """Message ``index`` of ``name`` was evicted for ``max_cache_bytes``.

        Exactly this message, not a trim of everything older: the store may
        still hold an older ``one`` message of the topic that waits for its
        consumer's bytes to be written.
        """
        self.records.append(CacheRemove(name, index))

    def trimmed_below(self, name: str, index: int) -> None:
        """The per-topic bound evicted ``name``'s message ``index`` (and all older)."""
        self.trimmed[name] = index

    def trim(self, name: str, below: int) -> None:
        """Every message of ``name`` below ``below`` is dropped (at restore)."""
        self.records.append(CacheTrim(name, below))

    def forgotten(self, name: str, next_index: int, cached: Iterable[int], waiting: bool) -> None:
        """Topic ``name`` was forgotten, dropping the messages ``cached``.

        If a ``one`` message of the topic may still wait in the store for its
        consumer's bytes (``waiting``), the store keeps the topic, and that
        message, with only the dropped messages removed: it is forgotten at a
        later start-up, once nothing waits. Otherwise the store drops it whole
        and raises its index floor.
        """
        evicted = self.trimmed.pop(name, None)
        if waiting:
            if evicted is not None:
                self.records.append(CacheTrim(name, evicted + 1))
            self.records.extend(CacheRemove(name, index) for index in cached)
            self.records.append(NextIndex(name, next_index))
        else:
            self.records.append(DropTopic(name, next_index))

    def take(
        self, topics: Mapping[str, Topic]
    ) -> tuple[list[Record], dict[ConnectionId, list[Record]]]:
        """Return (and forget) the records and after-write records of this batch."""
        records = self.records
        trimmed = self.trimmed
        for name, first in self.bumped.items():
            topic = topics.get(name)
            if topic is None:
                continue  # forgotten within the batch: its records were made then
            evicted = trimmed.get(name)
            if evicted is not None:
                records.append(CacheTrim(name, evicted + 1))
            # The batch's messages still cached are at the cache's right end.
            fresh: list[Entry] = []
            for entry in reversed(topic.cache):
                if entry.index < first:
                    break
                fresh.append(entry)
            for entry in reversed(fresh):
                records.append(
                    CacheAdd(name, entry.index, "one" if entry.one else "all", entry.data)
                )
            records.append(NextIndex(name, topic.next_index))
        after_write = self.after_write
        self.records = []
        self.after_write = {}
        if self.bumped:
            self.bumped = {}
        if trimmed:
            self.trimmed = {}
        return records, after_write

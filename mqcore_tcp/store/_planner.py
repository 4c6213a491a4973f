"""The write planner: a batch of records in, the rows to write out. No SQLite here.

The store mirrors in memory what its file holds (:class:`Mirror`): each
topic's next index, trim floor and live stored messages (index -> chunk), and
how many live messages each chunk holds. :func:`plan` turns a batch of
records and the mirror into a :class:`WritePlan` without changing the mirror;
the store writes the plan in one transaction and only then calls
:meth:`WritePlan.commit`, so a failed write leaves the mirror equal to the file.

Rules (each topic is planned on its own, records in order):

- A topic's :class:`~mqcore.CacheAdd` records of the batch become one new
  chunk. A message consumed (:class:`~mqcore.CacheRemove`) or trimmed
  (:class:`~mqcore.CacheTrim`) within the same batch never reaches the file.
- A stored chunk is deleted once none of its messages is live (trimmed,
  consumed, or stored again in a newer chunk), and rewritten when only some
  of them leave by consumption or re-storing. Trimmed messages need no
  rewrite: the topic's floor hides them.
- :class:`~mqcore.DropTopic` voids the topic's earlier records of the batch,
  deletes its row and every chunk, and raises the store-wide index floor to
  at least its next index; later records of the batch recreate the topic
  under a new id.
- A topic's row is written with its final values (indices only grow, the
  floor only rises), and only if one of them changed.

Every step is linear in the batch (consumptions are grouped per chunk) and
the mirror's bookkeeping is amortised O(1) per message: a removed index is
only marked dead in the topic's sorted list, which is compacted once half of
it is dead. (Removing from the list one index at a time made confirming
600,000 ``one`` messages quadratic: tens of seconds in one apply.)
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from mqcore import CacheAdd, CacheRemove, CacheTrim, DropTopic, NextIndex, Record

from ._format import checksum, topic_checksum

__all__ = ["Mirror", "TopicMirror", "WritePlan", "plan"]

_INDEX: Final = operator.attrgetter("index")
_DATA: Final = operator.attrgetter("data")
#: A topic's list of indices is compacted once it holds this many dead ones and they are half.
_COMPACT_AFTER: Final = 64


class TopicMirror:
    """What the file holds for one topic: its row's values and its live messages' chunks."""

    __slots__ = ("dead", "floor", "id", "indices", "next_index", "where")

    def __init__(self, topic_id: int, next_index: int = 0, floor: int = 0) -> None:
        self.id = topic_id
        self.next_index = next_index
        #: No stored message below it is live (the topic was trimmed there).
        self.floor = floor
        #: Each live stored message's chunk, by index.
        self.where: dict[int, int] = {}
        #: The indices of ``where``, sorted, plus ``dead`` ones removed since the last compaction.
        self.indices: list[int] = []
        self.dead = 0

    def add(self, index: int, seq: int) -> None:
        """Message ``index`` is stored in chunk ``seq`` (replacing a copy in another chunk)."""
        if index not in self.where:
            indices = self.indices
            if not indices or index > indices[-1]:
                indices.append(index)
            else:
                at = bisect.bisect_left(indices, index)
                if at < len(indices) and indices[at] == index:
                    self.dead -= 1  # a dead entry lives again
                else:
                    indices.insert(at, index)
        self.where[index] = seq

    def extend(self, indices: list[int], seq: int) -> None:
        """Add ``indices`` (sorted), all stored in chunk ``seq``."""
        if self.indices and indices[0] <= self.indices[-1]:
            for index in indices:
                self.add(index, seq)
        else:
            # The usual case, newer than everything stored: no per-index work in Python.
            self.indices += indices
            self.where.update(dict.fromkeys(indices, seq))

    def remove(self, gone: Iterable[int]) -> None:
        """Forget the messages ``gone``: O(1) each, amortised."""
        where = self.where
        for index in gone:
            if where.pop(index, None) is not None:
                self.dead += 1
        if self.dead >= _COMPACT_AFTER and 2 * self.dead >= len(self.indices):
            self.indices = [i for i in self.indices if i in where]
            self.dead = 0

    def below(self, index: int) -> list[int]:
        """The live indices below ``index``."""
        where = self.where
        return [i for i in self.indices[: bisect.bisect_left(self.indices, index)] if i in where]

    def trim(self, index: int) -> None:
        """Forget every message below ``index`` and raise the floor there."""
        cut = bisect.bisect_left(self.indices, index)
        where = self.where
        for i in self.indices[:cut]:
            if where.pop(i, None) is None:
                self.dead -= 1
        del self.indices[:cut]
        self.floor = max(self.floor, index)


class Mirror:
    """The whole file as the planner sees it."""

    __slots__ = ("index_floor", "live", "next_id", "next_seq", "topics")

    def __init__(self) -> None:
        self.topics: dict[str, TopicMirror] = {}
        #: How many live messages each stored chunk holds, by chunk seq.
        self.live: dict[int, int] = {}
        self.next_seq = 1
        self.next_id = 1
        #: The store-wide index floor (see :class:`mqcore.DropTopic`).
        self.index_floor = 0


@dataclass(eq=False)
class WritePlan:
    """The rows one batch writes, in the order they must be written, and the mirror's update."""

    #: Stored chunks that lose some messages (by consumption) and keep others: seq -> gone.
    rewrites: dict[int, set[int]] = field(default_factory=dict)
    #: Stored chunks left with no live message.
    deleted_chunks: list[int] = field(default_factory=list)
    #: Rows of topics dropped (their chunks are in ``deleted_chunks``).
    deleted_topics: list[int] = field(default_factory=list)
    #: New chunks, flattened rows of (seq, topic id, data, crc).
    new_chunks: list[object] = field(default_factory=list)
    #: Topic rows to insert or update, flattened rows of (id, name, next index, floor, crc).
    topic_rows: list[object] = field(default_factory=list)
    #: The new store-wide index floor, or None if it did not rise.
    index_floor: int | None = None

    # What the mirror does once the plan is stored.
    _dropped: list[str] = field(default_factory=list)
    _new_topics: dict[str, TopicMirror] = field(default_factory=dict)
    _trims: dict[str, int] = field(default_factory=dict)
    _trimmed: dict[int, int] = field(default_factory=dict)
    _leaving: dict[int, tuple[TopicMirror, set[int]]] = field(default_factory=dict)
    _stored: list[tuple[TopicMirror, list[int], int]] = field(default_factory=list)
    _rows: list[tuple[TopicMirror, int, int]] = field(default_factory=list)
    _next_seq: int = 0

    def commit(self, mirror: Mirror) -> None:
        """The plan was stored: make the mirror follow."""
        topics, live = mirror.topics, mirror.live
        for name in self._dropped:
            topics.pop(name, None)
        topics.update(self._new_topics)
        mirror.next_id += len(self._new_topics)
        for name, below in self._trims.items():
            topics[name].trim(below)
        for seq, count in self._trimmed.items():
            live[seq] -= count
        for seq, (topic, gone) in self._leaving.items():
            topic.remove(gone)
            live[seq] -= len(gone)
        for seq in self.deleted_chunks:
            del live[seq]
        for topic, indices, seq in self._stored:
            topic.extend(indices, seq)
            live[seq] = len(indices)
        for topic, next_index, floor in self._rows:
            topic.next_index, topic.floor = next_index, floor
        mirror.next_seq = self._next_seq
        if self.index_floor is not None:
            mirror.index_floor = self.index_floor


def plan(mirror: Mirror, records: Sequence[Record]) -> WritePlan | None:
    """What storing ``records`` writes, or None if nothing; raises TypeError for a non-record."""
    next_index: dict[str, int] = {}
    trims: dict[str, int] = {}
    added: dict[str, list[CacheAdd]] = {}
    consumed: dict[str, set[int]] = {}
    dropped: dict[str, int] = {}
    for record in records:
        # Most common first: this runs once per record.
        if type(record) is CacheAdd:
            same_topic = added.get(record.topic)
            if same_topic is None:
                added[record.topic] = [record]
            else:
                same_topic.append(record)
        elif type(record) is NextIndex:
            if record.next_index > next_index.get(record.topic, -1):
                next_index[record.topic] = record.next_index
        elif type(record) is CacheRemove:
            same = consumed.get(record.topic)
            if same is None:
                consumed[record.topic] = {record.index}
            else:
                same.add(record.index)
        elif type(record) is CacheTrim:
            if record.below > trims.get(record.topic, -1):
                trims[record.topic] = record.below
        elif type(record) is DropTopic:
            name = record.topic
            for pending in (added, consumed, next_index, trims):
                pending.pop(name, None)
            dropped[name] = max(dropped.get(name, 0), record.next_index)
        else:
            raise TypeError(f"not a record: {record!r}")
    if not (added or consumed or next_index or trims or dropped):
        return None

    result = WritePlan()
    topics = mirror.topics

    def stored_unless_dropped(name: str) -> TopicMirror | None:
        return None if name in dropped else topics.get(name)

    # The topic as the file holds it before this batch (None if new or dropped
    # in it). Called a few times per topic: without drops, no Python frame.
    stored = stored_unless_dropped if dropped else topics.get

    doomed: set[int] = set()
    for name in dropped:
        old = topics.get(name)
        if old is not None:
            result.deleted_topics.append(old.id)
            doomed.update(old.where.values())
        result._dropped.append(name)
    if dropped:
        floor = max(mirror.index_floor, *dropped.values())
        if floor > mirror.index_floor:
            result.index_floor = floor

    # The messages each topic's new chunk holds. A message consumed or trimmed
    # within the same batch never reaches the file: the core never adds a
    # message again after its removal, and a trim only follows the adds it
    # removes (later adds are of newer messages).
    chunks: dict[str, list[CacheAdd]] = {}
    for name, adds in added.items():
        taken = consumed.get(name)
        below = trims.get(name, -1)
        if taken is not None or below > adds[0].index:
            adds = [a for a in adds if a.index >= below and (taken is None or a.index not in taken)]
            if taken is not None:
                taken.difference_update(a.index for a in added[name])
        if adds:
            if len(adds) > 1 and adds[-1].index < adds[-2].index:
                adds.sort(key=_INDEX)
            chunks[name] = adds

    # Messages leaving stored chunks: trimmed (counted: the floor hides them,
    # so a chunk that keeps others needs no rewrite), or consumed or stored
    # again (listed per chunk: a chunk that keeps others is rewritten without them).
    trimmed = result._trimmed
    leaving = result._leaving
    for name, below in trims.items():
        topic = stored(name)
        if topic is not None:
            # Counted by hand: Counter.update costs microseconds per call, and this is per topic.
            where = topic.where
            for index in topic.below(below):
                seq = where[index]
                trimmed[seq] = trimmed.get(seq, 0) + 1
    for name, taken in consumed.items():
        topic = stored(name)
        if topic is not None:
            _leave(leaving, topic, taken, trims.get(name, -1))
    for name, adds in chunks.items():
        topic = stored(name)
        if topic is not None and topic.indices and adds[0].index <= topic.indices[-1]:
            _leave(leaving, topic, [a.index for a in adds], -1)
    live = mirror.live
    for seq in {*trimmed, *leaving}:
        entry = leaving.get(seq)
        if trimmed.get(seq, 0) + (0 if entry is None else len(entry[1])) >= live[seq]:
            doomed.add(seq)
    result.deleted_chunks = sorted(doomed)
    result.rewrites = {seq: gone for seq, (_, gone) in leaving.items() if seq not in doomed}

    new_topics = result._new_topics

    def topic_of(name: str) -> TopicMirror:
        topic = stored(name) or new_topics.get(name)
        if topic is None:
            topic = new_topics[name] = TopicMirror(mirror.next_id + len(new_topics))
        return topic

    seq = mirror.next_seq
    new_chunks, stored_chunks = result.new_chunks, result._stored
    touched: dict[str, TopicMirror] = {}
    for name, adds in chunks.items():
        topic = touched[name] = topic_of(name)
        data = b"".join(map(_DATA, adds))
        new_chunks += (seq, topic.id, data, checksum(data))
        stored_chunks.append((topic, list(map(_INDEX, adds)), seq))
        seq += 1
    result._next_seq = seq
    topic_rows, rows = result.topic_rows, result._rows
    for name in {*next_index, *trims, *chunks}:
        topic = touched.get(name) or topic_of(name)
        new = name in new_topics
        final_next = next_index.get(name, 0)
        final_floor = trims.get(name, 0)
        if not new:
            final_next = max(final_next, topic.next_index)
            final_floor = max(final_floor, topic.floor)
        if new or final_next != topic.next_index or final_floor != topic.floor:
            topic_rows += (
                topic.id,
                name,
                final_next,
                final_floor,
                topic_checksum(name, final_next, final_floor),
            )
            rows.append((topic, final_next, final_floor))
    # Every trimmed topic went through topic_of() above, so it exists once committed.
    result._trims = trims
    return result


def _leave(
    leaving: dict[int, tuple[TopicMirror, set[int]]],
    topic: TopicMirror,
    indices: Iterable[int],
    below: int,
) -> None:
    """Note that the stored messages ``indices`` (those not below ``below``) leave their chunks."""
    where = topic.where
    for index in indices:
        seq = where.get(index)
        if seq is not None and index >= below:
            entry = leaving.get(seq)
            if entry is None:
                leaving[seq] = (topic, {index})
            else:
                entry[1].add(index)

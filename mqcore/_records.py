"""What a durable broker asks its store to keep.

The broker emits these in :attr:`Output.records` (stored before the output's
bytes are written) and :attr:`Output.after_write` (stored after them). A store
applies each batch atomically and in order, and gives :class:`TopicState`
back at start-up; a store may merge several batches into one transaction.

A durable broker makes a topic's records once per output, not once per
message: a :class:`CacheTrim` if messages were evicted, a :class:`CacheAdd`
for each message of the output still cached (one added and evicted again
within the output never reaches the store), then its :class:`NextIndex`.
Records of a ``one`` message delivered live, or consumed by a replay, come
where they happen. A store applies them in order; it may merge the batches of
several outputs into one transaction.

Acknowledged delivery (:mod:`mqcore._acks`) keeps its messages apart from the
caches, by ``(topic, index)``: :class:`JobAdd` when a message enters a work
queue, :class:`JobAttempts` when it is delivered again, :class:`JobDone` when
it is acknowledged or dead-lettered. :class:`DropTopic` leaves them alone (a
job outlives its topic's cache). All three are in :attr:`Output.records`,
stored before the reply or delivery that depends on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ._protocol import Delivery

__all__ = [
    "CacheAdd",
    "CacheRemove",
    "CacheTrim",
    "DropTopic",
    "JobAdd",
    "JobAttempts",
    "JobDone",
    "JobState",
    "NextIndex",
    "Record",
    "TopicState",
]

# The records are frozen msgspec Structs rather than frozen dataclasses: a
# durable broker makes one or two per message, and a Struct is several times
# cheaper to build. They hold only str, int and bytes, so gc=False is safe.


class NextIndex(msgspec.Struct, frozen=True, gc=False):
    """``topic``'s next message will get ``next_index`` (it only ever grows)."""

    topic: str
    next_index: int


class CacheAdd(msgspec.Struct, frozen=True, gc=False):
    """A message entered ``topic``'s cache; ``data`` is its wire bytes.

    Also emitted for a ``one`` message delivered live (so not cached in
    memory): the store keeps it until the matching :class:`CacheRemove` in
    :attr:`Output.after_write` says its bytes were written to the consumer.
    """

    topic: str
    index: int
    delivery: Delivery
    data: bytes


class CacheRemove(msgspec.Struct, frozen=True, gc=False):
    """Message ``index`` of ``topic`` left the store's cache.

    A consumed ``one`` message (once its bytes are written), or a message
    evicted to keep the cache within ``max_cache_bytes``.
    """

    topic: str
    index: int


class CacheTrim(msgspec.Struct, frozen=True, gc=False):
    """Every cached message of ``topic`` with an index below ``below`` was evicted.

    One per topic per batch replaces a record per evicted message. It may
    also drop a ``one`` message still awaiting its :class:`CacheRemove`: that
    one is older than a whole cache of newer messages, so a restart would
    not have replayed it either.
    """

    topic: str
    below: int


class DropTopic(msgspec.Struct, frozen=True, gc=False):
    """``topic`` was forgotten (empty, uncached, unsubscribed): delete all it has.

    Numbering must never restart within an epoch, so the store also raises
    its *index floor* to at least ``next_index`` (the forgotten topic's next
    index): a topic created later, this one included, starts numbering at the
    floor, never below an index a client may already have seen. The floor is
    one integer for the whole store, so forgetting stays O(1) in space.
    """

    topic: str
    next_index: int


class JobAdd(msgspec.Struct, frozen=True, gc=False):
    """Message ``index`` of ``topic`` entered its work queue, delivered ``attempts`` times.

    ``data`` is its delivery's wire bytes, without ``"attempt"``.
    """

    topic: str
    index: int
    data: bytes
    attempts: int


class JobAttempts(msgspec.Struct, frozen=True, gc=False):
    """Job ``index`` of ``topic`` has now been delivered ``attempts`` times."""

    topic: str
    index: int
    attempts: int


class JobDone(msgspec.Struct, frozen=True, gc=False):
    """Job ``index`` of ``topic`` left its work queue: acknowledged, or dead-lettered."""

    topic: str
    index: int


Record = NextIndex | CacheAdd | CacheRemove | CacheTrim | DropTopic | JobAdd | JobAttempts | JobDone


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as a store saved it: its next index and its cache, oldest first."""

    topic: str
    next_index: int
    cache: list[tuple[int, Delivery, bytes]]


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as a store saved it: unacknowledged, delivered ``attempts`` times so far."""

    topic: str
    index: int
    data: bytes
    attempts: int

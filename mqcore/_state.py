"""The broker's data: a topic and one cached message. Rules live where they are used.

:mod:`mqcore._topics` keeps topics, subscribers and caches consistent;
:mod:`mqcore._journal` turns their changes into records for a store.
"""

from __future__ import annotations

from collections import deque

import msgspec

from ._connection import Connection

__all__ = ["Entry", "Topic"]


class Entry(msgspec.Struct, gc=False):
    """A cached message: its index, whether it is a ``one`` message, its wire bytes."""

    # A Struct rather than a class with __init__: one is built per cached send,
    # and a Struct is built in C, about three times faster; gc=False because
    # it holds no containers, so the garbage collector need not track it.
    index: int
    one: bool
    data: bytes
    topic: str
    # Set when it leaves its topic's cache, so the broker-wide eviction
    # order (which drops such entries lazily) can skip it.
    gone: bool = False


class Topic:
    """One topic: its numbering, its subscribers and its replay cache."""

    __slots__ = (
        "cache",
        "name",
        "next_index",
        "rr",
        "subscribers",
        "targets",
        "targets_generation",
        "waiting",
    )

    def __init__(self, name: str, cache_size: int, next_index: int) -> None:
        self.name = name
        self.next_index = next_index
        # A list, so a delivery iterates (or indexes, for `one`) it as it is;
        # each subscriber's position is in its Connection.topics, so removal
        # swaps the last one into the gap: O(1).
        self.subscribers: list[Connection] = []
        self.cache: deque[Entry] = deque(maxlen=cache_size)
        self.rr = 0
        # Exact and pattern subscribers merged, as of a PatternTable generation
        # (-1: stale); see mqcore._patterns. Unused while there are no patterns.
        self.targets: list[Connection] = self.subscribers
        self.targets_generation = -1
        # Durable only: a `one` message of this topic was delivered live, so
        # the store may hold it until its consumer's bytes are written.
        self.waiting = False

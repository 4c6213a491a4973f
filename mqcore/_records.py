"""What a durable broker asks its store to keep.

The broker emits these in :attr:`Output.records`; a store applies one batch
of them atomically, and gives :class:`TopicState` back at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._protocol import Delivery

__all__ = ["CacheAdd", "CacheRemove", "NextIndex", "Record", "TopicState"]


@dataclass(frozen=True, slots=True)
class NextIndex:
    """``topic``'s next message will get ``next_index``."""

    topic: str
    next_index: int


@dataclass(frozen=True, slots=True)
class CacheAdd:
    """A message entered ``topic``'s cache; ``data`` is its wire bytes."""

    topic: str
    index: int
    delivery: Delivery
    data: bytes


@dataclass(frozen=True, slots=True)
class CacheRemove:
    """The cached message ``index`` of ``topic`` left the cache (evicted or consumed)."""

    topic: str
    index: int


Record = NextIndex | CacheAdd | CacheRemove


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as a store saved it: its next index and its cache, oldest first."""

    topic: str
    next_index: int
    cache: list[tuple[int, Delivery, bytes]]

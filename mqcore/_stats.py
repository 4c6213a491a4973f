"""A snapshot of a broker's counters, for monitoring (``Broker.stats()``).

The counters are plain integers the broker bumps as it works (once per read or
per output, never per message), so reading them costs nothing until asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BrokerStats"]


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """Counters since the broker was made, and sizes as they are now."""

    #: Complete lines received (blank ones and those after ``quit`` included).
    lines: int
    #: ``send`` commands received (refused ones included: see ``failures``).
    sends: int
    #: Chunks handed to the transport: replies plus delivered or replayed messages.
    chunks: int
    #: Failure replies, by reason (``Reason.*`` strings).
    failures: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    topics: int = 0
    #: Topics with no subscriber (kept only for their cache).
    idle_topics: int = 0
    cached_messages: int = 0
    cached_bytes: int = 0
    #: Where a topic created now starts numbering.
    index_floor: int = 0
    storage_available: bool = True

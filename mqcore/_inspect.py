"""What a broker shows of itself, for tests and monitoring: cheap reads, no change.

Counters are plain integers the broker bumps once per read or per output
(never per message), so :meth:`Inspection.stats` costs nothing on the hot path
and O(1) when called.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._connection import ConnectionId
from ._guard import Guarded
from ._protocol import REASONS
from ._stats import BrokerStats

__all__ = ["Inspection"]


class Inspection(Guarded):
    """The read-only views of :class:`~mqcore.Broker` (which sets the state up).

    A link in the broker's single chain of bases (acknowledged commands,
    commands, guard, inspection, broker): single inheritance keeps the core
    compilable by mypyc, which allows only one non-trait base.
    """

    _lines: int
    _sends: int
    _chunks: int
    _failures: dict[bytes, int]
    _storage_available: bool

    def next_index(self, topic: str) -> int:
        """The index the next message sent to ``topic`` will get."""
        state = self._topics.get(topic)
        return self._table.index_floor if state is None else state.next_index

    def cached(self, topic: str) -> list[bytes]:
        """The wire bytes of the messages cached for ``topic``, oldest first."""
        state = self._topics.get(topic)
        return [] if state is None else [e.data for e in state.cache]

    def subscribers(self, topic: str) -> list[ConnectionId]:
        """The connections subscribed to ``topic``."""
        state = self._topics.get(topic)
        return [] if state is None else [c.id for c in state.subscribers]

    def topic_names(self, newest_first: bool = False) -> Iterator[str]:
        """Every topic's name, oldest (or newest) first, straight from the table: no copy."""
        return reversed(self._topics) if newest_first else iter(self._topics)

    def subscription_count(self, cid: ConnectionId) -> int | None:
        """How many topics ``cid`` subscribes to (``None``: no such connection)."""
        conn = self._connections.get(cid)
        return None if conn is None else len(conn.topics)

    def stats(self) -> BrokerStats:
        """Counters and sizes as they are now: cheap, callable at any time."""
        table = self._table
        return BrokerStats(
            lines=self._lines,
            sends=self._sends,
            chunks=self._chunks,
            failures={REASONS.get(k, "?"): n for k, n in self._failures.items()},
            connections=len(self._connections),
            topics=len(self._topics),
            idle_topics=len(table.idle),
            cached_messages=table.cached,
            cached_bytes=table.cache_bytes,
            index_floor=table.index_floor,
            storage_available=self._storage_available,
        )

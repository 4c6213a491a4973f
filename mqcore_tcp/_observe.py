"""What the web side reads from a running hub: counters, topics and connections, as plain data.

Theory of operation. Nothing here runs per message. The broker and the hub
keep plain integers as they work; these functions read them only when a
page, an API call or a Prometheus scrape asks (see ``_metrics`` and ``_http``).

Topics can number a million, so a topic listing never builds the whole list
of topics, nor encodes more than one page:

- in creation order (the default), a page is a slice of the broker's topic
  dictionary: O(offset + page), whatever the number of topics;
- sorted by a column, a page is a bounded heap selection over the (filtered)
  topics: O(topics x log(offset + page)), memory O(offset + page), with the
  offset bounded by :data:`MAX_SORTED_OFFSET`. Rows are then built for the
  page only.

Counters come from :meth:`mqcore.Broker.stats` (plain integers the broker
keeps), topic names from :meth:`mqcore.Broker.topic_names` (a live view of
its table, in creation order).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Final

from mqcore import Broker

from ._hub import Hub

__all__ = [
    "MAX_PAGE",
    "MAX_SORTED_OFFSET",
    "TOPIC_SORTS",
    "Counters",
    "connection_rows",
    "health",
    "read_counters",
    "topic_page",
]

#: The most rows one page of topics or connections holds.
MAX_PAGE: Final = 1000
#: How deep a sorted listing may page (a heap of this many names is built).
MAX_SORTED_OFFSET: Final = 100_000
#: The orders a topic listing accepts ("created" is the broker's own order: cheapest).
TOPIC_SORTS: Final = ("created", "name", "next_index", "subscribers", "cached", "cached_bytes")


@dataclass(frozen=True)
class Counters:
    """The server's counters and sizes at one moment (None: this core does not count it)."""

    connections: int
    topics: int
    sends: int | None
    deliveries: int | None
    cached_messages: int | None
    cached_bytes: int | None
    slow_consumer_disconnects: int
    storage_available: bool
    failures: dict[str, int] = field(default_factory=dict)


def read_counters(hub: Hub) -> Counters:
    """Read every counter now: O(1), from :meth:`mqcore.Broker.stats`."""
    s = hub.broker.stats()
    return Counters(
        connections=len(hub.connections()),
        topics=s.topics,
        sends=s.sends,
        # Chunks are replies plus deliveries; each line gets at most one
        # reply (blank lines and `quit` none), so this may undercount a little.
        deliveries=max(0, s.chunks - s.lines),
        cached_messages=s.cached_messages,
        cached_bytes=s.cached_bytes,
        slow_consumer_disconnects=hub.slow_consumer_disconnects,
        storage_available=s.storage_available,
        failures=dict(s.failures),
    )


def health(hub: Hub) -> str | None:
    """Why the server does not accept work now (None: it does)."""
    if hub.closing:
        return "shutting down"
    error = hub.store_error
    if error is not None:
        return f"store failed: {error}"
    if not hub.broker.stats().storage_available:
        # A cluster node's store is Redis (see mqcore_tcp.cluster).
        return "backend unavailable" if hub.clustered else "storage unavailable"
    return None


# -- topics -------------------------------------------------------------------------


def topic_row(broker: Broker, name: str) -> dict[str, Any]:
    """One topic as /api/topics lists it."""
    cached = broker.cached(name)
    return {
        "name": name,
        "next_index": broker.next_index(name),
        "cached": len(cached),
        "cached_bytes": sum(map(len, cached)),
        "subscribers": len(broker.subscribers(name)),
    }


def _sort_key(broker: Broker, sort: str) -> Callable[[str], Any] | None:
    if sort == "name":
        return None  # the name itself
    if sort == "next_index":
        return broker.next_index
    if sort == "subscribers":
        return lambda name: len(broker.subscribers(name))
    if sort == "cached":
        return lambda name: len(broker.cached(name))
    return lambda name: sum(map(len, broker.cached(name)))  # cached_bytes


def topic_page(
    broker: Broker,
    *,
    match: str = "",
    sort: str = "created",
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
) -> dict[str, Any]:
    """One page of topics whose name contains ``match`` (see the module docstring for costs).

    Raises :class:`ValueError` for an unknown ``sort`` or out-of-range numbers.
    """
    if sort not in TOPIC_SORTS:
        raise ValueError(f"sort must be one of {', '.join(TOPIC_SORTS)}")
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}")
    if offset < 0 or (sort != "created" and offset > MAX_SORTED_OFFSET):
        bound = "" if sort == "created" else f" (at most {MAX_SORTED_OFFSET} when sorted)"
        raise ValueError(f"offset must be >= 0{bound}")
    total = broker.stats().topics
    names: Iterable[str] = broker.topic_names(newest_first=descending)
    if match:
        names = (name for name in names if match in name)
    if sort == "created":
        page = list(islice(names, offset, offset + limit + 1))
    else:
        pick = heapq.nlargest if descending else heapq.nsmallest
        page = pick(offset + limit + 1, names, key=_sort_key(broker, sort))[offset:]
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "more": len(page) > limit,
        "items": [topic_row(broker, name) for name in page[:limit]],
    }


# -- connections --------------------------------------------------------------------


def connection_rows(hub: Hub, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """One page of live connections: peer, transport, subscriptions, bytes queued, since."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise ValueError(f"limit must be 1..{MAX_PAGE} and offset >= 0")
    live = hub.connections()
    rows = []
    for cid, peer, since, conn in live[offset : offset + limit]:
        rows.append(
            {
                "id": cid,
                "peer": peer,
                "transport": getattr(conn, "transport_name", None) or _transport_of(peer),
                "subscriptions": hub.broker.subscription_count(cid),
                "queued_bytes": conn.queued,
                "since": since,
            }
        )
    return {
        "total": len(live),
        "offset": offset,
        "limit": limit,
        "more": offset + limit < len(live),
        "items": rows,
    }


def _transport_of(peer: str) -> str:
    # A connection may name its transport (WebSocket ones do); otherwise a
    # TCP peer is host:port and a Unix one a path.
    return "tcp" if peer.rpartition(":")[2].isdigit() else "unix"

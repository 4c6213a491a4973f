"""What cluster mode's core and its node pass each other.

With an output, each topic's sends, to publish in one call:

A :class:`TopicBatch` holds, in order, the sends of one output to one topic:
for each, its *kind* (``a``: delivery all, ``c``: all and cached, ``o``:
one, ``p``: one and cached) and its *head*, the delivered line up to its
index (the backend appends the index and ``}\\r\\n``, so the line is byte
for byte what the single-node broker delivers). ``slots`` say where each
sender's ``{"success": true}`` stands in the output (connection, position
in its chunk list), for the node to replace when the backend refused.

Back from the node: batches of :data:`Delivered` messages. Asked of the node:
:class:`ClusterWork`. Kept per topic by the core: a :class:`Mirror`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ._connection import Connection, ConnectionId
from ._protocol import Subscribe

__all__ = ["ClusterWork", "Delivered", "Mirror", "TopicBatch"]


@dataclass(slots=True)
class TopicBatch:
    """The sends of one output to one topic (see the module's docstring)."""

    topic: str
    kinds: list[str] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    slots: list[tuple[ConnectionId, int]] = field(default_factory=list)


#: One delivered message: its index, its kind (``a``, ``c``, or ``o``/``p``
#: followed by the node id it is for) and its wire bytes.
Delivered = tuple[int, bytes, bytes]


@dataclass(slots=True)
class ClusterWork:
    """Backend calls the core asks of the node (see :meth:`ClusterBroker.take_work`).

    ``loads``: topics whose mirror to load (topic, whether to take its cached
    ``one`` messages); ``drops``: topics with no local subscriber any more;
    ``returns``: ``one`` messages this node could not deliver (topic, messages);
    ``confirms``: indices of ``one`` messages handed to a local subscriber
    (topic, indices): no longer pending for this node in the backend.
    ``scans``: patterns to read the backend's topic registry for.
    """

    loads: list[tuple[str, bool]] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    returns: list[tuple[str, list[Delivered]]] = field(default_factory=list)
    confirms: list[tuple[str, list[int]]] = field(default_factory=list)
    scans: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.loads or self.drops or self.returns or self.confirms or self.scans)


class Mirror:
    """This node's view of one topic in the backend."""

    __slots__ = ("cache", "loading", "next", "pending", "waiting")

    def __init__(self, cache_size: int) -> None:
        #: The expected index of the next delivery (-1: never loaded).
        self.next = -1
        self.cache: deque[tuple[int, bytes]] = deque(maxlen=cache_size)
        self.loading = True
        # Batches that came while loading, and the subscribes waiting for it.
        self.pending: list[tuple[int, int, list[Delivered]]] = []
        self.waiting: list[tuple[Connection, Subscribe]] = []

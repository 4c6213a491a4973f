"""What cluster mode hands the node with an output: each topic's sends, to publish in one call.

A :class:`TopicBatch` holds, in order, the sends of one output to one topic:
for each, its *kind* (``a``: delivery all, ``c``: all and cached, ``o``:
one, ``p``: one and cached) and its *head*, the delivered line up to its
index (the backend appends the index and ``}\\r\\n``, so the line is byte
for byte what the single-node broker delivers). ``slots`` say where each
sender's ``{"success": true}`` stands in the output (connection, position
in its chunk list), for the node to replace when the backend refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._connection import ConnectionId

__all__ = ["TopicBatch"]


@dataclass(slots=True)
class TopicBatch:
    """The sends of one output to one topic (see the module's docstring)."""

    topic: str
    kinds: list[str] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    slots: list[tuple[ConnectionId, int]] = field(default_factory=list)

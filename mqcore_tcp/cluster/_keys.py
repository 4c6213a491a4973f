"""Redis key names of a topic, all under one hash tag, and the wire format of batches.

A topic's hash tag must be the whole topic, so every key of it lands on one
shard: a name with ``}`` (which would end the tag early), starting with
``~`` or empty is written ``~`` plus its UTF-8 in hex (no other name starts
with ``~``, so two topics never share a tag).
"""

from __future__ import annotations

from typing import Final

from mqcore._cluster import Delivered

__all__ = ["CACHE_SIZE", "EPOCH", "TopicKeys", "parse_batch", "parse_item"]

EPOCH: Final = b"mq:epoch"
CACHE_SIZE: Final = b"mq:cache_size"
_END: Final = b"\r\n"


def _tag(topic: str) -> bytes:
    raw = topic.encode("utf-8", "surrogatepass")
    if not raw or b"}" in raw or raw.startswith(b"~"):
        return b"~" + raw.hex().encode("ascii")
    return raw


class TopicKeys:
    """The keys and channel of one topic."""

    __slots__ = ("channel", "keys")

    def __init__(self, topic: str) -> None:
        self.channel = b"mq:{" + _tag(topic) + b"}"
        #: next, cache, subs, count, pending: the KEYS of every script.
        self.keys = [
            self.channel + suffix
            for suffix in (b":next", b":cache", b":subs", b":count", b":pending")
        ]


def parse_item(item: bytes) -> Delivered:
    """One entry (``"<index> <kind> <line>\\r\\n"``) as (index, kind, line)."""
    index, kind, line = item.split(b" ", 2)
    return int(index), kind, line


def parse_batch(payload: bytes) -> tuple[int, int, list[Delivered]]:
    """A published batch: its first index, its next index, its entries."""
    parts = payload.split(_END)
    parts.pop()  # what follows the last entry's end: nothing
    first, after = parts[0].split(b" ")
    entries: list[Delivered] = []
    for part in parts[1:]:
        index, kind, line = part.split(b" ", 2)
        entries.append((int(index), kind, line + _END))
    return int(first), int(after), entries

"""What a stored message and a stored chunk look like, and how they are checked.

A *chunk* is the wire bytes of one or more messages of one topic, each ending
with CRLF (which JSON text cannot hold), stored as one row by one commit. Its
row carries a CRC-32 of the chunk (:func:`checksum`): a flipped bit anywhere in
it is found on load, whatever the bytes decode to. The check is per chunk, not
per message, so it costs one ``zlib.crc32`` call per topic per commit.

A topic's row carries a CRC-32 of its name, next index and trim floor
(:func:`topic_checksum`): a damaged next index could hand out an index twice.

Rows written before checksums existed (schema 1) have none; they, and every
row on load, are also validated by content: each message must be valid UTF-8,
the JSON of a delivered message (``command``, ``topic``, ``msg``,
``delivery``, ``index``, optionally ``cache``) of the topic it is stored under.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec

from mqcore import Delivery

__all__ = ["StoredMessage", "checksum", "parse_message", "split_chunk", "topic_checksum"]


class StoredMessage(
    msgspec.Struct, tag="send", tag_field="command", forbid_unknown_fields=True, gc=False
):
    """A delivered message as stored: every key is decoded, so every byte is checked."""

    topic: str
    msg: str
    delivery: Delivery
    index: int
    cache: bool = True


_DECODER: Final = msgspec.json.Decoder(StoredMessage)


def checksum(data: bytes) -> int:
    """The CRC-32 stored with a chunk (an int SQLite holds in at most 5 bytes)."""
    return zlib.crc32(data)


def topic_checksum(name: str, next_index: int, floor: int) -> int:
    """The CRC-32 stored with a topic's row, over every value of the row."""
    return zlib.crc32(b"%s\x00%d\x00%d" % (name.encode(), next_index, floor))


def split_chunk(chunk: object) -> list[bytes]:
    """Split a chunk into its messages (each keeps its CRLF); [] if it is not bytes."""
    if not isinstance(chunk, bytes):
        return []
    return [m + b"\r\n" for m in chunk.split(b"\r\n")[:-1]]


def parse_message(data: bytes) -> StoredMessage | None:
    """The stored message ``data`` (ending with ``}\\r\\n``), or None if it is not one."""
    if not data.endswith(b"}\r\n"):
        return None
    try:
        return _DECODER.decode(data)
    except (ValueError, RecursionError):
        # msgspec's errors are ValueErrors, and so is invalid UTF-8 in a string.
        return None

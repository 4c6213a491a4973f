"""Salvage of a damaged store file: recognise it, copy it aside, read what can be read.

A file is *ours* if its header says so (SQLite magic and our application id),
however damaged the rest. Before anything is read, the file (and its log) is
copied aside to ``mqcore.db.damaged`` (``.damaged.N`` if taken) and the copy's
header is repaired so that SQLite reads a truncated file. Then every row of
both tables that can be read is read, the cache table from both ends so a bad
page in the middle loses only what is on it; each message is validated as on
load, and a message names its own topic, so it is kept even if its topic's
row was lost. The store rebuilds a new file from the result (with a new epoch)
and logs what was lost; if nothing at all can be read, it refuses instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Final

from mqcore import Delivery, TopicState

from ._format import parse_message, split_chunk
from ._sql import APPLICATION_ID, read_rows

__all__ = ["copy_aside", "has_sqlite_magic", "is_ours", "one_line", "read_damaged", "remove_files"]

_MAGIC: Final = b"SQLite format 3\x00"
_SUFFIXES: Final = ("", "-wal", "-shm")


def _header(path: Path) -> bytes:
    """The first 100 bytes of the file (fewer if it is shorter or unreadable)."""
    try:
        with path.open("rb") as f:
            return f.read(100)
    except OSError:
        return b""


def has_sqlite_magic(path: Path) -> bool:
    """Whether the file at least starts like an SQLite file."""
    return _header(path).startswith(_MAGIC[:4])


def is_ours(path: Path) -> bool:
    """Whether the file's header says it is an mqcore store (however damaged the rest)."""
    header = _header(path)
    return (
        len(header) == 100
        and header.startswith(_MAGIC)
        and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )


def one_line(text: str, limit: int = 300) -> str:
    """SQLite's integrity reports span lines; a log line must not."""
    flat = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _repair_header(path: Path) -> None:
    """Let SQLite read a truncated file: drop the header's page count, pad the last page.

    SQLite refuses a file shorter than its header says; with the count
    cleared it trusts the file's size, and the pages that are left can be read.
    """
    with path.open("r+b") as f:
        header = f.read(100)
        if len(header) < 100:
            return
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        size = f.seek(0, os.SEEK_END)
        if page_size >= 512 and size % page_size:
            f.truncate(size + page_size - size % page_size)
        f.seek(28)
        f.write(b"\x00\x00\x00\x00")


def _aside_path(path: Path) -> Path:
    candidate = path.with_name(path.name + ".damaged")
    n = 1
    while any(Path(f"{candidate}{s}").exists() for s in _SUFFIXES):
        candidate = path.with_name(f"{path.name}.damaged.{n}")
        n += 1
    return candidate


def copy_aside(path: Path) -> Path:
    """Copy the store file and its log aside (header repaired); return the copy. Raises OSError."""
    aside = _aside_path(path)
    for suffix in _SUFFIXES[:2]:
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{aside}{suffix}")
    _repair_header(aside)
    return aside


def remove_files(path: Path) -> None:
    """Delete a store file and its log and shared-memory files."""
    for suffix in _SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def read_damaged(path: Path) -> tuple[list[TopicState] | None, list[str]]:
    """Read whatever rows can be read from a damaged store, noting what could not.

    Returns None for the topics if neither table can be read at all.
    """
    notes: list[str] = []
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    except sqlite3.Error:
        return None, notes
    readable = False
    names: dict[int, str] = {}
    next_index: dict[str, int] = {}
    floors: dict[str, int] = {}
    chunks: dict[object, tuple[object, object]] = {}
    with contextlib.closing(conn):
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        # Names as bytes: a damaged name must not stop the reading.
        query = "SELECT id, CAST(name AS BLOB), next_index, floor FROM topics"
        for topic_id, raw, index, floor in read_rows(conn, query, notes, "topics"):
            readable = True
            name = _text(raw)
            if isinstance(topic_id, int) and name is not None and isinstance(index, int):
                names[topic_id] = name
                next_index[name] = index
                floors[name] = floor if isinstance(floor, int) else 0
        for order in ("ASC", "DESC"):
            query = f"SELECT seq, topic, data FROM cache ORDER BY seq {order}"
            for seq, topic_id, chunk in read_rows(conn, query):
                readable = True
                chunks.setdefault(seq, (topic_id, chunk))
    if not readable:
        return None, notes
    caches: dict[str, dict[int, tuple[int, Delivery, bytes]]] = {}
    dropped = 0
    for _seq, (topic_id, chunk) in sorted(chunks.items(), key=lambda kv: str(kv[0])):
        name = names.get(topic_id) if isinstance(topic_id, int) else None
        for data in split_chunk(chunk) or [b""]:
            stored = parse_message(data)
            if stored is None or (name is not None and stored.topic != name):
                dropped += 1
            elif stored.index >= floors.get(stored.topic, 0):
                caches.setdefault(stored.topic, {})[stored.index] = (
                    stored.index,
                    stored.delivery,
                    data,
                )
    if dropped:
        notes.append(f"{dropped} damaged cached message(s)")
    lost_topics = [n for n in caches if n not in next_index]
    if lost_topics:
        notes.append(f"the next index of {len(lost_topics)} topic(s) (taken from their cache)")
    notes.append("any message on a page that could not be read")
    topics = [
        TopicState(name, next_index.get(name, 0), sorted(caches.get(name, {}).values()))
        for name in {**next_index, **caches}
    ]
    return topics, notes


def _text(raw: object) -> str | None:
    """A stored name read as bytes, or None if it is not valid UTF-8 (or not bytes at all)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None

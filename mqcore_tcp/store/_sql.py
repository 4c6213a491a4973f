"""The SQL of the store: its schema and migrations, batched statements, error kinds.

Layout of ``DATA_DIR/mqcore.db`` (schema 2)::

    meta(key, value)        -- 'epoch': made once, changed when numbering may restart;
                               'commits': how many batches were committed;
                               'index_floor': see mqcore.DropTopic
    topics(id, name, next_index, floor, crc)
                            -- one row per topic; no message below floor is live
    cache(seq, topic, data, crc)
                            -- a chunk: the wire bytes of messages of one topic,
                               stored by one commit (see _format)

Schema 1 (mqcore before checksums) had no ``crc`` columns and no 'commits' or
'index_floor'; opening it adds them (``crc`` NULL: such rows are validated by
content only, and get a checksum when they are next written).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator
from typing import Final

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "create_schema",
    "delete_chunks",
    "execute_rows",
    "is_transient",
    "migrate",
    "read_rows",
    "transaction",
]

#: Written into the file header so that a foreign SQLite file is never taken for ours.
APPLICATION_ID: Final = 0x6D71636F  # "mqco"
SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_index INTEGER NOT NULL,
    floor INTEGER NOT NULL,
    crc INTEGER
);
CREATE TABLE cache (
    seq INTEGER PRIMARY KEY,
    topic INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER
);
"""

_MIGRATE_FROM_1: Final = """
ALTER TABLE topics ADD COLUMN crc INTEGER;
ALTER TABLE cache ADD COLUMN crc INTEGER;
"""

INSERT_CHUNK: Final = "INSERT INTO cache VALUES {}"
UPSERT_TOPIC: Final = (
    "INSERT INTO topics VALUES {} ON CONFLICT (id) DO UPDATE SET"
    " next_index = excluded.next_index, floor = excluded.floor, crc = excluded.crc"
)
SET_META: Final = "INSERT OR REPLACE INTO meta VALUES (?, ?)"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction: committed if it returns, else rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def create_schema(conn: sqlite3.Connection, epoch: str) -> None:
    """Create the tables of a new store with epoch ``epoch``, in one transaction."""
    with transaction(conn):
        _run_script(conn, _SCHEMA)
        conn.executemany(SET_META, [("epoch", epoch), ("commits", "0"), ("index_floor", "0")])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a store of schema ``version`` (< :data:`SCHEMA_VERSION`) up to date."""
    with transaction(conn):
        if version < 2:
            _run_script(conn, _MIGRATE_FROM_1)
            conn.executemany(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", [("commits", "0"), ("index_floor", "0")]
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# Primary result codes (the low byte of an extended code) of a write that may
# succeed later: the disk or a quota is full (SQLITE_FULL; SQLite reports
# ENOSPC this way), the file or file system became read-only (SQLITE_READONLY),
# or the OS failed the write (SQLITE_IOERR: EROFS, EFBIG, EIO, ...).
_TRANSIENT_CODES: Final = frozenset({13, 8, 10})
#: The same, by message, for Python 3.10 (no ``sqlite_errorcode`` on its exceptions).
_TRANSIENT_TEXTS: Final = ("is full", "readonly database", "disk I/O error")


def is_transient(exc: sqlite3.Error) -> bool:
    """Whether a failed write may succeed later (the transaction was rolled back)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _TRANSIENT_CODES
    text = str(exc)
    return any(part in text for part in _TRANSIENT_TEXTS)


def delete_chunks(conn: sqlite3.Connection, seqs: list[int]) -> None:
    """Delete the chunks ``seqs`` (sorted): runs of consecutive ones by range, the rest by list."""
    if not seqs:
        return
    ranges: list[object] = []
    single: list[object] = []
    start = end = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == end + 1:
            end = seq
            continue
        if end - start >= 3:
            ranges += (start, end)
        else:
            single += range(start, end + 1)
        if seq is not None:
            start = end = seq
    if ranges:
        execute_rows(conn, "DELETE FROM cache WHERE {}", "seq BETWEEN ? AND ?", ranges, " OR ")
    if single:
        execute_rows(conn, "DELETE FROM cache WHERE seq IN ({})", "?", single)


#: Rows per statement, largest first: a few statement shapes, each prepared once and cached.
_CHUNKS: Final = (256, 64, 16, 4, 1)
#: SQLite before 3.32 allows at most 999 parameters in a statement.
_MAX_PARAMS: Final = 999


def execute_rows(
    conn: sqlite3.Connection, template: str, row: str, params: list[object], sep: str = ","
) -> None:
    """Run ``template`` with ``{}`` replaced by many ``row`` placeholders, for all ``params``.

    One statement per many rows, rather than executemany's one per row,
    because most of the cost of a row is crossing from Python into SQLite.
    """
    width = row.count("?")
    total = len(params) // width
    done = 0
    for chunk in _CHUNKS:
        if total - done < chunk or chunk * width > _MAX_PARAMS:
            continue
        sql = _statement(template, row, sep, chunk)
        while total - done >= chunk:
            conn.execute(sql, params[done * width : (done + chunk) * width])
            done += chunk


@functools.lru_cache(maxsize=64)
def _statement(template: str, row: str, sep: str, count: int) -> str:
    """``template`` for ``count`` rows: the same string object each time, so that
    SQLite's statement cache finds its prepared statement without hashing the
    text again (a str caches its hash) and no text is built per call."""
    return template.format(sep.join([row] * count))


def read_rows(
    conn: sqlite3.Connection, query: str, notes: list[str] | None = None, what: str = ""
) -> Iterator[tuple[object, ...]]:
    """Yield rows until the first one SQLite cannot read; note the failure if asked."""
    try:
        for row in conn.execute(query):
            yield tuple(row)
    except sqlite3.Error as exc:
        if notes is not None:
            notes.append(f"the rest of the {what} table ({exc})")

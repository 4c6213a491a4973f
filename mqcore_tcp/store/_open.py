"""Opening the store's SQLite file: locking, WAL, ``fsync`` mode, and checking what it holds.

:func:`connect` opens a file for this process alone (``locking_mode =
EXCLUSIVE``, the write lock taken at once, so a second server on the same
directory fails at open); :func:`check_schema` creates the schema in a new
file, migrates an older one, and tells a damaged file of ours
(:class:`Damaged`, which the store salvages) from one that is not ours or
is in use (:class:`mqcore.StoreError`, refused); :func:`classify_error`
does the same for an error SQLite raised while opening.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Final, Literal, get_args

from mqcore import StoreError

from . import _salvage
from ._sql import APPLICATION_ID, SCHEMA_VERSION, create_schema, migrate

__all__ = [
    "FSYNC_MODES",
    "WAL_SIZE_LIMIT",
    "Damaged",
    "FsyncMode",
    "check_schema",
    "classify_error",
    "connect",
]

log = logging.getLogger("mqcore_tcp.store")

FsyncMode = Literal["always", "batch", "off"]
FSYNC_MODES: Final[tuple[FsyncMode, ...]] = get_args(FsyncMode)
#: The write-ahead log is truncated back to this after a checkpoint that let it grow past it.
WAL_SIZE_LIMIT: Final = 16 << 20

#: SQLite's page cache for the store's connection, at most (SQLite's default is 2 MB).
PAGE_CACHE_BYTES: Final = 32 << 20

_SYNCHRONOUS: Final[dict[FsyncMode, str]] = {"always": "FULL", "batch": "NORMAL", "off": "OFF"}


class Damaged(Exception):
    """The file is an mqcore store, but cannot be read as it is: salvage it."""


def classify_error(path: Path, exc: sqlite3.Error) -> StoreError | Damaged:
    """Classify an error met while opening: in use, not ours, damaged (ours), or other."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        # Never touch a file another process holds, however it looks.
        return StoreError(f"store {path} is in use by another process ({text})")
    damaged = "malformed" in text or "corrupt" in text or "not a database" in text
    if damaged and _salvage.is_ours(path):
        return Damaged(text)
    if damaged and _salvage.has_sqlite_magic(path):
        return StoreError(
            f"store {path} is damaged beyond repair ({text}); move it away to start empty"
        )
    if damaged:
        return StoreError(
            f"store {path} is not an mqcore store ({text}); move it away to start empty"
        )
    return StoreError(f"store {path}: {_salvage.one_line(text)}")


def connect(path: Path, fsync: FsyncMode) -> sqlite3.Connection:
    """Open ``path`` locked for this process, in WAL mode, synchronous as ``fsync`` says."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. The server
    # calls apply() from a worker thread, one call at a time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    try:
        # EXCLUSIVE: hold the file lock for as long as we run, so a second
        # server on the same directory fails at once instead of both
        # numbering messages; it also keeps the WAL index in memory.
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreError(f"store {path}: cannot enable WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[fsync]}")
        if fsync == "always":
            # macOS: fsync() alone does not flush the disk's cache.
            conn.execute("PRAGMA fullfsync = ON")
            conn.execute("PRAGMA checkpoint_fullfsync = ON")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        # A commit spanning loop turns touches a page or two per topic: with
        # SQLite's default 2 MB cache its dirty pages spill into the log
        # mid-transaction and are read back (a third more writes, three
        # times the reads at 1,000 topics).
        conn.execute(f"PRAGMA cache_size = {-(PAGE_CACHE_BYTES >> 10)}")
        # Take the write lock now: a second server fails here, not on its first message.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """Create the schema in a new file (True) or migrate an old one (False).

    Raises :class:`Damaged` (ours, salvageable) or :class:`mqcore.StoreError`.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
    if app_id == 0 and not tables:
        create_schema(conn, uuid.uuid4().hex)
        return True
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"store {path} is not an mqcore store (an SQLite file of another "
            "application); move it away or choose another --data-dir"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} was written by a newer mqcore (schema {version}, "
            f"this one reads {SCHEMA_VERSION})"
        )
    if not {"meta", "topics", "cache"} <= tables:
        raise Damaged("tables are missing")
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        raise Damaged(str(exc)) from None
    if problems != ["ok"]:
        raise Damaged("\n".join(problems))
    if version < SCHEMA_VERSION:
        migrate(conn, version)
        log.info("store %s: upgraded from schema %d to %d", path, version, SCHEMA_VERSION)
    return False

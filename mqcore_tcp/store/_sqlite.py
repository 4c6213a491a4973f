"""The file-backed store: SQLite (standard library) in WAL mode, one file per data directory.

The layout is in :mod:`._sql`, the chunk format and its checks in
:mod:`._format`, what a batch writes in :mod:`._planner`, opening and checking
the file in :mod:`._open`. A commit writes,
per topic it touched, one chunk with that topic's new cached messages, and
deletes (or rewrites) the chunks whose messages left, so disk use stays
O(topics x cache size x message size), never the history. Chunks rather than
a row per message: most of a commit's cost is per row (measured: 100
single-message rows cost 0.3 ms to insert and delete, one chunk of 100
messages 15 us). The write-ahead log is checkpointed automatically (every
~4 MiB) and cut back to :data:`WAL_SIZE_LIMIT`.

Durability (``fsync``) maps onto ``PRAGMA synchronous`` in WAL mode:

``always`` (``FULL``)
    the log is fsynced at every commit: an acknowledged message survives
    power loss and OS crashes.
``batch`` (``NORMAL``, the default)
    every commit is written to the OS before it returns, fsyncs happen only
    at checkpoints: an acknowledged message survives the process being
    killed (SIGKILL, a crash); power loss may roll back the last commits, but
    never corrupts the file.
``off`` (``OFF``)
    no fsync at all: still survives the process being killed, but power loss
    may lose recent commits or damage the file.

Failures of :meth:`SQLiteStore.apply`: a write that may succeed later (disk
or quota full, file or file system read-only, an I/O error) raises
:class:`mqcore.StoreUnavailable`; the transaction was rolled back, the store
stays usable and the same batch may be applied again. Anything else raises a
one-line :class:`mqcore.StoreError`.

Nothing acknowledged is renumbered silently. The epoch (``meta.epoch``) names
the store's numbering; it changes, and what may be lost is logged (and listed
in :attr:`SQLiteStore.losses`), whenever the store finds on open or load
that acknowledged data may be missing: a damaged file (checked with
``PRAGMA quick_check``, then salvaged into a new file, see :mod:`._salvage`),
a chunk or topic row whose checksum or content is wrong (dropped), or a file
that went back in time or vanished (see :mod:`._state_file`). A file that is
not an mqcore store, is damaged beyond reading, or is in use by another
server is refused with a one-line :class:`mqcore.StoreError` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from mqcore import CacheAdd, NextIndex, Record, Snapshot, StoreError, StoreUnavailable

from . import _salvage
from ._format import checksum, parse_message, split_chunk
from ._jobs import CREATE_JOBS, load_jobs, plan_jobs, split_jobs
from ._load import read_store
from ._open import (
    FSYNC_MODES,
    Damaged,
    FsyncMode,
    check_schema,
    classify_error,
    connect,
)
from ._planner import Mirror, WritePlan, plan
from ._sql import (
    INSERT_CHUNK,
    UPSERT_TOPIC,
    create_schema,
    delete_chunks,
    execute_rows,
    is_transient,
    transaction,
)
from ._state_file import StateFile

__all__ = ["DEFAULT_FSYNC", "FSYNC_MODES", "STORE_FILE", "FsyncMode", "SQLiteStore"]

log = logging.getLogger("mqcore_tcp.store")

#: Survives SIGKILL of the server without an fsync per commit.
DEFAULT_FSYNC: Final[FsyncMode] = "batch"
#: The store's file name inside a data directory.
STORE_FILE: Final = "mqcore.db"


class SQLiteStore:
    """A :class:`mqcore.Store` in one SQLite file, written by one process at a time.

    Opening creates the file (and its directory) if needed, checks it and, if
    it is damaged, salvages it; it raises :class:`mqcore.StoreError` with a
    one-line message naming the file if it cannot be used. Next to the file it
    keeps a state file (``mqcore.db`` -> ``mqcore.state``). Methods must not
    be called concurrently (the server calls :meth:`apply` from one worker
    thread at a time).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: FsyncMode = DEFAULT_FSYNC) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        self.path: Final = Path(path)
        self.fsync: Final = fsync
        #: Only ``always`` syncs at every commit; the others hand pages to the OS
        #: and return in well under a millisecond, faster than a thread round trip.
        self.commit_in_thread = fsync == "always"
        #: What salvaging a damaged file found, or None if the file was intact.
        self.salvaged: str | None = None
        #: What opening and loading found lost (one line each, also logged).
        self.losses: list[str] = []
        self._mirror = Mirror()
        self._created = False
        self._closed = False
        # A rollback failed: the file may hold half a batch the mirror does not know.
        self._broken = False
        self._state = StateFile(self.path.with_suffix(".state"))
        self._epoch, self._commits = "", 0
        self._conn = self._open()
        # Schema 2 as older mqcore (and a salvage) writes it has no jobs table.
        self._conn.execute(CREATE_JOBS)
        self._epoch, self._commits = self._read_meta()
        self._check_state_file()

    @classmethod
    def in_directory(
        cls, data_dir: str | os.PathLike[str], *, fsync: FsyncMode = DEFAULT_FSYNC
    ) -> SQLiteStore:
        """Open (creating if needed) the store of the data directory ``data_dir``."""
        directory = Path(data_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create data directory {directory}: {exc.strerror or exc}"
            ) from None
        return cls(directory / STORE_FILE, fsync=fsync)

    # -- opening -----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"store {self.path}: not a regular file")
        try:
            conn = connect(self.path, self.fsync)
            try:
                self._created = check_schema(conn, self.path)
            except BaseException:
                conn.close()
                raise
        except Damaged as exc:
            return self._salvage(str(exc))
        except sqlite3.Error as exc:
            error = classify_error(self.path, exc)
            if isinstance(error, Damaged):
                return self._salvage(str(exc))
            raise error from None
        return conn

    def _read_meta(self) -> tuple[str, int]:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None
        epoch, commits, floor = (meta.get(k) for k in ("epoch", "commits", "index_floor"))
        if not isinstance(epoch, str) or not epoch:
            raise StoreError(f"store {self.path} has no epoch; move it away to start empty")
        self._mirror.index_floor = _count(floor)
        return epoch, _count(commits)

    def _check_state_file(self) -> None:
        """Compare with the state file: a vanished or rolled-back store starts a new epoch."""
        recorded = self._state.read()
        if self._created and (recorded is not None or self._state.exists()):
            # The new file already has a new epoch: say loudly what happened.
            before = "" if recorded is None else f" (epoch {recorded[0]}, {recorded[1]} commits)"
            self._lost(
                f"the store file was missing or empty, but {self._state.path.name} says a "
                f"store{before} was here: every message it held is lost",
                new_epoch=False,
            )
        elif recorded is not None and recorded[0] == self._epoch and recorded[1] > self._commits:
            self._lost(
                f"the store went back from commit {recorded[1]} to {self._commits} (its log or "
                f"file was rolled back or replaced): messages acknowledged in the last "
                f"{recorded[1] - self._commits} commit(s) may be lost and their indices reused"
            )
        self._state.write(self._epoch, self._commits)

    def _lost(self, what: str, *, new_epoch: bool = True) -> None:
        """Log a loss; unless the store is new anyway, start a new epoch so clients renumber."""
        if new_epoch:
            epoch = uuid.uuid4().hex
            try:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write to store {self.path}: {exc}") from None
            what += f"; the epoch changed from {self._epoch} to {epoch}"
            self._epoch = epoch
            self._state.write(epoch, self._commits)
        self.losses.append(what)
        log.error("store %s: %s", self.path, what)

    # -- the Store interface -------------------------------------------------------

    def load(self) -> Snapshot:
        """Read the epoch and every topic; drop (and log) stored data that is not intact."""
        try:
            return self._load(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None

    def _load(self, conn: sqlite3.Connection) -> Snapshot:
        found = read_store(conn, self._mirror.index_floor)
        self._mirror = found.mirror
        # Chunks with nothing live (damaged, or all below a floor), and damaged topics: reclaim.
        if found.dead_chunks or found.bad_topics:
            with transaction(conn):
                delete_chunks(conn, found.dead_chunks)
                execute_rows(conn, "DELETE FROM topics WHERE id IN ({})", "?", [*found.bad_topics])
        if found.dropped or found.bad_topics:
            self._lost(
                f"dropped {found.dropped} stored message(s) and {len(found.bad_topics)} topic(s) "
                "that were not intact (bad checksum, UTF-8 or JSON)"
            )
        jobs, damaged = load_jobs(conn)
        if damaged:
            self._lost(f"dropped {damaged} stored job(s) that were not intact", new_epoch=False)
        return Snapshot(self._epoch, found.topics, found.mirror.index_floor, jobs)

    def apply(self, records: Sequence[Record]) -> None:
        """Store ``records`` in one transaction (see :mod:`._planner` for what is written).

        Raises :class:`mqcore.StoreUnavailable` if the disk refused the write
        for now (nothing was stored; apply the batch again later), else
        :class:`mqcore.StoreError` if it could not be stored.
        """
        if self._closed or self._broken:
            why = "closed" if self._closed else "a write could not be rolled back; restart"
            raise StoreError(f"cannot write to store {self.path}: {why}")
        records, job_records = split_jobs(records)
        try:
            writes = plan(self._mirror, records)
        except TypeError as exc:
            raise StoreError(f"store {self.path}: {exc}") from None
        if writes is None:
            if not job_records:
                return
            writes = WritePlan()  # only jobs: the commit is still counted
        commits = self._commits + 1
        conn = self._conn
        try:
            with transaction(conn):
                self._write(conn, writes, commits)
                if job_records:
                    plan_jobs(job_records).write(conn)
        except sqlite3.Error as exc:
            try:
                rolled_back = not conn.in_transaction
            except sqlite3.Error:
                rolled_back = False
            if not rolled_back:
                self._broken = True
            elif is_transient(exc):
                raise StoreUnavailable(
                    f"store {self.path} cannot be written for now ({exc}); nothing was stored"
                ) from None
            raise StoreError(f"cannot write to store {self.path}: {exc}") from None
        # Stored: now the mirror follows.
        writes.commit(self._mirror)
        self._commits = commits
        self._state.write(self._epoch, commits)

    def _write(self, conn: sqlite3.Connection, writes: WritePlan, commits: int) -> None:
        for seq, gone in writes.rewrites.items():
            self._rewrite(conn, seq, gone)
        delete_chunks(conn, writes.deleted_chunks)
        if writes.deleted_topics:
            execute_rows(conn, "DELETE FROM topics WHERE id IN ({})", "?", [*writes.deleted_topics])
        if writes.new_chunks:
            execute_rows(conn, INSERT_CHUNK, "(?,?,?,?)", writes.new_chunks)
        if writes.topic_rows:
            execute_rows(conn, UPSERT_TOPIC, "(?,?,?,?,?)", writes.topic_rows)
        if writes.index_floor is not None:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'index_floor'", (str(writes.index_floor),)
            )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'commits'", (str(commits),))

    def _rewrite(self, conn: sqlite3.Connection, seq: int, gone: set[int]) -> None:
        """Drop the messages ``gone`` from chunk ``seq``, keeping the rest."""
        row = conn.execute("SELECT data FROM cache WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        kept = []
        for data in split_chunk(row[0]):
            stored = parse_message(data)
            if stored is not None and stored.index not in gone:
                kept.append(data)
        chunk = b"".join(kept)
        conn.execute(
            "UPDATE cache SET data = ?, crc = ? WHERE seq = ?", (chunk, checksum(chunk), seq)
        )

    def close(self) -> None:
        """Checkpoint the log into the file (so it is removed) and close."""
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._state.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- salvage -------------------------------------------------------------------

    def _salvage(self, reason: str) -> sqlite3.Connection:
        """Copy the damaged file aside, rebuild the store from what is readable, log the loss.

        If nothing at all can be read, refuse (leaving the file as it is) instead.
        """
        reason = _salvage.one_line(reason)
        try:
            aside = _salvage.copy_aside(self.path)
        except OSError as exc:
            raise StoreError(
                f"store {self.path} is damaged ({reason}) and cannot be copied aside: "
                f"{exc.strerror or exc}"
            ) from None
        topics, notes = _salvage.read_damaged(aside)
        if not topics:
            _salvage.remove_files(aside)
            raise StoreError(
                f"store {self.path} is damaged beyond repair ({reason}); "
                "move it away to start empty"
            )
        log.warning("store %s is damaged (%s); a copy is kept as %s", self.path, reason, aside)
        try:
            _salvage.remove_files(self.path)
            conn = connect(self.path, self.fsync)
            self._epoch = uuid.uuid4().hex
            create_schema(conn, self._epoch)
        except OSError as exc:
            raise StoreError(f"store {self.path}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from None
        self._conn = conn
        self._mirror = Mirror()
        self._commits = 0
        records: list[Record] = []
        kept = 0
        for state in topics:
            records.append(NextIndex(state.topic, state.next_index))
            for index, delivery, data in state.cache:
                records.append(CacheAdd(state.topic, index, delivery, data))
                kept += 1
        self.apply(records)
        self.salvaged = f"recovered {len(topics)} topic(s) and {kept} cached message(s)" + (
            "; lost " + "; ".join(notes) if notes else ""
        )
        self.losses.append(f"the file was damaged and salvaged: {self.salvaged}")
        log.warning(
            "store %s: %s; the epoch changed, so clients resubscribe from the start of the cache",
            self.path,
            self.salvaged,
        )
        return conn


def _count(value: object) -> int:
    """A count kept in ``meta`` (text), or 0 if missing (an old schema) or not a count."""
    text = str(value)
    return int(text) if text.isdigit() else 0

"""The file-backed store: SQLite (standard library) in WAL mode, one file per data directory.

Layout of ``DATA_DIR/mqcore.db``::

    meta(key, value)                        -- 'epoch': made once, when the file is created
    topics(id, name, next_index, floor)     -- one row per topic; no message below floor is live
    cache(seq, topic, data)                 -- a chunk: the wire bytes of one or more
                                               messages of a topic, stored by one commit

A commit writes, per topic it touched, one chunk with that topic's new cached
messages, and deletes the chunks none of whose messages are cached any more
(evicted below the floor, or consumed); a chunk that loses only some of its
messages to consumption is rewritten. So disk use stays
O(topics x cache size x message size), never the history. Chunks rather than
a row per message: most of a commit's cost is per row, and a pipelined
producer's batch is usually one chunk (measured: 100 single-message rows
cost 0.3 ms to insert and delete, one chunk of 100 messages 15 us). New
chunks go to the end of the table and old ones leave near its start, so a
commit rewrites a few pages whichever topics it touched. The write-ahead log
is checkpointed automatically (every ~4 MiB) and cut back to
:data:`WAL_SIZE_LIMIT`.

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
    may lose recent commits or damage the file (which is then salvaged at the
    next start, see below).

A damaged file is never a traceback. At start-up the file is checked
(``PRAGMA quick_check``) and every stored message is validated (it must be
the JSON of a message of that topic); a damaged file is copied aside
(``mqcore.db.damaged``), what can still be read goes into a new file, what
was lost is logged, and the epoch changes (index numbering may have started
over). A file that is not an mqcore store, is damaged beyond reading, or is
in use by another server is refused with a one-line
:class:`mqcore.StoreError` naming it.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import operator
import os
import shutil
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, Literal, get_args

import msgspec

from mqcore import (
    CacheAdd,
    CacheRemove,
    CacheTrim,
    Delivery,
    NextIndex,
    Record,
    Snapshot,
    StoreError,
    TopicState,
)

__all__ = [
    "DEFAULT_FSYNC",
    "FSYNC_MODES",
    "STORE_FILE",
    "FsyncMode",
    "SQLiteStore",
]

log = logging.getLogger("mqcore_tcp.store")

FsyncMode = Literal["always", "batch", "off"]
FSYNC_MODES: Final[tuple[FsyncMode, ...]] = get_args(FsyncMode)
#: Survives SIGKILL of the server without an fsync per commit.
DEFAULT_FSYNC: Final[FsyncMode] = "batch"
#: The store's file name inside a data directory.
STORE_FILE: Final = "mqcore.db"
#: Written into the file header so that a foreign SQLite file is never taken for ours.
APPLICATION_ID: Final = 0x6D71636F  # "mqco"
SCHEMA_VERSION: Final = 1
#: The write-ahead log is truncated back to this after a checkpoint that let it grow past it.
WAL_SIZE_LIMIT: Final = 16 << 20

_SYNCHRONOUS: Final[dict[FsyncMode, str]] = {"always": "FULL", "batch": "NORMAL", "off": "OFF"}

_INDEX: Final = operator.attrgetter("index")

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_index INTEGER NOT NULL,
    floor INTEGER NOT NULL
);
CREATE TABLE cache (
    seq INTEGER PRIMARY KEY,
    topic INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""


class _Topic:
    """What the store holds for one topic, mirrored in memory to find its chunks."""

    __slots__ = ("floor", "id", "indices", "where")

    def __init__(self, topic_id: int, floor: int = 0) -> None:
        self.id = topic_id
        self.floor = floor
        #: The live stored messages' indices, in order, and each one's chunk.
        self.indices: list[int] = []
        self.where: dict[int, int] = {}

    def add(self, index: int, seq: int) -> None:
        if index not in self.where:
            if self.indices and index < self.indices[-1]:
                bisect.insort(self.indices, index)
            else:
                self.indices.append(index)
        self.where[index] = seq

    def extend(self, indices: list[int], seq: int) -> None:
        """Add ``indices`` (sorted), all stored in chunk ``seq``."""
        if self.indices and indices[0] <= self.indices[-1]:
            for index in indices:
                self.add(index, seq)
        else:
            # The usual case, newer than everything stored: no per-index work in Python.
            self.indices += indices
            self.where.update(dict.fromkeys(indices, seq))

    def remove(self, index: int) -> None:
        if self.where.pop(index, None) is not None:
            self.indices.remove(index)

    def below(self, index: int) -> list[int]:
        """The live indices below ``index``."""
        return self.indices[: bisect.bisect_left(self.indices, index)]

    def trim(self, index: int) -> None:
        cut = bisect.bisect_left(self.indices, index)
        where = self.where
        for i in self.indices[:cut]:
            del where[i]
        del self.indices[:cut]
        self.floor = max(self.floor, index)


class _Stored(msgspec.Struct):
    """The fields of a stored message that must agree with its row."""

    topic: str
    index: int
    delivery: Delivery


_STORED_DECODER: Final = msgspec.json.Decoder(_Stored)


def _messages(chunk: object) -> list[bytes]:
    """Split a chunk into its messages (each ends with CRLF, which JSON text cannot hold)."""
    if not isinstance(chunk, bytes):
        return []
    return [m + b"\r\n" for m in chunk.split(b"\r\n")[:-1]]


def _parse(data: bytes) -> _Stored | None:
    """The fields of a stored message, or None if it is not one."""
    if not data.endswith(b"}\r\n"):
        return None
    try:
        return _STORED_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Damaged(Exception):
    """The file is an mqcore store, but cannot be read as it is: salvage it."""


_MAGIC: Final = b"SQLite format 3\x00"


def _header(path: Path) -> bytes:
    """The first 100 bytes of the file (fewer if it is shorter or unreadable)."""
    try:
        with path.open("rb") as f:
            return f.read(100)
    except OSError:
        return b""


def _is_ours(path: Path) -> bool:
    """Whether the file's header says it is an mqcore store (however damaged the rest)."""
    header = _header(path)
    return (
        len(header) == 100
        and header.startswith(_MAGIC)
        and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )


def _one_line(text: str, limit: int = 300) -> str:
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


class SQLiteStore:
    """A :class:`mqcore.Store` in one SQLite file, written by one process at a time.

    Opening creates the file (and its directory) if needed, checks it and, if
    it is damaged, salvages it; it raises :class:`mqcore.StoreError` with a
    one-line message naming the file if it cannot be used. Methods must not
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
        # What is stored, mirrored in memory to find rows without an index:
        # each topic's chunks, and how many live messages each chunk holds.
        self._topics: dict[str, _Topic] = {}
        self._live: dict[int, int] = {}
        self._next_seq = 1
        self._next_id = 1
        # A write failed half-way: the mirror may disagree with the file.
        self._broken = False
        self._conn = self._open()

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
            conn = self._connect(self.path)
            try:
                self._check(conn)
            except BaseException:
                conn.close()
                raise
        except _Damaged as exc:
            return self._salvage(str(exc))
        except sqlite3.Error as exc:
            error = self._error(exc)
            if isinstance(error, _Damaged):
                return self._salvage(str(exc))
            raise error from None
        return conn

    def _error(self, exc: sqlite3.Error) -> StoreError | _Damaged:
        """Classify an error met while opening: in use, not ours, damaged (ours), or other."""
        text = str(exc)
        if "locked" in text or "busy" in text:
            # Never touch a file another process holds, however it looks.
            return StoreError(f"store {self.path} is in use by another process ({text})")
        damaged = "malformed" in text or "corrupt" in text or "not a database" in text
        if damaged and _is_ours(self.path):
            return _Damaged(text)
        if damaged and _header(self.path).startswith(_MAGIC[:4]):
            return StoreError(
                f"store {self.path} is damaged beyond repair ({text}); move it away to start empty"
            )
        if damaged:
            return StoreError(
                f"store {self.path} is not an mqcore store ({text}); move it away to start empty"
            )
        return StoreError(f"store {self.path}: {text}")

    def _connect(self, path: Path) -> sqlite3.Connection:
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
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.fsync]}")
            if self.fsync == "always":
                # macOS: fsync() alone does not flush the disk's cache.
                conn.execute("PRAGMA fullfsync = ON")
                conn.execute("PRAGMA checkpoint_fullfsync = ON")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            # Take the write lock now: a second server fails here, not on its first message.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new file; raise _Damaged or StoreError for a bad one."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        if app_id == 0 and not tables:
            self._create(conn, uuid.uuid4().hex)
            return
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"store {self.path} is not an mqcore store (an SQLite file of another "
                "application); move it away or choose another --data-dir"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} was written by a newer mqcore (schema {version}, "
                f"this one reads {SCHEMA_VERSION})"
            )
        if not {"meta", "topics", "cache"} <= tables:
            raise _Damaged("tables are missing")
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            raise _Damaged(str(exc)) from None
        if problems != ["ok"]:
            raise _Damaged("\n".join(problems))

    def _create(self, conn: sqlite3.Connection, epoch: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- the Store interface -------------------------------------------------------

    def load(self) -> Snapshot:
        """Read the epoch and every topic; drop (and log) stored messages that are not intact."""
        try:
            return self._load(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None

    def _load(self, conn: sqlite3.Connection) -> Snapshot:
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None or not isinstance(row[0], str) or not row[0]:
            raise StoreError(f"store {self.path} has no epoch; move it away to start empty")
        names: dict[int, str] = {}
        topics: dict[str, _Topic] = {}
        states: dict[str, TopicState] = {}
        for topic_id, name, next_index, floor in conn.execute(
            "SELECT id, name, next_index, floor FROM topics"
        ):
            names[topic_id] = name
            topics[name] = _Topic(topic_id, floor)
            states[name] = TopicState(name, next_index, [])
        # Later chunks win: a message stored again (after a restart) replaces its copy.
        found: dict[str, dict[int, tuple[int, Delivery, bytes]]] = {}
        dropped = 0
        seqs: list[int] = []
        for seq, topic_id, chunk in conn.execute("SELECT seq, topic, data FROM cache ORDER BY seq"):
            seqs.append(seq)
            name = names.get(topic_id)
            messages = _messages(chunk)
            if name is None or not messages:
                dropped += len(messages) or 1
                continue
            for data in messages:
                stored = _parse(data)
                if stored is None or stored.topic != name:
                    dropped += 1
                elif stored.index >= topics[name].floor:
                    found.setdefault(name, {})[stored.index] = (seq, stored.delivery, data)
        if dropped:
            log.warning(
                "store %s: dropped %d stored message(s) that were not intact", self.path, dropped
            )
        live: dict[int, int] = {}
        for name, by_index in found.items():
            topic = topics[name]
            for index in sorted(by_index):
                seq, delivery, data = by_index[index]
                topic.add(index, seq)
                live[seq] = live.get(seq, 0) + 1
                states[name].cache.append((index, delivery, data))
        self._topics = topics
        self._live = live
        self._next_seq = 1 + max(seqs, default=0)
        self._next_id = 1 + max(names, default=0)
        dead = [seq for seq in seqs if seq not in live]
        if dead:
            # Chunks with nothing live (damaged, or all below a floor): reclaim them.
            conn.execute("BEGIN IMMEDIATE")
            _delete_chunks(conn, dead)
            conn.execute("COMMIT")
        return Snapshot(row[0], list(states.values()))

    def apply(self, records: Sequence[Record]) -> None:
        """Store ``records`` in one transaction.

        A message added and removed (or trimmed) again within ``records``
        never reaches the file; each topic touched gets one new chunk and one
        update of its row.
        """
        if self._broken:
            raise StoreError(f"store {self.path}: a write failed earlier; restart to recover")
        next_index: dict[str, int] = {}
        trims: dict[str, int] = {}
        added: dict[str, list[CacheAdd]] = {}
        consumed: dict[str, set[int]] = {}
        for record in records:
            # Most common first: this runs once per record.
            if type(record) is CacheAdd:
                same_topic = added.get(record.topic)
                if same_topic is None:
                    added[record.topic] = [record]
                else:
                    same_topic.append(record)
            elif type(record) is NextIndex:
                if record.next_index > next_index.get(record.topic, -1):
                    next_index[record.topic] = record.next_index
            elif type(record) is CacheTrim:
                if record.below > trims.get(record.topic, -1):
                    trims[record.topic] = record.below
            elif type(record) is CacheRemove:
                consumed.setdefault(record.topic, set()).add(record.index)
            else:
                raise StoreError(f"store {self.path}: not a record: {record!r}")
        if not (added or consumed or next_index or trims):
            return

        # Work out what to write without touching the mirror (in case it fails).
        topics = self._topics
        new_topics: dict[str, _Topic] = {}

        def topic_of(name: str) -> _Topic:
            topic = topics.get(name) or new_topics.get(name)
            if topic is None:
                topic = new_topics[name] = _Topic(self._next_id + len(new_topics))
            return topic

        # The messages each topic's new chunk holds. A message consumed or
        # trimmed within the same records never reaches the file: the core
        # never adds a message again after its removal, and a trim only follows
        # the adds it removes (later adds are of newer messages).
        chunks: dict[str, list[CacheAdd]] = {}
        for name, adds in added.items():
            taken = consumed.get(name)
            below = trims.get(name, -1)
            if taken is not None or below > adds[0].index:
                adds = [
                    a for a in adds if a.index >= below and (taken is None or a.index not in taken)
                ]
                if taken is not None:
                    taken.difference_update(a.index for a in added[name])
            if adds:
                if len(adds) > 1 and adds[-1].index < adds[-2].index:
                    adds.sort(key=_INDEX)
                chunks[name] = adds
        # Messages leaving stored chunks: trimmed (counted: the floor hides them,
        # so a chunk that keeps others needs no rewrite), or consumed or stored
        # again (listed: a chunk that keeps others is rewritten without them).
        trimmed: Counter[int] = Counter()
        dropped: dict[int, dict[tuple[str, int], _Topic]] = {}
        for name, below in trims.items():
            topic = topics.get(name)
            if topic is not None:
                trimmed.update(map(topic.where.__getitem__, topic.below(below)))
        for name, taken in consumed.items():
            topic = topics.get(name)
            if topic is None:
                continue
            below = trims.get(name, -1)
            for index in taken:
                seq = topic.where.get(index)
                if seq is not None and index >= below:
                    dropped.setdefault(seq, {})[name, index] = topic
        for name, adds in chunks.items():
            topic = topics.get(name)
            if topic is not None and topic.indices and adds[0].index <= topic.indices[-1]:
                for add in adds:
                    seq = topic.where.get(add.index)
                    if seq is not None:
                        dropped.setdefault(seq, {})[name, add.index] = topic
        live = self._live
        doomed = [
            seq
            for seq in {*trimmed, *dropped}
            if trimmed.get(seq, 0) + len(dropped.get(seq, ())) >= live[seq]
        ]
        rewrite = {seq: leaving for seq, leaving in dropped.items() if seq not in doomed}
        inserts: list[object] = []
        stored: list[tuple[_Topic, list[int], int]] = []
        seq = self._next_seq
        for name, adds in chunks.items():
            topic = topic_of(name)
            inserts += (seq, topic.id, b"".join([add.data for add in adds]))
            stored.append((topic, [add.index for add in adds], seq))
            seq += 1
        rows: list[object] = []
        for name in {*next_index, *trims, *chunks}:
            topic = topic_of(name)
            floor = max(topic.floor, trims.get(name, 0))
            rows += (topic.id, name, next_index.get(name, 0), floor)

        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for old, leaving in rewrite.items():
                    self._rewrite(conn, old, {index for _, index in leaving})
                _delete_chunks(conn, doomed)
                if inserts:
                    _execute_rows(conn, "INSERT INTO cache VALUES {}", "(?,?,?)", inserts)
                _execute_rows(
                    conn,
                    "INSERT INTO topics VALUES {} ON CONFLICT (id) DO UPDATE SET"
                    " next_index = max(next_index, excluded.next_index),"
                    " floor = max(floor, excluded.floor)",
                    "(?,?,?,?)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._broken = True
            raise StoreError(f"cannot write to store {self.path}: {exc}") from None

        # Stored: now the mirror follows.
        topics.update(new_topics)
        self._next_id += len(new_topics)
        for name, below in trims.items():
            topics[name].trim(below)
        for old, count in trimmed.items():
            live[old] -= count
        for old, leaving in dropped.items():
            for (_, index), topic in leaving.items():
                topic.remove(index)
            live[old] -= len(leaving)
        for old in doomed:
            del live[old]
        for topic, new_indices, new_seq in stored:
            topic.extend(new_indices, new_seq)
            live[new_seq] = len(new_indices)
        self._next_seq = seq

    def _rewrite(self, conn: sqlite3.Connection, seq: int, gone: set[int]) -> None:
        """Drop the messages ``gone`` from chunk ``seq``, keeping the rest."""
        row = conn.execute("SELECT data FROM cache WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        kept = []
        for data in _messages(row[0]):
            stored = _parse(data)
            if stored is not None and stored.index not in gone:
                kept.append(data)
        conn.execute("UPDATE cache SET data = ? WHERE seq = ?", (b"".join(kept), seq))

    def close(self) -> None:
        """Checkpoint the log into the file (so it is removed) and close."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- salvage -------------------------------------------------------------------

    def _salvage(self, reason: str) -> sqlite3.Connection:
        """Copy the damaged file aside, rebuild the store from what is readable, log the loss.

        If nothing at all can be read, refuse (leaving the file as it is) instead.
        """
        reason = _one_line(reason)
        aside = self._aside()
        try:
            for suffix in ("", "-wal"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    shutil.copyfile(source, f"{aside}{suffix}")
            _repair_header(aside)
        except OSError as exc:
            raise StoreError(
                f"store {self.path} is damaged ({reason}) and cannot be copied aside: "
                f"{exc.strerror or exc}"
            ) from None
        topics, notes = self._read_damaged(aside)
        if not topics:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{aside}{suffix}").unlink(missing_ok=True)
            raise StoreError(
                f"store {self.path} is damaged beyond repair ({reason}); "
                "move it away to start empty"
            )
        log.warning("store %s is damaged (%s); a copy is kept as %s", self.path, reason, aside)
        try:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            conn = self._connect(self.path)
            self._create(conn, uuid.uuid4().hex)
        except OSError as exc:
            raise StoreError(f"store {self.path}: {exc.strerror or exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from None
        self._conn = conn
        self._topics = {}
        self._live = {}
        self._next_seq = self._next_id = 1
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
        log.warning(
            "store %s: %s; the epoch changed, so clients resubscribe from the start of the cache",
            self.path,
            self.salvaged,
        )
        return conn

    def _aside(self) -> Path:
        candidate = self.path.with_name(self.path.name + ".damaged")
        n = 1
        while any(Path(f"{candidate}{s}").exists() for s in ("", "-wal", "-shm")):
            candidate = self.path.with_name(f"{self.path.name}.damaged.{n}")
            n += 1
        return candidate

    def _read_damaged(self, path: Path) -> tuple[list[TopicState] | None, list[str]]:
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
            query = "SELECT id, name, next_index, floor FROM topics"
            for topic_id, name, index, floor in _rows(conn, query, (), notes, "topics"):
                readable = True
                if isinstance(topic_id, int) and isinstance(name, str) and isinstance(index, int):
                    names[topic_id] = name
                    next_index[name] = index
                    floors[name] = floor if isinstance(floor, int) else 0
            # The whole table from both ends, so a bad page in the middle loses
            # only what is on it. A message names its own topic: it is kept even
            # if its topic's row was lost.
            for order in ("ASC", "DESC"):
                query = f"SELECT seq, topic, data FROM cache ORDER BY seq {order}"
                for seq, topic_id, chunk in _rows(conn, query, (), None, ""):
                    readable = True
                    chunks.setdefault(seq, (topic_id, chunk))
        if not readable:
            return None, notes
        caches: dict[str, dict[int, tuple[int, Delivery, bytes]]] = {}
        dropped = 0
        for _seq, (topic_id, chunk) in sorted(chunks.items(), key=lambda kv: str(kv[0])):
            name = names.get(topic_id) if isinstance(topic_id, int) else None
            for data in _messages(chunk) or [b""]:
                stored = _parse(data)
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


def _delete_chunks(conn: sqlite3.Connection, seqs: list[int]) -> None:
    """Delete the chunks ``seqs``: runs of consecutive ones by range, the rest by list."""
    if not seqs:
        return
    seqs.sort()
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
        _execute_rows(conn, "DELETE FROM cache WHERE {}", "seq BETWEEN ? AND ?", ranges, " OR ")
    if single:
        _execute_rows(conn, "DELETE FROM cache WHERE seq IN ({})", "?", single)


#: Rows per statement, largest first: a few statement shapes, each prepared once and cached.
_CHUNKS: Final = (256, 64, 16, 4, 1)
#: SQLite before 3.32 allows at most 999 parameters in a statement.
_MAX_PARAMS: Final = 999


def _execute_rows(
    conn: sqlite3.Connection, template: str, row: str, params: list[object], sep: str = ","
) -> None:
    """Run ``template`` with ``{}`` replaced by many ``row`` placeholders, for all ``params``.

    One statement per many rows, rather than executemany's one per row,
    because most of the cost of a row is crossing from Python into SQLite.
    """
    width = row.count("?")
    total = len(params) // width
    done = 0
    for chunk in (c for c in _CHUNKS if c * width <= _MAX_PARAMS):
        sql = template.format(sep.join([row] * chunk))
        while total - done >= chunk:
            conn.execute(sql, params[done * width : (done + chunk) * width])
            done += chunk


def _rows(
    conn: sqlite3.Connection,
    query: str,
    params: tuple[object, ...],
    notes: list[str] | None,
    what: str,
) -> Iterator[tuple[object, ...]]:
    """Yield rows until the first one SQLite cannot read; note the failure if asked."""
    try:
        cursor = conn.execute(query, params)
        for row in cursor:
            yield tuple(row)
    except sqlite3.Error as exc:
        if notes is not None:
            notes.append(f"the rest of the {what} table ({exc})")

"""The SQLite store under attack: full and read-only disks, damage, rollbacks, big batches.

Each test here failed on the store before issue 8 (items 4, 9 and 10) was fixed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqcore import (
    CacheAdd,
    CacheRemove,
    CacheTrim,
    Delivery,
    DropTopic,
    MemoryStore,
    NextIndex,
    Record,
    StoreError,
    StoreUnavailable,
)
from mqcore_tcp import SQLiteStore
from mqcore_tcp.store import STORE_FILE

from .support import CountingIndex, fill, wire

STATE_FILE = "mqcore.state"


def batch(topic: str, start: int, count: int, size: int = 1000) -> list[Record]:
    """``count`` cached messages of ``size`` bytes from index ``start``, then the next index."""
    adds: list[Record] = [
        CacheAdd(topic, i, "all", wire(topic, "x" * size, i)) for i in range(start, start + count)
    ]
    return [*adds, NextIndex(topic, start + count)]


def cached(store: SQLiteStore) -> dict[str, list[int]]:
    return {t.topic: [i for i, _, _ in t.cache] for t in store.load().topics}


def open_store(path: Path) -> SQLiteStore:
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(path)


# -- item 9: a full or read-only disk is transient ------------------------------------


def test_a_full_database_is_unavailable_then_the_same_batch_succeeds(data_dir: Path) -> None:
    with open_store(data_dir / STORE_FILE) as store:
        store.apply(batch("t", 0, 5))
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        # SQLITE_FULL, as a full disk gives it: the file may not grow.
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        big = [*batch("t", 5, 200), CacheRemove("t", 0), DropTopic("gone", 7)]
        for _ in range(2):  # refused again and again, never "broken"
            with pytest.raises(StoreUnavailable, match="cannot be written for now") as info:
                store.apply(big)
            assert "\n" not in str(info.value)
        assert cached(store) == {"t": [0, 1, 2, 3, 4]}  # nothing half-stored
        store._conn.execute("PRAGMA max_page_count = 1073741823")
        store.apply(big)  # space is back: the same batch is stored
        assert cached(store) == {"t": list(range(1, 205))}
    with open_store(data_dir / STORE_FILE) as store:
        assert cached(store) == {"t": list(range(1, 205))}
        assert store.load().index_floor == 7
        assert store.losses == []


def test_a_read_only_database_is_unavailable_then_writable_again(data_dir: Path) -> None:
    with open_store(data_dir / STORE_FILE) as store:
        store.apply(batch("t", 0, 2))
        store._conn.execute("PRAGMA query_only = ON")  # SQLITE_READONLY
        with pytest.raises(StoreUnavailable, match="readonly"):
            store.apply(batch("t", 2, 2))
        store._conn.execute("PRAGMA query_only = OFF")
        store.apply(batch("t", 2, 2))
        assert cached(store) == {"t": [0, 1, 2, 3]}


def test_a_write_the_os_refuses_is_unavailable_in_a_real_process(data_dir: Path) -> None:
    """The file may not grow (RLIMIT_FSIZE: the OS fails the write as on a full quota)."""
    script = textwrap.dedent(
        """
        import os, resource, signal, sys
        from mqcore import CacheAdd, NextIndex, StoreUnavailable
        from mqcore_tcp import SQLiteStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = SQLiteStore.in_directory(sys.argv[1])
        line = b'{"command": "send", "topic": "t", "msg": "%s", "delivery": "all", "index": %d}'
        def batch(start, n):
            data = [line % (b"x" * 1000, i) + b"\\r\\n" for i in range(start, start + n)]
            adds = [CacheAdd("t", start + k, "all", d) for k, d in enumerate(data)]
            return adds + [NextIndex("t", start + n)]
        store.apply(batch(0, 10))
        wal = os.path.getsize(os.path.join(sys.argv[1], "mqcore.db-wal"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal + 8192, resource.RLIM_INFINITY))
        try:
            store.apply(batch(10, 200))
        except StoreUnavailable as exc:
            print("unavailable:", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        store.apply(batch(10, 200))
        print("stored:", len(store.load().topics[0].cache))
        store.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "unavailable: store" in result.stdout
    assert "stored: 210" in result.stdout


def test_any_other_failure_is_a_one_line_store_error(data_dir: Path) -> None:
    store = open_store(data_dir / STORE_FILE)
    with pytest.raises(StoreError, match="not a record") as info:
        store.apply([object()])  # type: ignore[list-item]
    assert not isinstance(info.value, StoreUnavailable)
    store.apply(batch("t", 0, 1))  # still usable
    store.close()
    with pytest.raises(StoreError, match="closed") as info:
        store.apply(batch("t", 1, 1))
    assert not isinstance(info.value, StoreUnavailable)


# -- item 4: confirming many `one` messages is linear ---------------------------------


def test_confirming_one_messages_compares_each_index_o1_times(data_dir: Path) -> None:
    """Newest first, one batch each: a list.remove per index compared n^2/2 times."""
    n = 2000
    indices = [CountingIndex(i) for i in range(n)]
    with open_store(data_dir / STORE_FILE) as store:
        for start in range(0, n, 10):
            store.apply(
                [
                    CacheAdd("jobs", i, "one", wire("jobs", "j", i, "one"))
                    for i in indices[start : start + 10]
                ]
                + [NextIndex("jobs", start + 10)]
            )
        CountingIndex.comparisons = 0
        for index in reversed(indices):
            store.apply([CacheRemove("jobs", index)])
        assert CountingIndex.comparisons < 20 * n
        assert cached(store) == {"jobs": []}


def test_a_large_batch_of_confirmations_is_stored(data_dir: Path) -> None:
    n = 100_000
    with open_store(data_dir / STORE_FILE) as store:
        for start in range(0, n, 1000):
            store.apply(
                [
                    CacheAdd("jobs", i, "one", wire("jobs", "j", i, "one"))
                    for i in range(start, start + 1000)
                ]
                + [NextIndex("jobs", start + 1000)]
            )
        # Every other one confirmed in one batch: every chunk is rewritten once.
        store.apply([CacheRemove("jobs", i) for i in range(0, n, 2)])
        store.apply([CacheRemove("jobs", i) for i in range(1, n, 2)])
        assert cached(store) == {"jobs": []}
        assert store._conn.execute("SELECT count(*) FROM cache").fetchone()[0] == 0


# -- item 10: damage and rollbacks are detected ----------------------------------------


def flip_in_file(path: Path, needle: bytes, replacement: bytes) -> None:
    """Change bytes inside the (checkpointed) file, as a bad sector or bit flip would."""
    data = path.read_bytes()
    assert data.count(needle) == 1, needle
    path.write_bytes(data.replace(needle, replacement))


def closed_store(path: Path) -> str:
    """A store with topics t (indices 0-2) and u (0-1), cleanly closed; returns its epoch."""
    with open_store(path) as store:
        store.apply(
            [
                *[CacheAdd("t", i, "all", wire("t", f"msg-{i}", i)) for i in range(3)],
                NextIndex("t", 3),
                *[CacheAdd("u", i, "all", wire("u", f"other-{i}", i)) for i in range(2)],
                NextIndex("u", 2),
            ]
        )
        return store.load().epoch


@pytest.mark.parametrize(
    ("needle", "replacement", "left"),
    [
        # Invalid UTF-8 in a message: it used to be replayed as it was.
        (b"msg-1", b"msg\xff1", {"u": [0, 1]}),
        # Still valid JSON of the topic: only the checksum tells.
        (b"msg-1", b"msg-7", {"u": [0, 1]}),
    ],
)
def test_a_flipped_byte_in_a_message_is_dropped_under_a_new_epoch(
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
    needle: bytes,
    replacement: bytes,
    left: dict[str, list[int]],
) -> None:
    path = data_dir / STORE_FILE
    epoch = closed_store(path)
    flip_in_file(path, needle, replacement)
    with caplog.at_level(logging.WARNING), open_store(path) as store:
        snapshot = store.load()
        assert {t.topic: [i for i, _, _ in t.cache] for t in snapshot.topics} == {"t": [], **left}
        assert snapshot.epoch != epoch
        assert any("dropped 3 stored message(s)" in loss for loss in store.losses)
    assert any("epoch changed" in r.getMessage() for r in caplog.records)
    with open_store(path) as store:  # the damage is gone; the next start is clean
        assert store.load().epoch == snapshot.epoch
        assert store.losses == []


def test_a_bad_byte_in_a_topic_name_or_index_is_no_traceback(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = data_dir / STORE_FILE
    epoch = closed_store(path)
    conn = sqlite3.connect(path)
    # A name that is not UTF-8, and a next index that went back (its checksum no longer holds).
    conn.execute("UPDATE topics SET name = CAST(x'74ff' AS TEXT) WHERE name = 't'")
    conn.execute("UPDATE topics SET next_index = 1 WHERE name = 'u'")
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING), open_store(path) as store:
        snapshot = store.load()
        assert snapshot.topics == []
        assert snapshot.epoch != epoch
        assert any("2 topic(s)" in loss for loss in store.losses)
        store.apply(batch("t", 0, 1))  # and it keeps working
    assert any("not intact" in r.getMessage() for r in caplog.records)


def test_a_rolled_back_log_is_detected_and_starts_a_new_epoch(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = data_dir / STORE_FILE
    old = data_dir / "older"
    old.mkdir(parents=True)
    store = open_store(path)
    epoch = store.load().epoch
    for k in range(5):
        store.apply(batch("t", k * 10, 10, size=10))
    # What power loss can leave: the file and log as they were some commits ago...
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", old / f"{STORE_FILE}{suffix}")
    for k in range(5, 9):
        store.apply(batch("t", k * 10, 10, size=10))
    # ...with the process gone (no clean close) and the state file as it was last written.
    os.close(os.open(path, os.O_RDONLY))
    store._conn.close()
    for suffix in ("", "-wal"):
        shutil.copyfile(old / f"{STORE_FILE}{suffix}", f"{path}{suffix}")
    with caplog.at_level(logging.ERROR), open_store(path) as after:
        snapshot = after.load()
        assert snapshot.topics[0].next_index == 50  # indices 50-89 would be handed out again...
        assert snapshot.epoch != epoch  # ...but under a new epoch
        [loss] = after.losses
        assert "went back from commit 9 to 5" in loss
    assert any("went back" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_vanished_store_is_a_logged_loss_not_a_silent_fresh_start(
    data_dir: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    path = data_dir / STORE_FILE
    epoch = closed_store(path)
    assert (data_dir / STATE_FILE).exists()
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.ERROR), open_store(path) as store:
        snapshot = store.load()
        assert snapshot.topics == []
        assert snapshot.epoch != epoch
        [loss] = store.losses
        assert f"epoch {epoch}" in loss
        assert "every message it held is lost" in loss
    assert any("every message it held is lost" in r.getMessage() for r in caplog.records)


def test_a_store_written_before_checksums_opens_and_is_migrated(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Schema 1, as mqcore wrote it before: no crc columns, no commit count, no state file."""
    path = data_dir / STORE_FILE
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode = WAL;
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                             next_index INTEGER NOT NULL, floor INTEGER NOT NULL);
        CREATE TABLE cache (seq INTEGER PRIMARY KEY, topic INTEGER NOT NULL, data BLOB NOT NULL);
        INSERT INTO meta VALUES ('epoch', 'old-epoch');
        INSERT INTO topics VALUES (1, 't', 3, 1);
        PRAGMA application_id = 1836147567;
        PRAGMA user_version = 1;
        """
    )
    conn.execute("INSERT INTO cache VALUES (1, 1, ?)", (wire("t", "a", 0) + wire("t", "b", 1),))
    conn.execute("INSERT INTO cache VALUES (2, 1, ?)", (wire("t", "c", 2),))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.INFO), open_store(path) as store:
        snapshot = store.load()
        assert snapshot.epoch == "old-epoch"  # nothing was lost: same numbering
        assert [(t.topic, t.next_index, [i for i, _, _ in t.cache]) for t in snapshot.topics] == [
            ("t", 3, [1, 2])
        ]
        store.apply([CacheRemove("t", 1), *batch("t", 3, 1)])
    assert any("upgraded from schema 1 to 2" in r.getMessage() for r in caplog.records)
    with open_store(path) as store:
        assert cached(store) == {"t": [2, 3]}
        assert store.load().epoch == "old-epoch"
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == 2


# -- DropTopic and the index floor -----------------------------------------------------


def test_a_dropped_topic_is_deleted_and_the_floor_persists(data_dir: Path) -> None:
    path = data_dir / STORE_FILE
    with open_store(path) as store:
        fill(store, topics=2, per_topic=5)
        store.apply([DropTopic("t0", 5), DropTopic("t1", 3)])
        snapshot = store.load()
        assert (snapshot.topics, snapshot.index_floor) == ([], 5)
        assert store._conn.execute("SELECT count(*) FROM cache").fetchone()[0] == 0
        store.apply([*batch("t0", 5, 2), DropTopic("t1", 4)])  # recreated; the floor stays 5
    with open_store(path) as store:
        snapshot = store.load()
        assert snapshot.index_floor == 5
        assert [(t.topic, t.next_index, [i for i, _, _ in t.cache]) for t in snapshot.topics] == [
            ("t0", 7, [5, 6])
        ]


TOPICS = ("t", "u", "v")


@st.composite
def record_batches(draw: st.DrawFn) -> list[list[Record]]:
    """Batches of records as a durable core makes them: fresh indices, trims and removes
    of what was numbered, and drops whose next index is the topic's."""
    counter = {t: 0 for t in TOPICS}
    floor = 0
    batches: list[list[Record]] = []
    for _ in range(draw(st.integers(1, 12))):
        records: list[Record] = []
        for _ in range(draw(st.integers(0, 6))):
            topic = draw(st.sampled_from(TOPICS))
            kind = draw(st.sampled_from(["add", "remove", "trim", "drop", "next"]))
            n = counter[topic]
            if kind == "add":
                delivery: Delivery = draw(st.sampled_from(("all", "one")))
                start = max(n, floor)
                count = draw(st.integers(1, 3))
                for i in range(start, start + count):
                    records.append(CacheAdd(topic, i, delivery, wire(topic, "m", i, delivery)))
                counter[topic] = start + count
                records.append(NextIndex(topic, counter[topic]))
            elif kind == "remove" and n:
                records.append(CacheRemove(topic, draw(st.integers(0, n - 1))))
            elif kind == "trim" and n:
                records.append(CacheTrim(topic, draw(st.integers(0, n))))
            elif kind == "drop":
                records.append(DropTopic(topic, n))
                floor = max(floor, n)
            elif kind == "next":
                counter[topic] = max(n, floor) + 1
                records.append(NextIndex(topic, counter[topic]))
        batches.append(records)
    return batches


def contents(store: SQLiteStore | MemoryStore) -> tuple[int, dict[str, tuple[int, list[int]]]]:
    snapshot = store.load()
    return snapshot.index_floor, {
        t.topic: (t.next_index, [i for i, _, _ in t.cache])
        for t in snapshot.topics
        if t.next_index or t.cache
    }


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=record_batches())
def test_the_sqlite_store_agrees_with_the_memory_store(
    data_dir: Path, batches: list[list[Record]]
) -> None:
    path = data_dir / f"{os.urandom(4).hex()}.db"
    memory = MemoryStore("e")
    with open_store(path) as store:
        for records in batches:
            memory.apply(records)
            store.apply(records)
            assert contents(store) == contents(memory)
    with open_store(path) as store:
        assert contents(store) == contents(memory)

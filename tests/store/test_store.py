"""Durable records, the in-memory store and the SQLite store: round trips, restarts, damage."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqcore import (
    Broker,
    CacheAdd,
    CacheRemove,
    CacheTrim,
    MemoryStore,
    NextIndex,
    Record,
    Store,
    StoreError,
    TopicState,
)
from mqcore_tcp import SQLiteStore
from mqcore_tcp.store import STORE_FILE

from ..wire import line, parse
from .support import (
    assert_intact,
    chunks,
    fill,
    make_store_file,
    restored,
    send,
    sub,
    wire,
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


# -- what the core emits -------------------------------------------------------------


def test_records_are_made_once_per_batch_and_skip_what_was_evicted_again() -> None:
    broker = Broker(cache_size=2, durable=True)
    p = broker.open_connection()
    broker.receive_data(p, send("t", "m0") + send("t", "m1", "one"))
    broker.receive_data(p, send("t", "m2", cache=False) + send("t", "m3"))
    out = broker.take_output()
    # m0 was cached and evicted within the batch: the store never sees it.
    assert out.records == [
        CacheTrim("t", 1),
        CacheAdd("t", 1, "one", wire("t", "m1", 1, "one")),
        CacheAdd("t", 3, "all", wire("t", "m3", 3)),
        NextIndex("t", 4),
    ]
    assert out.after_write == {}
    broker.receive_data(p, send("t", "m4"))
    assert broker.take_output().records == [
        CacheTrim("t", 2),
        CacheAdd("t", 4, "all", wire("t", "m4", 4)),
        NextIndex("t", 5),
    ]


def test_a_non_durable_broker_emits_nothing_to_store() -> None:
    broker = Broker(cache_size=2)
    p = broker.open_connection()
    broker.receive_data(p, send("t", "m0") + send("t", "m1", "one") + sub("t"))
    out = broker.take_output()
    assert out.records == []
    assert out.after_write == {}


def test_a_replayed_one_message_is_forgotten_only_after_its_bytes_are_written() -> None:
    broker = Broker(cache_size=5, durable=True)
    p = broker.open_connection()
    broker.receive_data(p, send("t", "j", "one") + send("t", "a"))
    broker.take_output()
    c = broker.open_connection()
    broker.receive_data(c, sub("t"))
    out = broker.take_output()
    assert out.records == []  # nothing to store before the replay is written...
    assert out.after_write == {c: [CacheRemove("t", 0)]}  # ...and this after it
    assert [m["index"] for m in parse(out.writes[c])[1:]] == [0, 1]


def test_a_one_message_delivered_live_is_stored_until_written() -> None:
    broker = Broker(cache_size=5, durable=True)
    c = broker.open_connection()
    broker.receive_data(c, sub("t"))
    broker.take_output()
    p = broker.open_connection()
    broker.receive_data(p, send("t", "j", "one") + send("t", "u", "one", cache=False))
    out = broker.take_output()
    # Not in the broker's cache (it reached a subscriber), but stored as if it
    # were until its bytes are written: a crash in between replays it.
    assert broker.cached("t") == []
    assert out.records == [CacheAdd("t", 0, "one", wire("t", "j", 0, "one")), NextIndex("t", 2)]
    assert out.after_write == {c: [CacheRemove("t", 0)]}


def test_a_one_message_sent_and_replayed_in_one_batch_is_still_stored_first() -> None:
    broker = Broker(cache_size=5, durable=True)
    p = broker.open_connection()
    c = broker.open_connection()
    broker.receive_data(p, send("t", "j", "one"))
    broker.receive_data(c, sub("t"))
    out = broker.take_output()
    assert out.records == [CacheAdd("t", 0, "one", wire("t", "j", 0, "one")), NextIndex("t", 1)]
    assert out.after_write == {c: [CacheRemove("t", 0)]}


def test_restore_trims_a_cache_larger_than_the_cache_size_and_never_reuses_an_index() -> None:
    broker = Broker(cache_size=2, durable=True)
    cache: list[tuple[int, Any, bytes]] = [(i, "all", wire("t", f"m{i}", i)) for i in (5, 3, 4)]
    # A next index behind the cache (a damaged store) must not hand out index 5 again.
    broker.restore([TopicState("t", 2, cache)])
    assert broker.next_index("t") == 6
    assert broker.cached("t") == [wire("t", "m4", 4), wire("t", "m5", 5)]
    assert broker.take_output().records == [CacheTrim("t", 4)]
    shrunk = Broker(cache_size=0, durable=True)
    shrunk.restore([TopicState("t", 6, cache)])
    assert shrunk.cached("t") == []
    assert shrunk.take_output().records == [CacheTrim("t", 6)]


# -- restarts against a model: every store must agree -------------------------------

TOPICS = ("t", "u")

op_strategy = st.one_of(
    st.tuples(
        st.just("send"),
        st.integers(0, 2),
        st.sampled_from(TOPICS),
        st.sampled_from(["all", "one"]),
        st.booleans(),
    ),
    st.tuples(
        st.just("sub"),
        st.integers(0, 2),
        st.sampled_from(TOPICS),
        st.integers(-1, 6),
        st.booleans(),
    ),
    st.tuples(st.just("unsub"), st.integers(0, 2), st.sampled_from(TOPICS)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("write")),
    st.tuples(st.just("drop"), st.integers(0, 2)),
)


def run_and_restart(
    store: Store, cache_size: int, ops: list[tuple[Any, ...]], crash: bool
) -> tuple[Broker, Broker, set[tuple[str, int]], dict[str, int]]:
    """Drive a durable broker as a transport would, then restart from ``store``.

    Records are stored per output; ``after_write`` records wait for a "write"
    op (the socket write), and with ``crash`` the last ones are never stored.
    Returns the original broker, the restarted one, the consumptions that
    were never stored, and per topic the index past every index handed out.
    """
    broker = Broker(cache_size=cache_size, durable=True, choose=lambda n: n - 1)
    conns = [broker.open_connection() for _ in range(3)]
    unwritten: list[Record] = []
    handed_out: dict[str, int] = {}
    sent = 0

    def flush() -> None:
        out = broker.take_output()
        store.apply(out.records)
        for records in out.after_write.values():
            unwritten.extend(records)

    for op in ops:
        if op[0] == "send":
            _, c, topic, delivery, cache = op
            handed_out[topic] = broker.next_index(topic) + 1  # the index this send gets, + 1
            broker.receive_data(conns[c], send(topic, f"m{sent}", delivery, cache=cache))
            sent += 1
        elif op[0] == "sub":
            _, c, topic, last_seen, cache = op
            broker.receive_data(conns[c], sub(topic, last_seen=last_seen, cache=cache))
        elif op[0] == "unsub":
            broker.receive_data(conns[op[1]], line({"command": "unsubscribe", "topic": op[2]}))
        elif op[0] == "flush":
            flush()
        elif op[0] == "write":
            flush()
            store.apply(unwritten)
            unwritten.clear()
        else:
            broker.connection_lost(conns[op[1]])
            conns[op[1]] = broker.open_connection()
    flush()
    if not crash:
        store.apply(unwritten)
        unwritten.clear()
    lost = {(r.topic, r.index) for r in unwritten if isinstance(r, CacheRemove)}
    return broker, restored(store, cache_size), lost, handed_out


def check_restart(
    original: Broker,
    after: Broker,
    unconfirmed: set[tuple[str, int]],
    cache_size: int,
    handed_out: dict[str, int],
) -> None:
    for topic in TOPICS:
        # No index is handed out twice for a topic. A topic never sent to (or
        # forgotten) is not stored: after the restart it starts at the stored
        # index floor, past every index it ever had (the running broker's own
        # floor may be higher still). One with cached messages continues
        # exactly where it was.
        assert after.next_index(topic) >= handed_out.get(topic, 0)
        if original.cached(topic):
            assert after.next_index(topic) == original.next_index(topic)
        before = {json.loads(d)["index"]: d for d in original.cached(topic)}
        now = {json.loads(d)["index"]: d for d in after.cached(topic)}
        pending = {i for t, i in unconfirmed if t == topic}
        # Nothing comes back that was evicted or whose consumption was stored...
        assert set(now) <= set(before) | pending
        # ...everything cached is kept, except what newer unconfirmed `one`
        # messages pushed beyond the cache bound...
        pushed_out = len(now) == cache_size and now
        for index, data in before.items():
            assert now.get(index) == data or (pushed_out and index < min(now))
        # ...and with every consumption stored, the restart is exact.
        if not pending:
            assert after.cached(topic) == original.cached(topic)


@settings(max_examples=300, deadline=None)
@given(
    cache_size=st.integers(0, 3),
    ops=st.lists(op_strategy, max_size=40),
    crash=st.booleans(),
)
def test_memory_store_restores_the_broker(
    cache_size: int, ops: list[tuple[Any, ...]], crash: bool
) -> None:
    store = MemoryStore("e")
    original, after, unconfirmed, handed_out = run_and_restart(store, cache_size, ops, crash)
    check_restart(original, after, unconfirmed, cache_size, handed_out)
    # Disk use stays bounded: the cache, plus `one` messages not yet confirmed.
    assert store.cached_count() <= 2 * cache_size + len(unconfirmed)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cache_size=st.integers(0, 3),
    ops=st.lists(op_strategy, max_size=40),
    crash=st.booleans(),
)
def test_sqlite_store_restores_the_broker(
    data_dir: Path, cache_size: int, ops: list[tuple[Any, ...]], crash: bool
) -> None:
    path = data_dir / f"{os.urandom(4).hex()}.db"
    with SQLiteStore(path) as store:
        original, _, unconfirmed, handed_out = run_and_restart(store, cache_size, ops, crash)
    # A real restart: a new process would open the file again.
    with SQLiteStore(path) as store:
        check_restart(original, restored(store, cache_size), unconfirmed, cache_size, handed_out)
        epoch = store.load().epoch
    with SQLiteStore(path) as store:
        assert store.load().epoch == epoch


def test_memory_store_applies_trims_removes_and_indices() -> None:
    store = MemoryStore("e")
    store.apply(
        [CacheAdd("t", i, "all", wire("t", f"m{i}", i)) for i in range(4)]
        + [NextIndex("t", 4), CacheRemove("t", 2), CacheTrim("t", 1), NextIndex("t", 3)]
    )
    [state] = store.load().topics
    assert state.next_index == 4  # an index never goes back
    assert [i for i, _, _ in state.cache] == [1, 3]
    with pytest.raises(StoreError):
        store.apply([object()])  # type: ignore[list-item]
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.apply([])


# -- the SQLite store ----------------------------------------------------------------


def test_sqlite_round_trip_and_a_persistent_epoch(data_dir: Path) -> None:
    with SQLiteStore.in_directory(data_dir / "new" / "dir") as store:
        epoch = store.load().epoch
        broker = fill(store)
    with SQLiteStore.in_directory(data_dir / "new" / "dir") as store:
        snapshot = store.load()
        assert snapshot.epoch == epoch
        again = Broker(cache_size=10)
        again.restore(snapshot.topics)
        for t in range(3):
            assert again.next_index(f"t{t}") == 30
            assert again.cached(f"t{t}") == broker.cached(f"t{t}")
    with SQLiteStore(data_dir / "other.db") as other:
        assert other.load().epoch != epoch


def test_sqlite_store_is_bounded_by_the_cache_and_checkpoints_its_log(data_dir: Path) -> None:
    with SQLiteStore(data_dir / STORE_FILE) as store:
        broker = restored(store, 5)
        p = broker.open_connection()
        big = "x" * 1000
        for _ in range(300):
            broker.receive_data(p, b"".join(send(f"t{t}", big) for t in range(10)))
            store.apply(broker.take_output().records)
        # 3 MB were sent; 10 topics x 5 messages x ~1 kB are kept.
        wal = data_dir / (STORE_FILE + "-wal")
        assert wal.stat().st_size < 8 << 20
        assert sum(len(s.cache) for s in store.load().topics) == 50
        assert sum(map(len, chunks(store))) <= 2 * 50
    # A clean close checkpoints the log into the file and removes it.
    assert not wal.exists()
    assert (data_dir / STORE_FILE).stat().st_size < 1 << 20


def test_a_second_server_on_the_same_store_is_refused(data_dir: Path) -> None:
    with SQLiteStore(data_dir / STORE_FILE):
        with pytest.raises(StoreError, match="in use by another process") as info:
            SQLiteStore(data_dir / STORE_FILE)
        assert str(data_dir / STORE_FILE) in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a database at all, " * 300, "not an mqcore store"),
        (os.urandom(10000), "not an mqcore store"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused_with_one_line(
    data_dir: Path, content: bytes, reason: str
) -> None:
    path = data_dir / STORE_FILE
    path.write_bytes(content)
    with pytest.raises(StoreError, match=reason) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == content  # left as it was


@pytest.mark.parametrize(
    ("from_a_store", "sql", "reason"),
    [
        pytest.param(False, "CREATE TABLE t (x)", "another application", id="another-app"),
        pytest.param(True, "PRAGMA user_version = 99", "newer mqcore", id="newer-mqcore"),
    ],
)
def test_a_sqlite_file_this_mqcore_cannot_read_is_refused(
    data_dir: Path, from_a_store: bool, sql: str, reason: str
) -> None:
    """Another application's database, or a store a newer mqcore wrote: ``sql``
    makes one out of an empty file or out of one of ours."""
    path = make_store_file(data_dir, topics=1, per_topic=1) if from_a_store else data_dir / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=reason):
        SQLiteStore(path)


def test_an_empty_file_becomes_a_new_store(data_dir: Path) -> None:
    (data_dir / STORE_FILE).write_bytes(b"")
    with SQLiteStore(data_dir / STORE_FILE) as store:
        assert store.load().topics == []


def test_a_data_dir_that_cannot_be_created_is_a_one_line_error(data_dir: Path) -> None:
    (data_dir / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create data directory"):
        SQLiteStore.in_directory(data_dir / "file" / "sub")
    (data_dir / "dir" / STORE_FILE).mkdir(parents=True)
    with pytest.raises(StoreError, match="not a regular file"):
        SQLiteStore.in_directory(data_dir / "dir")


def test_a_failed_write_is_a_store_error(data_dir: Path) -> None:
    store = SQLiteStore(data_dir / STORE_FILE)
    store.close()
    with pytest.raises(StoreError, match="cannot write to store"):
        store.apply([NextIndex("t", 1)])


def open_damaged(path: Path, caplog: pytest.LogCaptureFixture) -> SQLiteStore | None:
    """Open a damaged store: it must salvage (and say so) or refuse in one line."""
    try:
        store = SQLiteStore(path)
    except StoreError as exc:
        message = str(exc)
    else:
        if store.salvaged is not None:
            assert any("damaged" in r.getMessage() for r in caplog.records)
        return store
    assert str(path) in message
    assert "\n" not in message
    return None


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.25])
def test_a_truncated_store_file_is_salvaged(
    data_dir: Path, caplog: pytest.LogCaptureFixture, keep: float
) -> None:
    caplog.set_level(logging.WARNING)
    path = make_store_file(data_dir)
    with path.open("r+b") as f:
        f.truncate(int(path.stat().st_size * keep))
    salvaged = open_damaged(path, caplog)
    assert salvaged is not None
    with salvaged as store:
        assert store.salvaged is not None
        assert_intact(store, 60)
        topics = store.load().topics
        assert len(topics) == 20  # the topics' page is early in the file
        assert sum(len(t.cache) for t in topics) > 0
    assert Path(f"{path}.damaged").exists()
    assert any("a copy is kept" in r.getMessage() for r in caplog.records)
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("size", [4000, 1000, 99, 50])
def test_a_store_file_cut_within_its_first_page_is_refused_in_one_line(
    data_dir: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    path = make_store_file(data_dir)
    with path.open("r+b") as f:
        f.truncate(size)
    before = path.read_bytes()
    assert open_damaged(path, caplog) is None
    assert path.read_bytes() == before  # left as it was, for the operator
    assert not Path(f"{path}.damaged").exists()


def test_damaged_pages_are_salvaged_and_the_epoch_changes(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = make_store_file(data_dir)
    with SQLiteStore(path) as store:
        epoch = store.load().epoch
    data = bytearray(path.read_bytes())
    page = 4096
    # Scribble over two pages in the middle of the file (the cache's b-tree).
    middle = (len(data) // page // 2) * page
    data[middle : middle + 2 * page] = os.urandom(2 * page)
    path.write_bytes(bytes(data))
    salvaged = open_damaged(path, caplog)
    assert salvaged is not None, "a file with a readable header should be salvaged"
    with salvaged as store:
        assert store.salvaged is not None
        assert "recovered" in store.salvaged
        snapshot = store.load()
        assert snapshot.epoch != epoch  # numbering may have started over
        assert_intact(store, 60)
        assert sum(len(s.cache) for s in snapshot.topics) > 0
    # The damaged original is kept for inspection, and the next start is clean.
    assert Path(f"{path}.damaged").exists()
    caplog.clear()
    with SQLiteStore(path) as store:
        assert store.salvaged is None
        assert store.load().epoch == snapshot.epoch


@pytest.mark.parametrize("seed", range(6))
def test_random_corruption_never_raises_anything_but_a_store_error(
    data_dir: Path, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    path = make_store_file(data_dir, topics=5, per_topic=40)
    data = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 20)):
        at = rng.randrange(len(data))
        data[at : at + rng.randint(1, 64)] = os.urandom(rng.randint(1, 64))
    path.write_bytes(bytes(data))
    store = open_damaged(path, caplog)
    if store is not None:
        with store:
            assert_intact(store, 40)


def copy_open_store(source: Path, target: Path) -> None:
    """Copy a store that is still open, as a crash would leave it (file and log)."""
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}-wal", f"{target}-wal")


def test_a_crash_leaves_whole_batches_and_a_torn_log_loses_only_its_tail(data_dir: Path) -> None:
    live = data_dir / "live.db"
    store = SQLiteStore(live)
    broker = restored(store, 1000)
    p = broker.open_connection()
    for batch in range(20):
        broker.receive_data(p, b"".join(send("t", f"m{batch * 10 + i}") for i in range(10)))
        store.apply(broker.take_output().records)
    crashed = data_dir / "crashed.db"
    copy_open_store(live, crashed)
    store.close()
    assert not Path(f"{live}-wal").exists()  # closed cleanly: the log was folded in
    wal = Path(f"{crashed}-wal").read_bytes()
    assert wal, "the commits are in the log, not yet checkpointed"
    pristine = data_dir / "pristine.db"
    shutil.copyfile(crashed, pristine)
    with SQLiteStore(crashed) as after:
        [state] = after.load().topics
        assert state.next_index == 200
        assert len(state.cache) == 200
    # Tear the log at many points: each batch is all or nothing.
    copy = data_dir / "torn.db"
    for cut in [*range(0, len(wal), max(1, len(wal) // 25)), len(wal) - 1]:
        for suffix in ("", "-wal"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(pristine, copy)
        Path(f"{copy}-wal").write_bytes(wal[:cut])
        with SQLiteStore(copy) as after:
            topics = after.load().topics
            count = topics[0].next_index if topics else 0
            assert count % 10 == 0
            if topics:
                assert [i for i, _, _ in topics[0].cache] == list(range(count))


def one_topic_store(data_dir: Path, messages: int) -> Path:
    """A cleanly closed store file: one topic of ``messages`` messages, one commit
    each, every one of them cached."""
    path = data_dir / STORE_FILE
    with SQLiteStore(path) as store:
        fill(store, topics=1, per_topic=messages, cache_size=messages)
    return path


def test_salvage_reads_both_ends_of_a_damaged_topic(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = one_topic_store(data_dir, 400)
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    # Damage one leaf page in the middle of the only topic's messages.
    at = (pages // 2) * 4096
    data[at + 100 : at + 4000] = b"\x00" * 3900
    path.write_bytes(bytes(data))
    salvaged = open_damaged(path, caplog)
    if salvaged is None:
        return
    with salvaged as store:
        [state] = store.load().topics
        indices = [i for i, _, _ in state.cache]
        assert indices == sorted(indices)
        # Both the oldest and the newest messages survive a hole in the middle.
        assert indices[0] == 0
        assert indices[-1] == 399
        assert_intact(store, 400)


def test_stored_message_bytes_are_validated_on_load(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = one_topic_store(data_dir, 3)
    conn = sqlite3.connect(path)
    # One chunk per send here: one now holds another topic's message, one is not JSON.
    assert [r[0] for r in conn.execute("SELECT seq FROM cache ORDER BY seq")] == [1, 2, 3]
    conn.execute("UPDATE cache SET data = ? WHERE seq = 1", (wire("other", "m0", 0),))
    conn.execute("UPDATE cache SET data = ? WHERE seq = 2", (b"garbage\r\n",))
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store:
        [state] = store.load().topics
        assert [i for i, _, _ in state.cache] == [2]
    assert any("dropped 2 stored message(s)" in r.getMessage() for r in caplog.records)


def test_sqlite_chunks_are_rewritten_or_deleted_as_their_messages_leave(data_dir: Path) -> None:
    path = data_dir / STORE_FILE
    with SQLiteStore(path) as store:
        broker = restored(store, 10)
        p = broker.open_connection()
        broker.receive_data(p, b"".join(send("t", f"j{i}", "one") for i in range(4)))
        store.apply(broker.take_output().records)
        assert chunks(store) == [[0, 1, 2, 3]]  # one commit, one chunk
        c = broker.open_connection()
        broker.receive_data(c, sub("t", last_seen=1))  # consumes 2 and 3
        out = broker.take_output()
        store.apply(out.records)
        assert chunks(store) == [[0, 1, 2, 3]]  # not before the replay is written...
        store.apply(out.after_write[c])
        assert chunks(store) == [[0, 1]]  # ...then the chunk is rewritten without them
        broker.receive_data(c, sub("t"))  # consumes 0 and 1: nothing left in it
        store.apply(broker.take_output().after_write[c])
        assert chunks(store) == []
    with SQLiteStore(path) as store:
        [state] = store.load().topics
        assert (state.next_index, state.cache) == (4, [])


def test_fsync_modes(data_dir: Path) -> None:
    for mode in ("always", "batch", "off"):
        with SQLiteStore(data_dir / f"{mode}.db", fsync=mode) as store:
            fill(store, topics=1, per_topic=3)
        with SQLiteStore(data_dir / f"{mode}.db", fsync=mode) as store:
            assert store.load().topics[0].next_index == 3
    with pytest.raises(ValueError, match="fsync"):
        SQLiteStore(data_dir / "x.db", fsync="sometimes")  # type: ignore[arg-type]


def test_after_write_names_the_consumers_of_one_messages() -> None:
    broker = Broker(cache_size=3, durable=True)
    a, b = broker.open_connection(), broker.open_connection()
    broker.receive_data(a, sub("t"))
    broker.receive_data(b, sub("t"))
    broker.take_output()
    p = broker.open_connection()
    broker.receive_data(p, send("t", "x", "one") + send("t", "y", "one"))
    out = broker.take_output()
    assert set(out.after_write) <= {a, b}
    for cid, records in out.after_write.items():
        delivered = {m["index"] for m in parse(out.writes[cid])}
        assert {r.index for r in records if isinstance(r, CacheRemove)} == delivered
    assert sum(len(r) for r in out.after_write.values()) == 2

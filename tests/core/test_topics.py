"""Topics: name bound, forgetting, eviction of idle topics, the index floor, O(1) subscriptions."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqcore import (
    DEFAULT_MAX_TOPIC_BYTES,
    Broker,
    CacheAdd,
    DropTopic,
    MemoryStore,
    NextIndex,
    Reason,
)

from ..helpers import Harness
from ..wire import OK, delivered, fail, line, send, sub, unsub

# -- topic name length -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("x" * 16, True),
        ("x" * 17, False),
        ("é" * 8, True),  # 16 bytes in UTF-8
        ("é" * 8 + "x", False),
        ("\U0001f600" * 4, True),
        ("\U0001f600" * 4 + "x", False),
    ],
)
@pytest.mark.parametrize("command", [send, sub, unsub])
def test_a_topic_name_over_max_topic_bytes_is_refused_and_changes_nothing(
    topic: str, ok: bool, command: Any
) -> None:
    h = Harness(Broker(max_topic_bytes=16))
    c = h.connect()
    h.send(c, command(topic, "m") if command is send else command(topic))
    assert h.take(c) == ([OK] if ok else [fail(Reason.TOPIC_TOO_LONG)])
    if not ok:
        assert h.broker.stats().topics == 0
        assert h.broker.next_index(topic) == 0


def test_the_default_topic_bound_is_1024_bytes() -> None:
    assert DEFAULT_MAX_TOPIC_BYTES == 1024
    h = Harness()
    c = h.connect()
    h.send(c, send("x" * 1024, "m"), send("x" * 1025, "m"), sub("y" * 1_000_000))
    assert h.take(c) == [OK, fail(Reason.TOPIC_TOO_LONG), fail(Reason.TOPIC_TOO_LONG)]
    with pytest.raises(ValueError, match="max_topic_bytes"):
        Broker(max_topic_bytes=0)


# -- forgetting and the index floor ---------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "kept"),
    [
        ([sub("t"), unsub("t")], False),  # subscribed, then left
        ([send("t", "m", cache=False)], False),  # a send that cached nothing
        ([send("t", "m")], True),  # cached: kept for a later subscriber
        ([send("t", "j", "one"), sub("t"), unsub("t")], False),  # consumed by the replay
        ([send("t", "m"), sub("t"), unsub("t")], True),
        ([sub("t"), send("t", "m", cache=False), unsub("t")], False),
    ],
)
def test_a_topic_with_no_subscribers_and_nothing_cached_is_forgotten(
    script: list[Any], kept: bool
) -> None:
    h = Harness()
    c = h.connect()
    h.send(c, *script)
    assert (h.broker.stats().topics == 1) is kept


def test_numbering_goes_on_from_the_floor_after_a_topic_is_forgotten() -> None:
    h = Harness(Broker(cache_size=0))
    p, s = h.connect(), h.connect()
    h.send(p, *[send("a", f"m{i}") for i in range(5)])  # forgotten after each send
    assert h.broker.stats().topics == 0
    assert h.broker.next_index("a") == 5 == h.broker.next_index("never-seen")
    h.send(s, sub("a"), sub("b"))
    h.send(p, send("a", "again"), send("b", "first"))
    assert h.take(s) == [OK, OK, delivered("a", "again", 5), delivered("b", "first", 5)]


def test_junk_topics_cannot_lock_clients_out() -> None:
    h = Harness(Broker(max_topics=10, cache_size=5))
    junk, real = h.connect(), h.connect()
    h.send(junk, *[send(f"junk{i}", "x") for i in range(1_000)])
    assert h.take(junk) == [OK] * 1_000  # each evicts the topic idle for longest
    assert h.broker.stats().topics == 10
    floor = h.broker.stats().index_floor
    assert floor > 0  # raised by every evicted topic: numbering never restarts
    h.send(real, sub("mine"), send("mine", "hi"))
    ok, message, ok_too = h.take(real)
    assert ok == ok_too == OK
    assert message == delivered("mine", "hi", message["index"])
    assert message["index"] >= floor
    assert h.broker.cached("junk0") == []  # evicted with its cache
    assert h.broker.cached("junk999") != []  # the newest idle ones stay


def test_eviction_takes_the_topic_idle_for_longest_and_never_a_subscribed_one() -> None:
    h = Harness(Broker(max_topics=3))
    c, s = h.connect(), h.connect()
    h.send(s, sub("a"), sub("b"))
    h.send(c, send("a", "m"), send("b", "m"))
    h.send(s, unsub("b"), unsub("a"))  # idle now: b first, then a
    h.send(c, send("c", "m"), send("d", "m"))
    assert [bool(h.broker.cached(t)) for t in "abcd"] == [True, False, True, True]
    h.send(s, sub("a"), sub("c"), sub("d"))
    h.take(c)
    h.send(c, send("e", "m"))
    assert h.take(c) == [fail(Reason.TOO_MANY_TOPICS)]


def test_byte_eviction_that_empties_an_idle_topic_forgets_it() -> None:
    h = Harness(Broker(max_cache_bytes=200))
    p = h.connect()
    h.send(p, send("old", "x" * 50), send("new", "y" * 100))
    assert h.broker.stats().topics == 1
    assert h.broker.cached("old") == []
    assert h.broker.next_index("old") == 1


def test_durable_forgetting_emits_drop_topic_and_the_store_keeps_the_floor() -> None:
    broker = Broker(durable=True, max_topics=1)
    store = MemoryStore("e")
    c = broker.open_connection()
    broker.receive_data(c, line(send("t", "m")) + line(sub("u")))  # "u" evicts idle "t"
    records = broker.take_output().records
    assert records[0] == DropTopic("t", 1)
    assert records[-1] == NextIndex("u", 1) or DropTopic("t", 1) in records
    store.apply(records)
    assert store.load().index_floor == 1
    restarted = Broker(durable=True)
    snapshot = store.load()
    restarted.restore(snapshot.topics, snapshot.index_floor)
    assert restarted.next_index("t") == 1
    assert restarted.next_index("other") == 1


def test_a_topic_forgotten_and_made_again_in_one_batch_gets_consistent_records() -> None:
    broker = Broker(durable=True, cache_size=0)
    store = MemoryStore("e")
    p = broker.open_connection()
    broker.receive_data(p, line(send("t", "a")) + line(send("t", "b")))
    records = broker.take_output().records
    assert records == [DropTopic("t", 1), DropTopic("t", 2)]
    store.apply(records)
    assert store.load().index_floor == 2
    assert not [r for r in records if isinstance(r, CacheAdd)]


# -- subscriptions are O(1) ---------------------------------------------------------------


def _peak_bytes_of_churn(subscribers: int) -> int:
    """Peak memory allocated by subscribe, unsubscribe and disconnect beside ``subscribers``."""
    broker = Broker()
    for _ in range(subscribers):
        broker.receive_data(broker.open_connection(), line(sub("t")))
    broker.take_output()
    churner = broker.open_connection()
    commands = line(sub("t")) + line(unsub("t")) + line(sub("t"))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        broker.receive_data(churner, commands)
        broker.connection_lost(churner)
        broker.receive_data(broker.open_connection(), line(unsub("t")))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(broker.subscribers("t")) == subscribers
    return peak


def test_subscription_changes_do_not_copy_the_subscriber_list() -> None:
    # A structural measure, not time: rebuilding a list of 100,000 subscribers
    # allocates 800 KB per change; an O(1) change allocates the same with 100.
    small, large = _peak_bytes_of_churn(100), _peak_bytes_of_churn(100_000)
    assert large < 64 * 1024, large
    assert large < small + 16 * 1024, (small, large)


def test_one_delivery_reaches_every_subscriber_in_turn_after_churn() -> None:
    h = Harness()
    subs = h.subscribers(6, "t")
    p = h.connect()
    for s in subs[::2]:  # leave out of order: swaps fill the gaps
        h.send(s, unsub("t"))
        h.take(s)
    assert sorted(h.broker.subscribers("t")) == subs[1::2]
    h.send(p, *[send("t", f"j{i}", "one") for i in range(9)])
    assert [len(h.take(s)) for s in subs] == [0, 3, 0, 3, 0, 3]


# -- numbering never restarts, whatever happens ----------------------------------------------

TOPICS = ["a", "b", "c"]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(TOPICS), st.booleans(), st.booleans()),
        st.tuples(st.just("sub"), st.sampled_from(TOPICS), st.integers(0, 2)),
        st.tuples(st.just("unsub"), st.sampled_from(TOPICS), st.integers(0, 2)),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 2), st.integers(1, 3))
def test_an_index_is_never_handed_out_twice_for_a_topic(
    script: list[tuple[Any, ...]], cache_size: int, max_topics: int
) -> None:
    store = MemoryStore("e")

    def start() -> tuple[Broker, list[Any]]:
        snapshot = store.load()
        broker = Broker(
            cache_size=cache_size, max_topics=max_topics, max_cache_bytes=300, durable=True
        )
        broker.restore(snapshot.topics, snapshot.index_floor)
        return broker, [broker.open_connection() for _ in range(3)]

    def flush() -> None:
        out = broker.take_output()
        store.apply(out.records)
        for records in out.after_write.values():
            store.apply(records)

    broker, conns = start()
    highest = dict.fromkeys(TOPICS, -1)
    for op in script:
        if op[0] == "send":
            _, topic, cached, one = op
            expected = broker.next_index(topic)
            assert expected > highest[topic]
            broker.receive_data(
                conns[0], line(send(topic, "m", "one" if one else "all", cache=cached))
            )
            if broker.next_index(topic) != expected:  # carried out, not refused
                highest[topic] = expected
        elif op[0] == "sub":
            broker.receive_data(conns[op[2]], line(sub(op[1])))
        elif op[0] == "unsub":
            broker.receive_data(conns[op[2]], line(unsub(op[1])))
        elif op[0] == "drop":
            broker.connection_lost(conns[op[1]])
            conns[op[1]] = broker.open_connection()
        else:
            flush()
            broker, conns = start()
        flush()
        for topic in TOPICS:
            assert broker.next_index(topic) > highest[topic]

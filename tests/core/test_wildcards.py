"""Pattern subscriptions in the core, no sockets: every rule of mqcore._patterns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mqcore import Broker, ConnectionId, MemoryStore, Reason
from mqcore._connection import Connection
from mqcore._patterns import PatternTable, TopicIndex
from mqcore._state import Topic
from mqcore._subjects import matches

from ..helpers import Harness, subscribed
from ..wire import OK, delivered, fail, send, sub, unsub

# -- routing -------------------------------------------------------------------------


def test_star_and_rest_route_every_matching_topic_with_its_own_topic_and_index() -> None:
    h = Harness()
    star, rest, pub = h.connect(), h.connect(), h.connect()
    h.send(star, sub("orders.*"))
    h.send(rest, sub("orders.>"))
    h.send(pub, send("orders.eu", "a"), send("orders.eu", "b"), send("orders.us.1", "c"))
    h.send(pub, send("orders", "d"), send("other.eu", "e"))
    assert h.take(star) == [OK, delivered("orders.eu", "a", 0), delivered("orders.eu", "b", 1)]
    assert h.take(rest) == [
        OK,
        delivered("orders.eu", "a", 0),
        delivered("orders.eu", "b", 1),
        delivered("orders.us.1", "c", 0),
    ]


def test_pattern_and_exact_subscribers_share_one_bytes_object() -> None:
    broker = Broker()
    exact, pattern, pub = (broker.open_connection() for _ in range(3))
    broker.receive_data(exact, b'{"command":"subscribe","topic":"a.b"}\n')
    broker.receive_data(pattern, b'{"command":"subscribe","topic":"a.*"}\n')
    broker.take_output()
    broker.receive_data(pub, b'{"command":"send","topic":"a.b","msg":"m","delivery":"all"}\n')
    writes = broker.take_output().writes
    assert writes[exact][0] is writes[pattern][0]


def test_exact_plus_patterns_deliver_once_per_connection() -> None:
    h, c, pub = subscribed("a.b.c", "a.*.c", "a.>", ">", "*.b.*")
    h.send(pub, send("a.b.c", "once"))
    assert h.take(c) == [delivered("a.b.c", "once", 0)]
    # Without the exact subscription, the four patterns still give it once.
    h.send(c, unsub("a.b.c"))
    h.send(pub, send("a.b.c", "again"))
    assert h.take(c) == [OK, delivered("a.b.c", "again", 1)]


def test_unsubscribe_removes_exactly_that_pattern() -> None:
    h = Harness()
    c, pub = h.connect(), h.connect()
    h.send(c, sub("a.*"), sub("a.>"), sub("a.b"))
    h.send(c, unsub("a.*"))
    h.take(c)
    h.send(pub, send("a.b", "1"), send("a.x", "2"), send("a.x.y", "3"))
    assert [m["msg"] for m in h.take(c)] == ["1", "2", "3"]  # a.> and a.b remain
    h.send(c, unsub("a.>"), unsub("a.>"), unsub("never.*"))  # idempotent
    h.send(pub, send("a.b", "4"), send("a.x", "5"))
    assert h.take(c) == [OK, OK, OK, delivered("a.b", "4", 1)]


def test_one_goes_to_exactly_one_among_exact_and_pattern_subscribers() -> None:
    h = Harness()
    exact, star, rest, both, pub = (h.connect() for _ in range(5))
    h.send(exact, sub("jobs.eu"))
    h.send(star, sub("jobs.*"))
    h.send(rest, sub("jobs.>"))
    h.send(both, sub("jobs.eu"), sub("jobs.*"))
    for c in (exact, star, rest, both):
        h.take(c)
    h.send(pub, *[send("jobs.eu", str(n), "one") for n in range(40)])
    got = {c: [m["msg"] for m in h.take(c)] for c in (exact, star, rest, both)}
    assert sorted(m for msgs in got.values() for m in msgs) == sorted(str(n) for n in range(40))
    # Round robin over the four targets (`both` counted once).
    assert all(len(msgs) == 10 for msgs in got.values())
    assert h.broker.cached("jobs.eu") == []


def test_one_with_only_pattern_subscribers_is_consumed_not_cached() -> None:
    h, c, pub = subscribed("jobs.>")
    h.send(pub, send("jobs.eu", "j", "one"))
    assert h.take(c) == [delivered("jobs.eu", "j", 0, "one")]
    assert h.broker.cached("jobs.eu") == []


# -- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a.*", "*", ">", "a.>", "*.b", "a.*.c"])
def test_send_to_a_pattern_is_refused_and_changes_nothing(topic: str) -> None:
    h, c, pub = subscribed(">")
    h.send(pub, send(topic, "m"), send(topic, "m", "one"))
    assert h.take(pub) == [fail(Reason.SEND_TO_PATTERN)] * 2
    assert h.take(c) == []
    assert h.broker.stats().topics == 0


@pytest.mark.parametrize("topic", ["a*", "a.b>", "*a.b", "a.>b", "a. *"])
def test_a_wildcard_inside_a_token_is_a_plain_name(topic: str) -> None:
    h = Harness()
    c, pub = h.connect(), h.connect()
    h.send(c, sub(topic))
    h.send(pub, send(topic, "m"))
    assert h.take(pub) == [OK]
    assert h.take(c) == [OK, delivered(topic, "m", 0)]


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a..*", Reason.PATTERN_EMPTY_TOKEN),
        (".*", Reason.PATTERN_EMPTY_TOKEN),
        ("*.", Reason.PATTERN_EMPTY_TOKEN),
        ("a.>.b", Reason.PATTERN_MULTI_NOT_LAST),
        (">.>", Reason.PATTERN_MULTI_NOT_LAST),
    ],
)
def test_malformed_pattern_subscribe_is_refused(pattern: str, reason: str) -> None:
    h = Harness()
    c, pub = h.connect(), h.connect()
    h.send(c, sub(pattern), sub("ok.*"))
    assert h.take(c) == [fail(reason), OK]
    assert h.broker.stats().failures == {reason: 1}
    h.send(pub, send("ok.x", "m"))
    assert h.take(c) == [delivered("ok.x", "m", 0)]


def test_last_seen_with_a_pattern_is_refused() -> None:
    h = Harness()
    c = h.connect()
    h.send(c, sub("a.*", last_seen=3), sub("a.*", last_seen=-1))
    assert h.take(c) == [fail(Reason.PATTERN_LAST_SEEN), OK]


def test_a_pattern_over_max_topic_bytes_is_refused() -> None:
    h = Harness(Broker(max_topic_bytes=16))
    c = h.connect()
    long = "a." * 10 + "*"
    h.send(c, sub(long), unsub(long), sub("a.*"))
    assert h.take(c) == [fail(Reason.TOPIC_TOO_LONG)] * 2 + [OK]


def test_pattern_subscriptions_are_bounded_per_broker() -> None:
    h = Harness(Broker(max_topics=3))
    a, b = h.connect(), h.connect()
    h.send(a, sub("1.*"), sub("2.*"), sub("2.*"))  # the repeat is no new subscription
    h.send(b, sub("1.*"), sub("3.*"))
    assert h.take(a) == [OK, OK, OK]
    assert h.take(b) == [OK, fail(Reason.TOO_MANY_PATTERNS)]
    h.broker.connection_lost(a)  # frees its two
    h.send(b, sub("3.*"), sub("4.*"), sub("5.*"))
    assert h.take(b) == [OK, OK, fail(Reason.TOO_MANY_PATTERNS)]


# -- replay --------------------------------------------------------------------------


def test_replay_covers_every_matching_cached_topic_by_name_then_index() -> None:
    h = Harness()
    pub, c = h.connect(), h.connect()
    h.send(pub, send("s.b", "b0"), send("s.a", "a0"), send("s.b", "b1"), send("t.a", "x"))
    h.send(pub, send("s.a.deep", "d0"), send("s.a", "a1"))
    h.send(c, sub("s.*"))
    assert h.take(c) == [
        OK,
        delivered("s.a", "a0", 0),
        delivered("s.a", "a1", 1),
        delivered("s.b", "b0", 0),
        delivered("s.b", "b1", 1),
    ]
    h.send(c, sub("s.>", cache=False))
    assert h.take(c) == [OK]
    h.send(c, sub("s.>"))
    assert [m["msg"] for m in h.take(c)[1:]] == ["a0", "a1", "d0", "b0", "b1"]


def test_replay_consumes_one_messages_and_forgets_emptied_topics() -> None:
    h = Harness()
    pub, c = h.connect(), h.connect()
    h.send(pub, send("q.a", "1", "one"), send("q.b", "2", "one"), send("q.b", "3"))
    floor_before = h.broker.stats().index_floor
    h.send(c, sub("q.*"))
    assert [m["msg"] for m in h.take(c)[1:]] == ["1", "2", "3"]
    assert h.broker.cached("q.a") == []
    assert len(h.broker.cached("q.b")) == 1
    # q.a held only a consumed `one` message and has no exact subscriber: forgotten,
    # and its next index raised the floor so numbering never goes back.
    stats = h.broker.stats()
    assert stats.topics == 1
    assert stats.index_floor >= max(floor_before, 1)
    h.send(pub, send("q.a", "again"))
    assert h.take(c) == [delivered("q.a", "again", 1)]


def test_topic_matched_only_by_patterns_is_forgotten_and_keeps_numbering() -> None:
    h, c, pub = subscribed("x.*")
    h.send(pub, send("x.a", "1", cache=False), send("x.a", "2", cache=False))
    assert [m["index"] for m in h.take(c)] == [0, 1]
    assert h.broker.stats().topics == 0  # nothing to keep: forgotten after each send
    h.send(pub, send("x.a", "3"))
    assert h.take(c) == [delivered("x.a", "3", 2)]
    assert h.broker.stats().idle_topics == 1  # pattern subscribers do not pin a topic


def test_durable_replay_forgetting_keeps_consumed_ones_until_written() -> None:
    broker = Broker(durable=True)
    store = MemoryStore("e")
    pub, c = broker.open_connection(), broker.open_connection()
    broker.receive_data(pub, b'{"command":"send","topic":"q.a","msg":"j","delivery":"one"}\n')
    store.apply(broker.take_output().records)
    broker.receive_data(c, b'{"command":"subscribe","topic":"q.*"}\n')
    out = broker.take_output()
    store.apply(out.records)
    # Not yet written to `c`: a crash now must deliver it again after a restart.
    assert [s.cache != [] for s in store.load().topics if s.topic == "q.a"] == [True]
    store.apply(out.after_write[c])
    assert all(not s.cache for s in store.load().topics if s.topic == "q.a")


# -- the trie and the name index, directly ------------------------------------------


def test_trie_matches_like_subjects_matches_on_random_patterns() -> None:
    rng = random.Random(12)
    alphabet = ["a", "b", "c"]
    table = PatternTable(10_000)
    conns: dict[str, Connection] = {}
    patterns = set()
    for _ in range(300):
        toks = [rng.choice([*alphabet, "*"]) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            toks[-1] = ">"
        patterns.add(".".join(toks))
    for n, pattern in enumerate(sorted(patterns)):
        conns[pattern] = Connection(ConnectionId(n))
        assert table.subscribe(conns[pattern], pattern)
    for _ in range(300):
        name = ".".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
        expected = {p for p in patterns if matches(p, name)}
        assert {p for p, c in conns.items() if c in table.match(name)} == expected
    for pattern in sorted(patterns):
        table.unsubscribe(conns[pattern], pattern)
    assert table.count == 0
    assert table.match("a.b") == {}


def test_topic_index_matches_and_prunes() -> None:
    topics = [Topic(n, 1, 0) for n in ["a", "a.b", "a.b.c", "a.c", "b.b", ""]]
    index = TopicIndex(iter(topics))
    names = ["a", "a.b", "a.b.c", "a.c", "b.b", ""]
    for pattern in ["*", "a.*", "a.>", ">", "*.b", "*.*.c", "a.b.*"]:
        got = [t.name for t in index.matching(pattern)]
        assert got == sorted(n for n in names if matches(pattern, n)), pattern
    for topic in topics:
        index.remove(topic)
    assert index.matching(">") == []


# -- adversarial -------------------------------------------------------------------


def test_many_patterns_deep_tokens_long_names_and_churn() -> None:
    h = Harness(Broker(max_topic_bytes=4096))
    pub = h.connect()
    conns = [h.connect() for _ in range(50)]
    deep = ".".join("t" for _ in range(500))
    for n, c in enumerate(conns):
        # 40 patterns each: 2,000, most matching nothing.
        h.send(c, *[sub(f"p{n}.{k}.*") for k in range(38)], sub(">"), sub(deep[:-1] + "*"))
    for c in conns:
        assert h.take(c) == [OK] * 40
    h.send(pub, send(deep, "deep"), send("p7.3.x", "one-of-many"), send("z", "z"))
    for n, c in enumerate(conns):
        expected = ["deep", "one-of-many", "z"]
        assert [m["msg"] for m in h.take(c)] == expected, n
    # Churn: subscribe, unsubscribe, disconnect, over and over; the trie empties.
    for _ in range(20):
        for c in conns[:10]:
            h.send(c, unsub(">"), sub(">"), unsub("p0.0.*"))
    for c in conns:
        h.broker.connection_lost(c)
    table = h.broker._table.patterns
    assert table.count == 0
    assert table.by_connection == {}
    assert table.match(deep) == {}
    h.send(pub, send("z", "nobody"))
    assert h.take(pub) == [OK] * 4


def test_the_root_rest_pattern_gets_everything_and_survives_garbage() -> None:
    h, c, pub = subscribed(">")
    h.feed(pub, b'{"command":"send","topic":">"}\nnope\n\xff\n')
    h.send(pub, send("", "empty"), send("..", "dots"), send("a b.c", "space"))
    assert [m["topic"] for m in h.take(c)] == ["", "..", "a b.c"]


def test_idle_topics_evicted_for_room_while_patterns_replay() -> None:
    h = Harness(Broker(max_topics=3, cache_size=2))
    pub, c = h.connect(), h.connect()
    h.send(pub, *[send(f"e.{n}", str(n)) for n in range(6)])
    h.send(c, sub("e.*"))
    # Only the three newest topics are left, and the name index agrees.
    assert [m["topic"] for m in h.take(c)[1:]] == ["e.3", "e.4", "e.5"]
    h.send(pub, send("e.9", "9"))  # delivered live; evicts e.3, the longest idle
    h.send(c, sub("e.*"))
    out = h.take(c)
    assert out[:2] == [delivered("e.9", "9", 2), OK]  # numbered from the floor
    assert [m["topic"] for m in out[2:]] == ["e.4", "e.5", "e.9"]


def test_index_of_cached_topics_follows_every_way_a_cache_fills_or_empties() -> None:
    """Sends, byte and count eviction, consumption, forgetting: the index stays exact."""
    rng = random.Random(7)
    broker = Broker(max_topics=12, cache_size=3, max_cache_bytes=2_000)
    h = Harness(broker)
    conns = [h.connect() for _ in range(4)]
    h.send(conns[0], sub("warm.*"))  # builds the index early
    names = [f"{a}.{b}" for a in "xyz" for b in "abcde"]
    for _ in range(600):
        c = rng.choice(conns)
        name = rng.choice(names)
        op = rng.random()
        if op < 0.5:
            h.send(c, send(name, "m" * rng.randint(1, 200), rng.choice(["all", "one"])))
        elif op < 0.65:
            h.send(c, sub(name))
        elif op < 0.8:
            h.send(c, unsub(name))
        elif op < 0.9:
            h.send(c, sub(rng.choice(["x.*", "*.a", ">"]), cache=rng.random() < 0.5))
        else:
            h.send(c, unsub(rng.choice(["x.*", "*.a", ">"])))
        table = broker._table
        expected = sorted(t.name for t in table.by_name.values() if t.cache)
        assert [t.name for t in table.cached_matching(">")] == expected


def test_the_wildcard_benchmark_runs_every_case(tmp_path: Path) -> None:
    from benchmarks import wildcard_bench

    out = tmp_path / "wild.json"
    assert wildcard_bench.main(["--quick", "--subscribers", "50", "--json", str(out)]) == 0
    cases = json.loads(out.read_text())["cases"]
    assert [c["name"] for c in cases] == [
        "fan-out exact",
        "fan-out wildcard",
        "routed exact",
        "routed wildcard",
    ]
    assert all(c["rate"] > 0 for c in cases)

"""Pattern subscriptions in cluster mode behave as on one node (mqcore._cluster_patterns).

First the core alone (the node played by hand), then real nodes on a real
``redis-server``: replay, topics created later on another node, ``one``,
bounds and garbage.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from mqcore import Broker, ConnectionId
from mqcore._cluster import ClusterBroker, Delivered
from mqcore_tcp.testing import running
from mqcore_tcp.testing_redis import RedisCluster, RedisServer
from mqcore_tcp.testing_redis_probe import RedisError

from ..wire import OK, delivered, fail, line, lines, parse, send, sub, unsub
from .support import Peer, nodes

# -- the core alone ---------------------------------------------------------------------


def _broker(**options: object) -> ClusterBroker:
    return ClusterBroker.for_node("n1", epoch="e", choose=lambda n: 0, **options)


def _item(topic: str, index: int, kind: bytes = b"c", msg: str = "m") -> Delivered:
    return index, kind, line({**send(topic, f"{msg}{index}"), "index": index})[:-1] + b"\r\n"


def _scan_and_load(
    broker: ClusterBroker, pattern: str, registry: list[str], caches: dict[str, Any]
) -> None:
    """Answer the broker's registry read, then each load it asks for."""
    assert broker.take_work().scans == [pattern]
    broker.pattern_mirrors.scanned(pattern, registry)
    for topic, _ in broker.take_work().loads:
        items, ones = caches.get(topic, ([], []))
        broker.loaded(topic, len(items) + len(ones), items, ones)


def test_a_pattern_subscribe_replays_matching_topics_in_name_order() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, lines(sub("o.*"), send("x", "after")))
    assert broker.paused(ConnectionId(cid))  # until its mirrors are loaded
    caches = {
        "o.b": ([_item("o.b", 0), _item("o.b", 2)], [_item("o.b", 1, b"p")]),
        "o.a": ([_item("o.a", 0)], []),
    }
    _scan_and_load(broker, "o.*", ["o.b", "x", "o.a", "o.a.deep"], caches)
    assert not broker.paused(ConnectionId(cid))
    got = parse(broker.take_output().writes[cid])
    # The reply, then o.a then o.b, each in index order (the cached `one` included), then
    # the held send's reply.
    assert [(m.get("topic"), m.get("index")) for m in got] == [
        (None, None),
        ("o.a", 0),
        ("o.b", 0),
        ("o.b", 1),
        ("o.b", 2),
        (None, None),
    ]
    # Live deliveries of a topic with no exact subscriber reach the pattern.
    broker.deliver("o.a", 1, 2, [_item("o.a", 1, b"a")])
    assert [m["index"] for m in parse(broker.take_output().writes[cid])] == [1]
    # They count as this node's subscribers of the topic (for `one` weights).
    assert broker.mirrored() == {"o.a": 1, "o.b": 1}


def test_an_announced_topic_is_mirrored_from_its_first_message() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("o.>", cache=False)))
    _scan_and_load(broker, "o.>", [], {})
    assert parse(broker.take_output().writes[cid]) == [OK]
    for name in ("p.q", "o", "o.*"):  # not matched, not matched, not a topic
        broker.pattern_mirrors.topic_created(name)
    broker.pattern_mirrors.topic_created("o.new")
    assert broker.take_work().loads == [("o.new", True)]
    # What the cache holds of it went out before this node heard of it: delivered,
    # its cached `one` message too (taken by the load: consumed here).
    broker.deliver("o.new", 3, 4, [_item("o.new", 3, b"a")])  # waits for the load
    one = _item("o.new", 2, b"p")
    broker.loaded("o.new", 3, [_item("o.new", 0), _item("o.new", 1)], [one])
    got = parse(broker.take_output().writes[cid])
    assert sorted(m["index"] for m in got) == [0, 1, 2, 3]
    assert not broker.take_work().returns


def test_the_bound_refuses_a_pattern_matching_too_many_topics() -> None:
    broker = _broker(max_topics=10)
    cid = broker.open_connection()
    broker.receive_data(cid, lines(sub("t.*"), sub("u.*")))
    registry = [f"t.{i}" for i in range(11)] + ["u.1"]
    assert broker.take_work().scans == ["t.*"]  # the second waits behind it
    broker.pattern_mirrors.scanned("t.*", registry)
    assert broker.take_work().loads == []  # nothing mirrored for it
    # The connection goes on: its next subscribe is served.
    broker.pattern_mirrors.scanned("u.*", registry)
    for topic, _ in broker.take_work().loads:
        broker.loaded(topic, 0, [], [])
    assert parse(broker.take_output().writes[cid]) == [fail("Too many topics"), OK]
    # Announced topics past the bound are counted, not mirrored.
    for i in range(20):
        broker.pattern_mirrors.topic_created(f"u.new{i}")
    assert len(broker.take_work().loads) == 9
    assert broker.pattern_mirrors.skipped == 11


def test_garbage_in_the_registry_is_ignored() -> None:
    broker = _broker(max_topic_bytes=16)
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub(">")))
    junk = ["", "a.*", "a.>", "x" * 17, "a..b"]
    _scan_and_load(broker, ">", [*junk, "ok"], {})
    assert parse(broker.take_output().writes[cid]) == [OK]
    assert broker.mirrored() == {"ok": 1, "a..b": 1}


def test_pattern_mirrors_are_dropped_when_no_pattern_wants_them() -> None:
    broker = _broker()
    exact, pattern = broker.open_connection(), broker.open_connection()
    broker.receive_data(pattern, line(sub("o.*")))
    _scan_and_load(broker, "o.*", ["o.a", "o.b"], {})
    broker.receive_data(exact, line(sub("o.a")))
    assert broker.take_work().loads == []  # already mirrored
    broker.receive_data(pattern, line(unsub("o.*")))
    assert broker.take_work().drops == ["o.b"]  # o.a keeps its exact subscriber
    broker.connection_lost(ConnectionId(exact))
    assert broker.take_work().drops == ["o.a"]


def test_a_subscriber_gone_while_waiting_gives_its_ones_back() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("o.*")))
    broker.pattern_mirrors.scanned("o.*", ["o.a"])
    assert broker.take_work().loads == [("o.a", True)]
    broker.connection_lost(ConnectionId(cid))
    one = _item("o.a", 0, b"p")
    broker.loaded("o.a", 1, [], [one])
    work = broker.take_work()
    assert work.returns == [("o.a", [one])]
    assert work.drops == ["o.a"]


def test_registry_or_load_failures_refuse_the_subscribe() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, lines(sub("o.*"), sub("p.*")))
    broker.pattern_mirrors.scan_failed("o.*")
    broker.pattern_mirrors.scanned("p.*", ["p.a"])
    broker.take_work()
    broker.load_failed("p.a")
    out = parse(broker.take_output().writes[cid])
    assert out == [fail("Backend unavailable")] * 2
    assert broker.mirrored() == {}


def test_malformed_patterns_are_refused_as_on_one_node() -> None:
    bad = [sub("a..*"), sub("a.>.b"), sub("a.*", last_seen=3), sub("*." + "x" * 20)]
    single = Broker(max_topic_bytes=16)
    alone = single.open_connection()
    single.receive_data(alone, lines(*bad))
    expected = single.take_output().writes[alone]
    assert all(b'"success": false' in reply for reply in expected)
    broker = _broker(max_topic_bytes=16)
    cid = broker.open_connection()
    broker.receive_data(cid, lines(*bad))
    assert broker.take_output().writes[cid] == expected
    assert not broker.take_work()


# -- real nodes on real Redis -----------------------------------------------------------

WITHIN = 20.0


def _until(check: Any, what: str) -> None:
    """Poll ``check`` until it holds (bounded): for state only Redis can tell."""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # a poll's pace, not a wait for an event
    raise AssertionError(f"not within {WITHIN} s: {what}")


def _by_topic(messages: list[Any]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for message in messages:
        found.setdefault(message["topic"], []).append(message["index"])
    return found


def _replay_scenario(a: int, b: int) -> list[Any]:
    """Sends on port ``a``, a pattern subscribe on port ``b``: what the subscriber sees."""
    sender = Peer(a)
    commands = [send("o.eu", f"eu{i}") for i in range(3)]
    commands += [send("o.us", "job", "one"), send("other", "x"), send("o.us.x", "deep")]
    sender.send(lines(*commands))
    assert sender.lines(len(commands)) == [OK] * len(commands)
    watcher = Peer(b)
    watcher.send(line(sub("o.*")))
    return watcher.lines(5)


def test_replay_is_the_single_nodes(redis_server: RedisServer) -> None:
    with running() as single:
        alone = _replay_scenario(single.port, single.port)
    with nodes(redis_server.url, 2) as (a, b):
        assert _replay_scenario(a.port, b.port) == alone
        # The replayed `one` was consumed, cluster-wide.
        again = Peer(a.port)
        again.send(line(sub("o.*")))
        assert again.lines(4)[3]["topic"] == "o.eu"
        again.send(line(send("o.eu", "end")))
        assert again.lines(2) == [OK, delivered("o.eu", "end", 3)]


def test_topics_created_after_the_subscribe_on_another_node(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 2) as (a, b):
        watcher = Peer(b.port)  # no exact subscriber anywhere on b
        watcher.send(line(sub("new.>")))
        assert watcher.lines(1) == [OK]
        sender = Peer(a.port)
        topics = [f"new.t{i}" for i in range(20)]
        sender.send(lines(*(send(t, "first") for t in topics), send("old.x", "no")))
        assert sender.lines(21) == [OK] * 21
        assert _by_topic(watcher.lines(20)) == {t: [0] for t in topics}
        # Now mirrored: uncached and `one` messages arrive live, once each.
        sender.send(lines(send("new.t3", "u", cache=False), send("new.t4", "j", "one")))
        assert sender.lines(2) == [OK, OK]
        assert _by_topic(watcher.lines(2)) == {"new.t3": [1], "new.t4": [1]}
        # Unsubscribed: b drops the mirrors and its registrations.
        watcher.send(line(unsub("new.>")))
        assert watcher.lines(1) == [OK]
        _until(
            lambda: redis_server.command("ZCARD", "mq:{new.t3}:subs") == 0,
            "b unregistered from new.t3",
        )


def test_a_pattern_matching_thousands_of_topics(redis_server: RedisServer) -> None:
    count = 1500
    with (
        nodes(redis_server.url, 1) as (a,),
        nodes(redis_server.url, 1, "--max-topics", "1000") as (small,),
    ):
        sender = Peer(a.port)
        sender.send(lines(*(send(f"bulk.{i:04d}", "m") for i in range(count))))
        assert sender.lines(count) == [OK] * count
        _until(
            lambda: redis_server.command("SCARD", "mq:{~}:topics") == count,
            "every topic registered",
        )
        # Past the node's bound: refused, nothing mirrored, the node serves on.
        bounded = Peer(small.port)
        bounded.send(lines(sub("bulk.*"), sub("bulk.0001"), send("bulk.0001", "x")))
        assert bounded.lines(4) == [
            fail("Too many topics"),
            OK,
            delivered("bulk.0001", "m", 0),
            OK,
        ]
        # Within the bound: every topic replayed, in name order.
        watcher = Peer(a.port)
        watcher.send(line(sub("bulk.*")))
        got = watcher.lines(count + 2)
        assert got[0] == OK
        names = [f"bulk.{i:04d}" for i in range(count)]
        names.insert(1, "bulk.0001")  # its two messages, in index order
        assert [m["topic"] for m in got[1:]] == names
        assert got[2:4] == [delivered("bulk.0001", "m", 0), delivered("bulk.0001", "x", 1)]


def test_garbage_patterns_get_errors_and_the_node_serves_on(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 1) as (a,):
        peer = Peer(a.port)
        garbage = [sub("a..*"), sub("a.>.b"), sub("a.*", last_seen=0), sub("*" * 70_000)]
        peer.send(lines(*garbage) + b'{"command": "subscribe", "topic": ">", "cache": 7}\n')
        replies = peer.lines(5)
        assert all(r["success"] is False for r in replies)
        peer.send(lines(sub("ok.*"), send("ok.1", "m")))
        assert peer.lines(3) == [OK, OK, delivered("ok.1", "m", 0)]


def test_patterns_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    # The registry is one key on one shard; the topics are spread over the others.
    redis_cluster.flush()
    before, after = ["s.alpha", "s.beta", "s.gamma"], ["s.delta", "s.w{x}y", "s.}odd{"]
    with nodes(redis_cluster.url, 2) as (a, b):
        sender = Peer(a.port)
        # Sent at once after the start: the node must know it is on a Redis
        # Cluster before its first publish (it used to refuse these: MOVED).
        sender.send(lines(*(send(t, "old") for t in before)))
        assert sender.lines(3) == [OK] * 3
        _until(lambda: _registry_size(redis_cluster) == 3, "the registry written")
        watcher = Peer(b.port)
        watcher.send(line(sub("s.*")))
        assert watcher.lines(4) == [OK] + [delivered(t, "old", 0) for t in sorted(before)]
        sender.send(lines(*(send(t, "new") for t in after + before)))
        assert sender.lines(6) == [OK] * 6
        got = _by_topic(watcher.lines(6))
        assert got == {**{t: [0] for t in after}, **{t: [1] for t in before}}


def _registry_size(cluster: RedisCluster) -> int:
    """SCARD of the registry, asked of the shard that holds it (the others answer MOVED)."""
    for node in cluster.nodes:
        with contextlib.suppress(RedisError):
            size = node.command("SCARD", "mq:{~}:topics")
            assert isinstance(size, int)
            return size
    raise AssertionError("no shard holds the registry's slot")


def test_pattern_subscriptions_are_bounded_and_a_repeat_replays_again() -> None:
    broker = _broker(max_topics=1)
    cid = broker.open_connection()
    caches: dict[str, Any] = {"o.a": ([_item("o.a", 0)], [])}
    broker.receive_data(cid, line(sub("o.*")))
    _scan_and_load(broker, "o.*", ["o.a"], caches)
    # Again: as on one node, the reply and the replay again (not a new subscription).
    broker.receive_data(cid, lines(sub("o.*"), sub("p.*")))
    _scan_and_load(broker, "o.*", ["o.a"], caches)
    got = parse(broker.take_output().writes[cid])
    assert [m.get("index") for m in got] == [None, 0, None, 0, None]
    assert got[-1] == fail("Too many pattern subscriptions")

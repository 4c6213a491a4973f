"""Cluster mode of the core, synchronously (no sockets, no Redis): the node played by hand."""

from __future__ import annotations

from mqcore import Broker, ConnectionId
from mqcore._cluster import ClusterBroker, Delivered

from ..wire import OK, OK_BYTES, fail, line, lines, parse, send, sub, unsub


def _broker(**options: object) -> ClusterBroker:
    return ClusterBroker.for_node("n1", epoch="e", **options)


def _entry(index: int, kind: bytes, head: bytes) -> Delivered:
    return index, kind, head + b"%d}\r\n" % index


def _load(broker: ClusterBroker, topic: str, next_index: int = 0) -> None:
    work = broker.take_work()
    assert work.loads == [(topic, True)] or work.loads == [(topic, False)]
    broker.loaded(topic, next_index, [], [])


def test_send_is_a_publish_request_with_the_reply_at_its_slot() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, lines(send("t", "a"), send("u", "b", "one"), send("t", "c")))
    output = broker.take_output()
    assert output.writes[cid] == [OK_BYTES] * 3
    batches = {b.topic: b for b in output.publishes}
    assert batches["t"].kinds == ["c", "c"]
    assert batches["u"].kinds == ["p"]
    assert batches["t"].slots == [(cid, 0), (cid, 2)]
    # The head plus the index is byte for byte the single-node delivery.
    single = Broker()
    sub_id = single.open_connection()
    single.receive_data(sub_id, line(sub("t")))
    single.receive_data(single.open_connection(), line(send("t", "a")))
    expected = single.take_output().writes[sub_id][1]
    assert batches["t"].heads[0] + b"0}\r\n" == expected


def test_refusals_need_no_backend() -> None:
    broker = _broker(max_topic_bytes=5)
    cid = broker.open_connection()
    broker.receive_data(cid, lines(send("toolongname", "a"), send("a.*", "b")) + b"garbage\n")
    output = broker.take_output()
    assert output.publishes == []
    assert parse(output.writes[cid]) == [
        fail("Topic name too long"),
        fail("Cannot send to a pattern"),
        fail("Could not parse json"),
    ]
    broker.set_backend_available(False)
    broker.receive_data(cid, line(send("t", "a")))
    assert parse(broker.take_output().writes[cid]) == [fail("Backend unavailable")]


def test_subscribe_pauses_the_connection_until_the_mirror_is_loaded() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, lines(sub("t", last_seen=0), send("x", "after")) + b'{"comm')
    broker.receive_data(cid, b'and": "send", "topic": "x", "msg": "m", "delivery": "all"}\n')
    assert broker.paused(cid)
    assert broker.take_output().writes == {}
    head = b'{"command": "send", "topic": "t", "msg": "m", "delivery": "all", "index": '
    work = broker.take_work()
    assert work.loads == [("t", True)]
    # A live batch that overlaps the load's snapshot: dropped up to its next index.
    broker.deliver("t", 1, 3, [_entry(1, b"c", head), _entry(2, b"c", head)])
    broker.loaded("t", 2, [_entry(0, b"c", head), _entry(1, b"c", head)], [])
    assert not broker.paused(cid)
    output = broker.take_output()
    got = parse(output.writes[cid])
    assert got[0] == OK
    assert [m["index"] for m in got[1:3]] == [1, 2]  # replay after last_seen, then live: no dup
    assert got[3:] == [OK, OK]  # the held sends, in order, after the replay
    assert [b.kinds for b in output.publishes] == [["c", "c"]]


def test_duplicates_dropped_and_a_gap_reloads() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("t")))
    _load(broker, "t")
    broker.take_output()
    head = b'{"x": 1, "index": '
    broker.deliver("t", 0, 2, [_entry(0, b"a", head), _entry(1, b"a", head)])
    broker.deliver("t", 1, 2, [_entry(1, b"a", head)])  # a duplicate
    broker.deliver("t", 5, 6, [_entry(5, b"a", head)])  # a gap: 2..4
    assert [m["index"] for m in parse(broker.take_output().writes[cid])] == [0, 1]
    assert broker.take_work().loads == [("t", False)]
    broker.deliver("t", 6, 7, [_entry(6, b"a", head)])  # waits behind the reload
    broker.loaded("t", 6, [_entry(3, b"c", head), _entry(4, b"c", head)], [])
    assert [m["index"] for m in parse(broker.take_output().writes[cid])] == [3, 4, 5, 6]


def test_one_goes_to_one_local_target_or_back_to_the_node() -> None:
    broker = _broker()
    a, b = broker.open_connection(), broker.open_connection()
    broker.receive_data(a, line(sub("t")))
    _load(broker, "t")
    broker.receive_data(b, line(sub("t")))
    broker.take_output()
    head = b'{"x": 1, "index": '
    ones = [_entry(i, b"on1", head) for i in range(10)] + [_entry(10, b"on2", head)]
    broker.deliver("t", 0, 11, ones)
    writes = broker.take_output().writes
    assert sum(len(w) for w in writes.values()) == 10  # the other node's one is not ours
    broker.receive_data(a, line(unsub("t")))
    broker.receive_data(b, line(unsub("t")))
    work = broker.take_work()
    assert work.drops == ["t"]
    broker.deliver("t", 0, 0, [_entry(3, b"pn1", head)])
    assert broker.take_work().returns == [("t", [_entry(3, b"pn1", head)])]


def test_ack_is_offered_and_patterns_get_live_deliveries() -> None:
    broker = _broker()
    cid = broker.open_connection()
    pattern = broker.open_connection()
    broker.receive_data(cid, line({"command": "hello"}))
    [hello] = parse(broker.take_output().writes[cid])
    # Offered as a single broker offers it (tests/cluster/test_cluster_acks.py).
    single = Broker(epoch="e")
    alone = single.open_connection()
    single.receive_data(alone, line({"command": "hello"}))
    assert hello["features"] == parse(single.take_output().writes[alone])[0]["features"]
    assert "ack" in hello["features"]
    broker.receive_data(cid, line(sub("t.*", ack=True)))
    assert parse(broker.take_output().writes[cid]) == [
        fail("An acknowledging subscription needs an exact topic")
    ]
    broker.receive_data(pattern, line(sub("t.*")))
    # A pattern subscribe reads the backend's topic registry first (none yet).
    assert broker.take_work().scans == ["t.*"]
    broker.pattern_mirrors.scanned("t.*", [])
    assert parse(broker.take_output().writes[pattern]) == [OK]
    broker.receive_data(cid, line(sub("t.a")))
    _load(broker, "t.a")
    broker.take_output()
    broker.deliver("t.a", 0, 1, [_entry(0, b"a", b'{"x": 1, "index": ')])
    writes = broker.take_output().writes
    assert set(writes) == {cid, pattern}


def test_a_subscriber_gone_while_paused_is_forgotten() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("t")))
    broker.connection_lost(cid)
    assert not broker.paused(ConnectionId(cid))
    _load(broker, "t")
    assert broker.take_work().drops == ["t"]
    assert broker.take_output().writes == {}


def test_load_failure_refuses_the_waiting_subscribe_and_resumes() -> None:
    broker = _broker()
    cid = broker.open_connection()
    broker.receive_data(cid, lines(sub("t"), send("u", "m")))
    broker.take_work()
    broker.load_failed("t")
    assert parse(broker.take_output().writes[cid]) == [fail("Backend unavailable"), OK]

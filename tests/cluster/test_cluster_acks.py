"""Acknowledged delivery in cluster mode: the core played by hand, then real nodes on Redis.

The rules are single-node's (tests/core/test_acks.py); what cluster mode
adds: a job stays pending in Redis until acked (the core asks the node to
confirm it), a consumer-less node gives its jobs back, and a killed node's
unacked jobs reach a consumer on another node.
"""

from __future__ import annotations

import os
import signal

from mqcore import ConnectionId
from mqcore._cluster import ClusterBroker, Delivered
from mqcore_tcp.testing_redis import RedisServer

from ..wire import OK, fail, line, parse, send, sub, unsub
from .support import Peer, nodes
from .test_cluster_one import (
    _collect,
    _exactly_once,
    _nothing_more,
    _pending,
    _subscribers,
    _until_confirmed,
)

NOT_PENDING = fail("Not pending: unknown index, already acknowledged, or another's")
HEAD = b'{"command": "send", "topic": "t", "msg": "m", "delivery": "one", "index": '


def _one(index: int, node: bytes = b"n1") -> Delivered:
    return index, b"p" + node, HEAD + b"%d}\r\n" % index


def _consumer(broker: ClusterBroker, **options: object) -> ConnectionId:
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("t", ack=True, **options)))
    work = broker.take_work()
    assert work.loads == [("t", True)]
    broker.loaded("t", 0, [], [])
    assert parse(broker.take_output().writes[cid]) == [OK]
    return cid


def _ack(index: int, topic: str = "t") -> bytes:
    return line({"command": "ack", "topic": topic, "index": index})


def _nack(index: int) -> bytes:
    return line({"command": "nack", "topic": "t", "index": index})


def test_a_job_is_confirmed_only_when_acked() -> None:
    broker = ClusterBroker.for_node("n1", epoch="e", ack_wait=30.0, max_deliver=3)
    cid = _consumer(broker)
    broker.deliver("t", 0, 2, [_one(0), _one(1, b"n2")])  # the second is another node's
    assert [m["attempt"] for m in parse(broker.take_output().writes[cid])] == [1]
    assert broker.take_work().confirms == []  # delivered, not done: still pending in Redis
    broker.receive_data(cid, _nack(0))
    assert [m.get("attempt") for m in parse(broker.take_output().writes[cid])] == [2, None]
    broker.receive_data(cid, _ack(0))
    assert parse(broker.take_output().writes[cid]) == [OK]
    assert broker.take_work().confirms == [("t", [0])]
    # Repeated, unknown, and another connection's acks: refused, nothing confirmed.
    other = broker.open_connection()
    broker.deliver("t", 2, 3, [_one(2)])
    broker.take_output()
    broker.receive_data(cid, _ack(0) + _ack(99))
    broker.receive_data(other, _ack(2))
    writes = broker.take_output().writes
    assert parse(writes[cid]) == [NOT_PENDING, NOT_PENDING]
    assert parse(writes[other]) == [fail("Not an acknowledging subscriber of this topic")]
    assert broker.take_work().confirms == []


def test_ack_wait_redelivers_then_dead_letters_and_confirms() -> None:
    broker = ClusterBroker.for_node("n1", epoch="e", ack_wait=5.0, max_deliver=2)
    broker.advance(100.0)
    cid = _consumer(broker)
    broker.deliver("t", 0, 1, [_one(0)])
    assert parse(broker.take_output().writes[cid])[0]["attempt"] == 1
    broker.advance(106.0)
    assert parse(broker.take_output().writes[cid])[0]["attempt"] == 2
    broker.advance(112.0)
    output = broker.take_output()
    # Given up: a `one` to t.dead, published through the backend like any send.
    [dead] = output.publishes
    assert dead.topic == "t.dead"
    assert dead.kinds == ["p"]
    assert dead.slots == []  # the broker's own send: no reply slot
    assert broker.take_work().confirms == [("t", [0])]


def test_a_node_without_consumers_gives_its_jobs_back() -> None:
    broker = ClusterBroker.for_node("n1", epoch="e", ack_wait=30.0)
    cid = _consumer(broker, prefetch=1)
    broker.deliver("t", 0, 3, [_one(0), _one(1), _one(2)])
    assert [m["index"] for m in parse(broker.take_output().writes[cid])] == [0]
    broker.receive_data(cid, line(unsub("t")))
    work = broker.take_work()
    # All three go back to Redis (the pending one too), for another node.
    assert sorted(i for _, ones in work.returns for i, _, _ in ones) == [0, 1, 2]
    assert work.drops == ["t"]
    assert work.confirms == []


def test_claimed_cached_ones_become_jobs() -> None:
    broker = ClusterBroker.for_node("n1", epoch="e")
    cid = broker.open_connection()
    broker.receive_data(cid, line(sub("t", ack=True, cache=False)))
    assert broker.take_work().loads == [("t", True)]
    broker.loaded("t", 2, [], [(0, b"p", HEAD + b"0}\r\n"), (1, b"p", HEAD + b"1}\r\n")])
    got = parse(broker.take_output().writes[cid])
    assert got[0] == OK
    assert [(m["index"], m["attempt"]) for m in got[1:]] == [(0, 1), (1, 1)]
    broker.receive_data(cid, _ack(1) + _ack(0))
    assert sorted(i for _, done in broker.take_work().confirms for i in done) == [0, 1]


def _consume(peer: Peer, count: int) -> list[str]:
    """Receive ``count`` jobs on ``peer``, acking each; their msgs."""
    msgs: list[str] = []
    for _ in range(count):
        job = peer.lines(1)[0]
        if "attempt" not in job:
            assert job == OK  # an ack's reply
            continue
        msgs.append(job["msg"])
        peer.send(_ack(job["index"], job["topic"]))
    return msgs


def test_a_killed_nodes_unacked_jobs_go_to_a_consumer_on_another_node(
    redis_server: RedisServer,
) -> None:
    with nodes(redis_server.url, 3) as (a, b, c):
        doomed, worker = _subscribers([a.port, b.port], "jobs", ack=True, prefetch=1000)
        doomed.send(line({"command": "hello"}))
        assert "ack" in doomed.lines(1)[0]["features"]
        sender = Peer(c.port)
        sender.send(b"".join(line(send("jobs", f"j{i}", "one")) for i in range(200)))
        assert sender.lines(200) == [OK] * 200
        # Both take jobs; the doomed one acks a few, then dies holding the rest.
        got_doomed, got_worker = _collect([doomed, worker], 200)
        assert got_doomed
        assert got_worker
        acked = got_doomed[:5]
        for msg in acked:
            doomed.send(_ack(int(msg[1:]), "jobs"))  # index i is message j<i>
        assert doomed.lines(5) == [OK] * 5
        for msg in got_worker:
            worker.send(_ack(int(msg[1:]), "jobs"))
        assert worker.lines(len(got_worker)) == [OK] * len(got_worker)
        # An ack is answered at once and told to Redis within the node's next
        # round of work (a few ms): a node killed in between has its acked jobs
        # delivered again (at least once). Killed once Redis has the acks.
        _until_confirmed(redis_server, "jobs", left=len(got_doomed) - 5)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        redelivered = _consume(worker, 2 * (len(got_doomed) - 5))
        _exactly_once(acked + got_worker + redelivered, [f"j{i}" for i in range(200)])
        _nothing_more(worker)
        assert _pending(redis_server, "jobs") == 0

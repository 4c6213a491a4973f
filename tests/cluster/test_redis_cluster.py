"""The same basics against a 3-master Redis Cluster: topics on different shards."""

from __future__ import annotations

from mqcore_tcp.testing_redis import RedisCluster

from ..wire import OK, line, lines, send, sub
from .support import Peer, nodes

#: Names whose hash tags fall on different shards (checked below).
TOPICS = ["alpha", "beta", "gamma", "delta", "w{x}y", "}odd{"]


def test_nodes_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    redis_cluster.flush()
    with nodes(redis_cluster.url, 2) as (a, b):
        listener = Peer(b.port)
        listener.send(b"".join(line(sub(topic, cache=False)) for topic in TOPICS))
        assert listener.lines(len(TOPICS)) == [OK] * len(TOPICS)
        sender = Peer(a.port)
        sender.send(b"".join(line(send(topic, f"m{i}")) for i in range(20) for topic in TOPICS))
        assert sender.lines(20 * len(TOPICS)) == [OK] * (20 * len(TOPICS))
        got = listener.lines(20 * len(TOPICS))
        for topic in TOPICS:
            assert [m["index"] for m in got if m["topic"] == topic] == list(range(20))
        late = Peer(a.port)
        late.send(lines(sub("gamma", last_seen=17)))
        assert [m.get("index") for m in late.lines(3)] == [None, 18, 19]
    shard = redis_cluster.nodes[0]
    slots = {shard.command("CLUSTER", "KEYSLOT", f"mq:{{{t}}}:next") for t in TOPICS[:4]}
    assert len(slots) == 4  # four topics, four slots: spread over the shards

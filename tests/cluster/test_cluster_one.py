"""End to end: a ``one`` message accepted by Redis is not lost when its node dies.

Every routed ``one`` is pending in Redis until its node confirms it; a node
found dead has its pending ones re-routed (see mqcore_tcp/cluster/_scripts.py).
A node frozen by SIGSTOP then SIGKILLed makes the loss window deterministic:
everything routed to it while frozen was never handed to a subscriber.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import Counter

from mqcore_tcp.cluster._keys import TopicKeys
from mqcore_tcp.cluster._scripts import PUBLISH
from mqcore_tcp.testing_redis import RedisServer

from ..wire import OK, line, send, sub
from .support import Peer, nodes

WITHIN = 20.0  # seconds: a dead registration expires in 3, heartbeats every 1


def _jobs(prefix: str, count: int, topic: str = "jobs") -> bytes:
    return b"".join(line(send(topic, f"{prefix}{i}", "one")) for i in range(count))


def _subscribers(ports: list[int], topic: str, **options: object) -> list[Peer]:
    """One subscriber of ``topic`` on each node of ``ports``, subscribed."""
    peers = [Peer(port) for port in ports]
    for peer in peers:
        peer.send(line(sub(topic, **options)))
        assert peer.lines(1) == [OK]
    return peers


def _collect(peers: list[Peer], total: int, within: float = WITHIN) -> list[list[str]]:
    """Read the deliveries of ``peers`` until they add up to ``total``: each peer's msgs."""
    got: list[list[str]] = [[] for _ in peers]
    deadline = time.monotonic() + within
    while sum(map(len, got)) < total:
        left = deadline - time.monotonic()
        assert left > 0, f"only {sum(map(len, got))} of {total} delivered"
        for i, peer in enumerate(peers):
            if b"\n" in peer._buffer:
                got[i].append(peer.lines(1)[0]["msg"])
                break
        else:
            ready, _, _ = select.select([p.sock for p in peers], [], [], left)
            for peer in peers:
                if peer.sock in ready:
                    chunk = peer.sock.recv(1 << 20)
                    assert chunk, "a subscriber's node closed it"
                    peer._buffer += chunk
    return got


def _nothing_more(peer: Peer, quiet: float = 0.5) -> None:
    """No further delivery within ``quiet`` seconds (a duplicate would come by then)."""
    assert b"\n" not in peer._buffer, peer._buffer
    ready, _, _ = select.select([peer.sock], [], [], quiet)
    assert not ready, peer.sock.recv(1 << 16)


def _drained(peer: Peer) -> list[str]:
    """What ``peer`` still receives until its node closes it."""
    msgs: list[str] = []
    try:
        while True:
            msgs.append(peer.lines(1)[0]["msg"])
    except (ConnectionError, OSError):
        return msgs


def _pending(redis: RedisServer, topic: str) -> int:
    count = redis.command("HLEN", TopicKeys(topic).keys[4])
    assert isinstance(count, int)
    return count


def _until_confirmed(redis: RedisServer, topic: str, left: int = 0) -> None:
    """Wait until the nodes confirmed every ``one`` of ``topic`` they handed out (or
    finished: acked jobs) but ``left``."""
    deadline = time.monotonic() + WITHIN
    while _pending(redis, topic) > left:
        assert time.monotonic() < deadline, "handed ones stay pending"
        time.sleep(0.02)  # polling Redis's state: no event to await there


def _exactly_once(received: list[str], expected: list[str]) -> None:
    counts = Counter(received)
    assert [m for m, n in counts.items() if n > 1] == []
    assert sorted(counts) == sorted(expected)


def test_ones_routed_to_a_killed_node_reach_the_other_subscriber(
    redis_server: RedisServer,
) -> None:
    with nodes(redis_server.url, 3) as (a, b, c):
        on_a, on_b = _subscribers([a.port, b.port], "jobs", cache=False)
        sender = Peer(c.port)
        sender.send(_jobs("before", 200))
        assert sender.lines(200) == [OK] * 200
        got_a, got_b = _collect([on_a, on_b], 200)
        assert got_a  # both nodes were chosen
        assert got_b
        _until_confirmed(redis_server, "jobs")
        # A freezes mid-stream: what Redis routes to it now never reaches its subscriber.
        os.kill(a.pid, signal.SIGSTOP)
        sender.send(_jobs("during", 200))
        assert sender.lines(200) == [OK] * 200  # acknowledged: stored in Redis
        a.kill()
        a.wait()
        assert _drained(on_a) == []
        sender.send(_jobs("after", 50))
        assert sender.lines(50) == [OK] * 50
        (late_b,) = _collect([on_b], 250)
        everything = [f"{p}{i}" for p, n in (("before", 200), ("during", 200)) for i in range(n)]
        everything += [f"after{i}" for i in range(50)]
        _exactly_once(got_a + got_b + late_b, everything)
        _nothing_more(on_b)
        assert _pending(redis_server, "jobs") == 0


def test_ones_of_a_killed_node_go_to_a_later_subscriber(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 2) as (a, b):
        _subscribers([a.port], "work", cache=False)
        os.kill(a.pid, signal.SIGSTOP)
        sender = Peer(b.port)
        sender.send(_jobs("w", 100, "work"))
        sender.send(b"".join(line(send("work", f"k{i}", "one", cache=False)) for i in range(20)))
        assert sender.lines(120) == [OK] * 120
        a.kill()
        a.wait()
        # The only subscriber is gone: the cached ones (consumed once) and the
        # uncached ones alike wait in Redis for the next subscriber anywhere.
        (later,) = _subscribers([b.port], "work", cache=False)
        (got,) = _collect([later], 120)
        _exactly_once(got, [f"w{i}" for i in range(100)] + [f"k{i}" for i in range(20)])
        _nothing_more(later)
        (another,) = _subscribers([b.port], "work")
        _nothing_more(another)  # consumed: not replayed


def test_a_killed_node_stops_getting_one_messages(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 3) as (a, b, c):
        alive, _doomed = _subscribers([b.port, c.port], "jobs", cache=False)
        # "all" subscribers elsewhere keep getting everything meanwhile.
        (watcher,) = _subscribers([b.port], "news", cache=False)
        c.kill()
        c.wait()
        sender = Peer(a.port)
        # Until its registration expires a `one` may still be routed to the
        # dead node: it reaches the live subscriber once the node is found dead.
        sender.send(_jobs("j", 500))
        sender.send(b"".join(line(send("news", f"n{i}")) for i in range(500)))
        assert sender.lines(1000) == [OK] * 1000
        (got,) = _collect([alive], 500)
        _exactly_once(got, [f"j{i}" for i in range(500)])
        assert [m["index"] for m in watcher.lines(500)] == list(range(500))
        # From then on the dead node is not chosen: the next ones come straight, in order.
        sender.send(_jobs("k", 500))
        assert sender.lines(500) == [OK] * 500
        assert [m["msg"] for m in alive.lines(500)] == [f"k{i}" for i in range(500)]
        _nothing_more(alive)


def _route(
    redis: RedisServer, topic: str, node: str, mode: str, *rest: str | bytes | int
) -> object:
    keys = TopicKeys(topic).keys
    return redis.command("EVAL", PUBLISH, len(keys), *keys, keys[0][:-5], 0, 1, mode, node, *rest)


def test_confirms_remove_only_the_nodes_own_pending_ones(redis_server: RedisServer) -> None:
    # A node registered by hand (Redis only, no mqcore node): the script routes to it.
    assert _route(redis_server, "q", "n1", "h", 1, 60_000) == 0
    head = b'{"command": "send", "topic": "q", "msg": "x", "delivery": "one", "index": '
    assert _route(redis_server, "q", "", "n", "ooo", (head + b"\n") * 3) == 0
    assert _pending(redis_server, "q") == 3
    # Another node's confirms, unknown indices, garbage: nothing removed.
    assert _route(redis_server, "q", "n2", "c", 0, 1, 2) == 0
    assert _route(redis_server, "q", "n1", "c", 7, 99, "x") == 0
    assert _pending(redis_server, "q") == 3
    assert _route(redis_server, "q", "n1", "c", 0, 2) == 2
    assert _route(redis_server, "q", "n1", "c", 0, 2) == 0  # repeated
    assert _pending(redis_server, "q") == 1
    # The node leaves: its last pending one has nowhere to go and was not cached ("o").
    assert _route(redis_server, "q", "n1", "u") == 0
    assert _pending(redis_server, "q") == 0

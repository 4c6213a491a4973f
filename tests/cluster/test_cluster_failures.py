"""End to end, when things fail: Redis stopped and restarted, a node SIGKILLed."""

from __future__ import annotations

import time

from mqcore_tcp.testing_redis import RedisServer

from ..wire import OK, fail, line, send, sub
from .support import Peer, nodes

UNAVAILABLE = fail("Backend unavailable")


def _send_until_ok(sender: Peer, topic: str, within: float = 20.0) -> int:
    """Send one message at a time until one is acknowledged; how many were refused."""
    refused = 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sender.send(line(send(topic, f"retry{refused}")))
        reply = sender.lines(1)[0]
        if reply == OK:
            return refused
        assert reply == UNAVAILABLE
        refused += 1
        time.sleep(0.1)  # a retry loop's pace, not a wait for an event
    raise AssertionError("the node did not recover")


def test_redis_restarted_mid_stream(redis_server_aof: RedisServer) -> None:
    with nodes(redis_server_aof.url, 2) as (a, b):
        listener = Peer(b.port)
        listener.send(line(sub("t")))
        assert listener.lines(1) == [OK]
        sender = Peer(a.port)
        sender.send(b"".join(line(send("t", f"m{i}")) for i in range(100)))
        assert sender.lines(100) == [OK] * 100
        assert [m["index"] for m in listener.lines(100)] == list(range(100))
        redis_server_aof.stop()
        sender.send(b"".join(line(send("t", f"lost{i}")) for i in range(5)))
        assert sender.lines(5) == [UNAVAILABLE] * 5  # refused, none half-accepted
        redis_server_aof.start()
        _send_until_ok(sender, "t")
        sender.send(b"".join(line(send("t", f"after{i}")) for i in range(50)))
        assert sender.lines(50) == [OK] * 50
        # Every acknowledged message reaches the subscriber, in order, without a gap.
        got = listener.lines(51)
        assert [m["index"] for m in got] == list(range(100, 151))
        assert got[0]["msg"].startswith("retry")
        assert [m["msg"] for m in got[1:]] == [f"after{i}" for i in range(50)]


def test_a_killed_node_stops_getting_one_messages(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 3) as (a, b, c):
        alive, doomed = Peer(b.port), Peer(c.port)
        for peer in (alive, doomed):
            peer.send(line(sub("jobs", cache=False)))
            assert peer.lines(1) == [OK]
        # "all" subscribers elsewhere keep getting everything meanwhile.
        watcher = Peer(b.port)
        watcher.send(line(sub("news", cache=False)))
        assert watcher.lines(1) == [OK]
        c.kill()
        c.wait()
        sender = Peer(a.port)
        # Until its registration expires a `one` may still go to the dead node;
        # from then on every one reaches the live subscriber.
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "the killed node is still chosen"
            sender.send(b"".join(line(send("jobs", f"probe{i}", "one")) for i in range(20)))
            assert sender.lines(20) == [OK] * 20
            alive.sock.settimeout(0.5)
            got = 0
            try:
                while got < 20:
                    alive.raw_lines(1)
                    got += 1
            except TimeoutError:
                pass
            if got == 20:
                break
        alive.sock.settimeout(10)
        sender.send(b"".join(line(send("jobs", f"j{i}", "one")) for i in range(500)))
        sender.send(b"".join(line(send("news", f"n{i}")) for i in range(500)))
        assert sender.lines(1000) == [OK] * 1000
        assert [m["msg"] for m in alive.lines(500)] == [f"j{i}" for i in range(500)]
        assert [m["index"] for m in watcher.lines(500)] == list(range(500))

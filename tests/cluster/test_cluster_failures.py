"""End to end, when things fail: Redis stopped and restarted.

A node SIGKILLed: test_cluster_one.py.
"""

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

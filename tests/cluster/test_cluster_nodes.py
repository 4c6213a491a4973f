"""End to end: real redis-server, real nodes as subprocesses, clients on raw sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from mqcore_tcp.testing import ServerProcess
from mqcore_tcp.testing_redis import RedisServer, start_redis

from ..redis_fixtures import need_redis
from ..wire import OK, fail, line, lines, send, sub
from .support import Peer, nodes


@pytest.fixture(scope="module")
def three() -> Iterator[list[ServerProcess]]:
    """One Redis and three nodes, shared by this module's tests (each uses its own topics)."""
    need_redis()
    with start_redis() as redis, nodes(redis.url, 3) as started:
        yield started


def test_fan_out_across_three_nodes_in_order(three: list[ServerProcess]) -> None:
    a, b, c = three
    subscribers = [Peer(node.port) for node in (a, b, c) for _ in range(2)]
    for peer in subscribers:
        peer.send(line(sub("news", cache=False)))
        assert peer.lines(1) == [OK]
    sender = Peer(b.port)
    sender.send(b"".join(line(send("news", f"m{i}")) for i in range(500)))
    assert sender.lines(500) == [OK] * 500
    expected = [
        b'{"command": "send", "topic": "news", "msg": "m%d", "delivery": "all", '
        b'"index": %d}\r\n' % (i, i)
        for i in range(500)
    ]
    for peer in subscribers:
        assert peer.raw_lines(500) == expected


def test_replay_with_last_seen_from_another_node(three: list[ServerProcess]) -> None:
    a, b, _ = three
    sender = Peer(a.port)
    sender.send(b"".join(line(send("log", f"m{i}")) for i in range(10)))
    assert sender.lines(10) == [OK] * 10
    late = Peer(b.port)
    late.send(lines(sub("log", last_seen=6), {"command": "hello"}))
    got = late.lines(5)
    assert got[0] == OK
    assert [m["index"] for m in got[1:4]] == [7, 8, 9]
    epoch = got[4]["epoch"]
    other = Peer(a.port)
    other.send(line({"command": "hello"}))
    assert other.lines(1)[0]["epoch"] == epoch  # one epoch on every node
    sender.send(line(send("log", "live")))
    assert sender.lines(1) == [OK]
    assert late.lines(1)[0]["index"] == 10


def test_one_is_delivered_exactly_once_across_nodes(three: list[ServerProcess]) -> None:
    total = 10_000
    started = three
    subscribers = [Peer(node.port) for node in started for _ in range(2)]
    for peer in subscribers:
        peer.send(line(sub("jobs", cache=False)))
        assert peer.lines(1) == [OK]
    sender = Peer(started[0].port)
    sender.send(b"".join(line(send("jobs", f"j{i}", "one")) for i in range(total)))
    assert sender.lines(total) == [OK] * total
    seen: list[int] = []
    per_node = [0, 0, 0]
    deadline = time.monotonic() + 20
    for peer in subscribers:
        peer.sock.settimeout(0.5)
    while len(seen) < total and time.monotonic() < deadline:
        for position, peer in enumerate(subscribers):
            try:
                chunk = peer.sock.recv(1 << 20)
            except TimeoutError:
                continue
            peer._buffer += chunk
            *complete, peer._buffer = peer._buffer.split(b"\n")
            for raw in complete:
                seen.append(json.loads(raw)["index"])
            per_node[position // 2] += len(complete)
    assert sorted(seen) == list(range(total))  # each exactly once
    assert all(count > 0 for count in per_node)  # every node was chosen


def _refused_start(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mqcore_tcp ARGS``, expected to refuse to start: its result."""
    command = [sys.executable, "-m", "mqcore_tcp", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_a_node_with_another_cache_size_refuses_to_start(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 1, "--cache-size", "100"):
        done = _refused_start("--port", "0", "--cluster", redis_server.url, "--cache-size", "7")
    assert done.returncode == 1
    assert "--cache-size 7 differs from the cluster's 100" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cluster_refuses_trio() -> None:
    done = _refused_start("--cluster", "redis://127.0.0.1:1", "--backend", "trio")
    assert done.returncode == 2
    assert "--cluster needs --backend asyncio" in done.stderr


def test_garbage_and_huge_lines_get_one_reply_each(redis_server: RedisServer) -> None:
    with nodes(redis_server.url, 1, "--max-line-bytes", "1000") as (a,):
        peer = Peer(a.port)
        peer.send(
            b"garbage\n"
            + b"x" * 5000
            + b"\n"
            + line(send("t", "ok"))
            + b"\xff\n"
            + line(send("a.*", "p"))
            + line(sub("a.*", ack=True))
        )
        assert peer.lines(6) == [
            fail("Could not parse json"),
            fail("Line too long"),
            OK,
            fail("Could not decode input as UTF-8"),
            fail("Cannot send to a pattern"),
            fail("An acknowledging subscription needs an exact topic"),
        ]


def test_a_slow_subscriber_on_one_node_does_not_stall_the_others(
    three: list[ServerProcess],
) -> None:
    a, b, c = three
    stalled = Peer(b.port)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.send(line(sub("bulk", cache=False)))  # and never reads again
    reader = Peer(c.port)
    reader.send(line(sub("bulk", cache=False)))
    assert reader.lines(1) == [OK]
    sender = Peer(a.port)
    payload = "x" * 10_000
    for start in range(0, 2000, 100):
        sender.send(
            b"".join(line(send("bulk", f"{payload}{i}")) for i in range(start, start + 100))
        )
        assert sender.lines(100) == [OK] * 100
    assert [m["index"] for m in reader.lines(2000)] == list(range(2000))

"""The node's publishing pipeline (one connection, replies matched in order) on a real Redis.

The pipeline is driven directly with hand-made outputs (as the hub would
submit them), against a real ``redis-server``; what Redis stored is read back
with plain RESP. The last test runs it inside real nodes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
import pytest

from mqcore import ConnectionId, Output, Reason, error_reply
from mqcore._cluster import TopicBatch
from mqcore_tcp.cluster._backend import CALL_TIMEOUT
from mqcore_tcp.cluster._keys import TopicKeys
from mqcore_tcp.cluster._pipeline import (
    MAX_FLIGHT_BYTES,
    MAX_FLIGHTS,
    PIPELINE_NAME,
    PublishPipeline,
)
from mqcore_tcp.testing_redis import RedisServer, redis_command

from ..wire import OK, OK_BYTES, line, send, sub
from .support import Peer, nodes

UNAVAILABLE_BYTES = error_reply(Reason.BACKEND_UNAVAILABLE)
CACHE = 100_000


class Released:
    """What the pipeline released, in order; wait for a count of outputs."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.errors: list[BaseException] = []
        #: Topics reported new (their first message published), in order.
        self.created: list[str] = []
        self._changed = anyio.Event()

    def release(self, outputs: list[Output]) -> None:
        self.outputs += outputs
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, count: int, within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while len(self.outputs) < count:
                await self._changed.wait()


def _output(cid: int, topic: str | None, msgs: list[str]) -> Output:
    """An output of ``cid``: one cached send per msg to ``topic`` (None: a plain reply)."""
    conn = ConnectionId(cid)
    if topic is None:
        return Output(writes={conn: [b"pong\r\n"]})
    heads = [b'{"topic": "%s", "msg": "%s", "index": ' % (topic.encode(), m.encode()) for m in msgs]
    batch = TopicBatch(topic, ["c"] * len(msgs), heads, [(conn, i) for i in range(len(msgs))])
    return Output(writes={conn: [OK_BYTES] * len(msgs)}, publishes=[batch])


def _stored(redis: RedisServer, topic: str) -> list[bytes]:
    """The messages of ``topic`` in Redis's cache, oldest first (their msg fields)."""
    items = redis_command(redis.port, "LRANGE", TopicKeys(topic).keys[1], 0, -1)
    assert isinstance(items, list)
    return [item.split(b'"msg": "')[1].split(b'"')[0] for item in items if isinstance(item, bytes)]


def _replies(outputs: list[Output]) -> list[bytes]:
    return [chunk for output in outputs for chunks in output.writes.values() for chunk in chunks]


@pytest.fixture
def released() -> Released:
    return Released()


@asynccontextmanager
async def running(redis: RedisServer, released: Released) -> AsyncIterator[PublishPipeline]:
    """A pipeline to ``redis`` with its reader running; closed on leaving."""
    pipeline = PublishPipeline(
        redis.url, CACHE, released.release, released.errors.append, released.created.extend
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.watch)
            yield pipeline
            tg.cancel_scope.cancel()
    finally:
        await pipeline.aclose()


async def publish(pipeline: PublishPipeline, released: Released, output: Output) -> None:
    """Send ``output`` and wait until it is released."""
    await pipeline.send([output])
    await released.until(len(released.outputs) + 1)


@pytest.mark.anyio
async def test_many_flights_in_flight_are_released_in_order(
    redis_server: RedisServer, released: Released
) -> None:
    submitted: list[Output] = []
    most = 0
    async with running(redis_server, released) as pipeline:
        for i in range(400):
            # Three topics, several connections, and plain replies queued behind sends.
            topic = None if i % 7 == 6 else f"t{i % 3}"
            submitted.append(_output(i % 5, topic, [f"m{i}.{j}" for j in range(1 + i % 4)]))
            await pipeline.send([submitted[-1]])
            most = max(most, pipeline.in_flight)
        await released.until(len(submitted))
    assert 1 < most <= MAX_FLIGHTS  # sent without waiting for replies, within the bound
    assert [id(o) for o in released.outputs] == [id(o) for o in submitted]
    assert b'{"success": false' not in b"".join(_replies(released.outputs))
    assert released.errors == []
    # Each topic reported new once: with its first message (for the pattern registry).
    assert released.created == ["t0", "t1", "t2"]
    for t in range(3):
        topic = f"t{t}"
        expected = [
            f"m{i}.{j}".encode()
            for i in range(400)
            if i % 3 == t and i % 7 != 6
            for j in range(1 + i % 4)
        ]
        assert _stored(redis_server, topic) == expected  # every batch in the order sent


@pytest.mark.anyio
async def test_huge_flights_stay_within_the_bytes_bound(
    redis_server: RedisServer, released: Released
) -> None:
    big = "x" * 100_000
    submitted: list[Output] = []
    async with running(redis_server, released) as pipeline:
        for i in range(200):  # 20 MB of sends, over twice the bound
            submitted.append(_output(i % 3, "h", [f"{i}{big}"]))
            await pipeline.send([submitted[-1]])
            # At most one flight past the bound: the one that reached it.
            assert pipeline.in_flight_bytes < MAX_FLIGHT_BYTES + 200_000
        await released.until(len(submitted), within=30)
    assert [id(o) for o in released.outputs] == [id(o) for o in submitted]
    assert _replies(released.outputs) == [OK_BYTES] * 200
    assert released.errors == []


@pytest.mark.anyio
async def test_redis_killed_with_flights_in_flight(
    redis_server_aof: RedisServer, released: Released
) -> None:
    redis = redis_server_aof
    submitted: list[Output] = []
    async with running(redis, released) as pipeline:
        for i in range(300):
            submitted.append(_output(1, "k", [f"m{i}.{j}" for j in range(20)]))
            await pipeline.send([submitted[-1]])
            if i == 150:
                redis.kill()  # flights are in flight: their outcome becomes unknown
                await anyio.to_thread.run_sync(redis.wait)
        await released.until(len(submitted), within=3 * CALL_TIMEOUT)
    assert [id(o) for o in released.outputs] == [id(o) for o in submitted]
    assert released.errors  # the node was told
    redis.start()  # the AOF (fsync always) has everything Redis acknowledged
    stored = set(_stored(redis, "k"))
    acknowledged = refused = 0
    for i, output in enumerate(released.outputs):
        replies = _replies([output])
        # A script does its batch whole or not at all: one reply for all 20 sends.
        assert replies in ([OK_BYTES] * 20, [UNAVAILABLE_BYTES] * 20)
        if replies[0] == OK_BYTES:
            acknowledged += 1
            assert {f"m{i}.{j}".encode() for j in range(20)} <= stored  # never a success unstored
        else:
            refused += 1
    assert acknowledged
    assert refused


@pytest.mark.anyio
async def test_noscript_is_refused_then_the_script_is_loaded_again(
    redis_server: RedisServer, released: Released
) -> None:
    async with running(redis_server, released) as pipeline:
        await publish(pipeline, released, _output(1, "s", ["before"]))
        redis_command(redis_server.port, "SCRIPT", "FLUSH")  # as if Redis lost its scripts
        await publish(pipeline, released, _output(1, "s", ["lost"]))
        await publish(pipeline, released, _output(1, "s", ["after"]))
    assert [_replies([o]) for o in released.outputs] == [
        [OK_BYTES],
        [UNAVAILABLE_BYTES],  # did not run: refused, not retried (see the module's docstring)
        [OK_BYTES],
    ]
    assert released.errors == []  # NOSCRIPT does not make the backend unavailable
    assert _stored(redis_server, "s") == [b"before", b"after"]


@pytest.mark.anyio
async def test_no_reply_in_time_refuses_every_flight(
    redis_server: RedisServer, released: Released
) -> None:
    async with running(redis_server, released) as pipeline:
        await publish(pipeline, released, _output(1, "p", ["first"]))
        redis_server.send_signal(signal.SIGSTOP)  # Redis hangs: no reply, no error
        try:
            with anyio.fail_after(4 * CALL_TIMEOUT):
                for i in range(5):
                    await pipeline.send([_output(1, "p", [f"hung{i}"])])
                # More than the sockets' buffers hold: the writer must not wait for ever.
                await pipeline.send(
                    [_output(1, "p", [f"big{i}{'x' * 1_000_000}" for i in range(20)])]
                )
                await released.until(7)
        finally:
            redis_server.send_signal(signal.SIGCONT)
        await publish(pipeline, released, _output(1, "p", ["again"]))  # a new connection
    replies = [_replies([o])[0] for o in released.outputs]
    assert replies == [OK_BYTES] + [UNAVAILABLE_BYTES] * 6 + [OK_BYTES]
    assert len(released.errors) == 1
    assert "no reply" in str(released.errors[0])


def test_senders_on_one_node_get_their_replies_in_order(redis_server: RedisServer) -> None:
    """Many senders' outputs in flight at once: each connection's replies and messages in order."""
    with nodes(redis_server.url, 2) as (a, b):
        listener = Peer(b.port)
        listener.send(line(sub("x", cache=False)) + line(sub("y", cache=False)))
        assert listener.lines(2) == [OK, OK]
        senders = [Peer(a.port) for _ in range(4)]
        errors: list[BaseException] = []

        def stream(n: int, peer: Peer) -> None:
            try:
                for chunk in range(20):
                    peer.send(
                        b"".join(
                            line(send("xy"[i % 2], f"s{n}.{chunk * 50 + i}")) for i in range(50)
                        )
                    )
                assert peer.lines(1000) == [OK] * 1000
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(n, p)) for n, p in enumerate(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        got = listener.lines(4000)
        for k, topic in enumerate("xy"):
            mine = [m for m in got if m["topic"] == topic]
            assert [m["index"] for m in mine] == list(range(2000))
            for n in range(4):
                order = [int(m["msg"].split(".")[1]) for m in mine if m["msg"].startswith(f"s{n}.")]
                assert order == list(range(k, 1000, 2))


def _client_ids(redis: RedisServer, name: str) -> list[str]:
    """The ids of Redis's clients named ``name``."""
    listing = redis.command("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    rows = [dict(f.split("=", 1) for f in row.split(" ")) for row in listing.decode().splitlines()]
    return [row["id"] for row in rows if row["name"] == name]


def test_an_idle_pipeline_connection_closed_by_redis_is_replaced(
    redis_server: RedisServer,
) -> None:
    """Redis drops the idle publishing connection (a client timeout, say): the next send
    opens a new one and succeeds; nothing is refused and the node stays available."""
    with nodes(redis_server.url, 1) as (a,):
        sender = Peer(a.port)
        sender.send(line(send("idle", "before")))
        assert sender.lines(1) == [OK]
        (pipeline,) = _client_ids(redis_server, PIPELINE_NAME)
        assert redis_server.command("CLIENT", "KILL", "ID", pipeline) == 1
        for i in range(3):
            sender.send(line(send("idle", f"after{i}")))
            assert sender.lines(1) == [OK]
        (replaced,) = _client_ids(redis_server, PIPELINE_NAME)
        assert replaced != pipeline

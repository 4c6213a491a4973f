"""Acknowledge after durable: the commit pipeline in-process, and SIGKILL crash tests.

The crash tests run the real server (``python -m mqcore_tcp``) as a subprocess,
kill it with SIGKILL while producers pipeline sends and consumers read, and
restart it on the same data directory. What they check:

* every message whose success reply a producer read is replayed after the
  restart with its original index (within the cache bound), and everything
  replayed is exactly what was sent with that index;
* no index is ever handed out twice;
* a ``delivery: "one"`` message is delivered at least once: it was either
  received before the crash or is replayed after it. It is received twice
  only if its consumption (stored once its bytes were handed to the
  consumer's socket) was not yet stored when the server died.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mqcore import MemoryStore, NextIndex, Record, Snapshot, StoreError
from mqcore_tcp import TCPServer

from ..conftest import BOTH_BACKENDS
from ..helpers import TIMEOUT, LineClient, in_process, server_command, server_process
from ..wire import OK, send, sub

pytestmark = pytest.mark.anyio


#: How a connection to a killed server ends.
DEAD = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead)


async def hello_epoch(port: int) -> str:
    conn = await LineClient.open(port)
    try:
        reply = await conn.request({"command": "hello"})
    finally:
        await conn.aclose()
    assert reply["success"] is True
    epoch = reply["epoch"]
    assert isinstance(epoch, str)
    return epoch


# -- crash test -------------------------------------------------------------------------

CACHE_SIZE = 300
WINDOW = 100


class Producer:
    """Pipelines sends to its own topics (so it knows every index) until the server dies."""

    #: Sends in flight at most.
    window = WINDOW

    def __init__(self, name: str, topics: Sequence[str], delivery: str) -> None:
        self.name = name
        self.topics = topics
        self.delivery = delivery
        self.sent: list[tuple[str, str]] = []  # (topic, msg), in the order sent
        self.acked = 0  # replies read: the first `acked` sends are acknowledged

    def message(self, topic: str, index: int) -> str:
        return f"{self.name}:{topic}:{index}"

    def acked_by_topic(self) -> dict[str, int]:
        counts = dict.fromkeys(self.topics, 0)
        for topic, _ in self.sent[: self.acked]:
            counts[topic] += 1
        return counts

    async def run(self, port: int, enough: anyio.Event, acks: list[int]) -> None:
        conn = await LineClient.open(port)
        room = anyio.Semaphore(self.window)
        counts = dict.fromkeys(self.topics, 0)
        try:
            await self._pipeline(conn, room, counts, enough, acks)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    async def _pipeline(
        self,
        conn: LineClient,
        room: anyio.Semaphore,
        counts: dict[str, int],
        enough: anyio.Event,
        acks: list[int],
    ) -> None:
        async with anyio.create_task_group() as tg:

            async def read_replies() -> None:
                try:
                    while True:
                        reply = await conn.read()
                        assert reply == OK
                        self.acked += 1
                        acks[0] += 1
                        if acks[0] >= 3000:
                            enough.set()
                        room.release()
                except DEAD:
                    pass  # the server was killed
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(read_replies)
            try:
                while True:
                    lines = []
                    for _ in range(20):
                        await room.acquire()
                        topic = self.topics[len(self.sent) % len(self.topics)]
                        msg = self.message(topic, counts[topic])
                        counts[topic] += 1
                        self.sent.append((topic, msg))
                        lines.append(send(topic, msg, self.delivery))
                    await conn.write(*lines)
            except DEAD:
                # Replies may still be waiting to be read: the reader ends this.
                await anyio.sleep_forever()


class Consumer:
    """Subscribes, then records every delivery until the server dies."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = topics
        self.seen: list[tuple[str, int, str]] = []

    async def subscribe(self, port: int) -> LineClient:
        conn = await LineClient.open(port)
        for topic in self.topics:
            assert await conn.request({"command": "subscribe", "topic": topic}) == OK
        return conn

    async def run(self, conn: LineClient) -> None:
        try:
            while True:
                m = await conn.read()
                self.seen.append((m["topic"], m["index"], m["msg"]))
        except DEAD:
            pass


async def replay_and_next(port: int, topic: str) -> tuple[list[tuple[int, str]], int]:
    """Subscribe to ``topic`` after the restart: its replay, and the index a new send gets."""
    conn = await LineClient.open(port)
    try:
        await conn.write({"command": "subscribe", "topic": topic})
        assert await conn.read() == OK
        marker = f"after the restart {os.urandom(8).hex()}"
        await conn.write(send(topic, marker, "all"))
        replay: list[tuple[int, str]] = []
        while True:
            m = await conn.read()
            if m.get("msg") == marker:
                # Our own copy arrives before our reply, as in the reference.
                assert await conn.read() == OK
                return replay, m["index"]
            replay.append((m["index"], m["msg"]))
    finally:
        await conn.aclose()


async def check_replays(
    port: int, producers: Sequence[Producer], cache_size: int
) -> dict[str, int]:
    """After a restart, each of the producers' `all` topics replays exactly the newest
    ``cache_size`` messages stored, every acknowledged one among them, each at its
    index, and no index is reused; return each topic's next index."""
    next_indices: dict[str, int] = {}
    for producer in producers:
        acked = producer.acked_by_topic()
        for topic in producer.topics:
            replay, next_index = await replay_and_next(port, topic)
            sent = sum(1 for t, _ in producer.sent if t == topic)
            assert acked[topic] <= next_index <= sent + 1  # no index reused
            start = max(0, next_index - cache_size)
            assert replay == [(i, producer.message(topic, i)) for i in range(start, next_index)]
            next_indices[topic] = next_index
    return next_indices


@pytest.mark.parametrize("fsync", ["batch", "always"])
async def test_sigkill_mid_stream_loses_nothing_acknowledged(data_dir: Path, fsync: str) -> None:
    producers = [Producer(f"p{i}", [f"all{i}a", f"all{i}b"], "all") for i in range(3)]
    one_producer = Producer("q", ["jobs"], "one")
    everything = [*producers, one_producer]
    all_topics = [t for p in producers for t in p.topics]
    consumers = [Consumer(all_topics), Consumer(["jobs"]), Consumer(["jobs"])]
    args = ("--data-dir", str(data_dir), "--cache-size", str(CACHE_SIZE), "--fsync", fsync)

    with anyio.fail_after(TIMEOUT):
        async with server_process(*args) as server:
            epoch = await hello_epoch(server.port)
            conns = [await c.subscribe(server.port) for c in consumers]
            enough = anyio.Event()
            acks = [0]
            async with anyio.create_task_group() as tg:
                for consumer, conn in zip(consumers, conns, strict=True):
                    tg.start_soon(consumer.run, conn)
                for producer in everything:
                    tg.start_soon(producer.run, server.port, enough, acks)
                await enough.wait()
                server.kill()  # mid-stream: producers are still sending
            for conn in conns:
                await conn.aclose()
            assert await server.process.wait() == -signal.SIGKILL

        async with server_process(*args) as server:
            assert await hello_epoch(server.port) == epoch

            next_indices = await check_replays(server.port, producers, CACHE_SIZE)
            for t, index, msg in consumers[0].seen:
                producer = next(p for p in producers if t in p.topics)
                assert index < next_indices[t]
                assert msg == producer.message(t, index)

            # `one` messages: each acknowledged one was received before the
            # crash or is replayed now (at least once, never lost).
            replay, next_index = await replay_and_next(server.port, "jobs")
            received = {i for c in consumers[1:] for t, i, _ in c.seen if t == "jobs"}
            replayed = {i for i, _ in replay}
            for index, msg in replay:
                assert msg == one_producer.message("jobs", index)
            acked_jobs = one_producer.acked
            assert acked_jobs <= next_index
            missing = set(range(acked_jobs)) - received - replayed
            assert not missing, f"`one` messages lost: {sorted(missing)[:10]}"
            assert max(received | replayed | {-1}) < next_index

    assert sum(p.acked for p in everything) >= 3000


async def test_the_epoch_survives_a_restart_with_a_data_dir_and_not_without(
    data_dir: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with server_process("--data-dir", str(data_dir)) as server:
            durable = await hello_epoch(server.port)
            conn = await LineClient.open(server.port)
            assert await conn.request(send("t", "kept")) == OK
            await conn.aclose()
            server.kill()
        async with server_process("--data-dir", str(data_dir)) as server:
            assert await hello_epoch(server.port) == durable
            replay, next_index = await replay_and_next(server.port, "t")
            assert replay == [(0, "kept")]
            assert next_index == 1
        # A graceful stop (SIGTERM) keeps it all too.
        async with server_process("--data-dir", str(data_dir)) as server:
            assert await hello_epoch(server.port) == durable
            replay, next_index = await replay_and_next(server.port, "t")
            assert [i for i, _ in replay] == [0, 1]
            assert next_index == 2

        async with server_process("--in-memory") as server:
            first = await hello_epoch(server.port)
            server.kill()
        async with server_process() as server:
            second = await hello_epoch(server.port)
            replay, next_index = await replay_and_next(server.port, "t")
            assert (replay, next_index) == ([], 0)  # numbering started over...
        assert len({first, second, durable}) == 3  # ...and the epoch says so


def damaged_data_dir(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    store = data_dir / "mqcore.db"
    store.write_bytes(b"definitely not a database\n" * 1000)
    return store


async def test_a_damaged_store_stops_the_server_with_one_line(data_dir: Path) -> None:
    store = damaged_data_dir(data_dir)
    command = server_command("--port", "0", "--data-dir", str(data_dir))
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process(command, check=False)
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "ERROR" in lines[0]
    assert str(store) in lines[0]
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [["--fsync", "always"], ["--in-memory", "--data-dir", "x"], ["--fsync", "sometimes"]],
)
async def test_durability_options_are_checked(args: list[str]) -> None:
    command = server_command("--port", "0", *args)
    with anyio.fail_after(TIMEOUT):
        done = await anyio.run_process(command, check=False)
    assert done.returncode == 2
    assert b"usage:" in done.stderr


# -- the commit pipeline, in-process ----------------------------------------------------


class WatchedStore(MemoryStore):
    """A memory store that remembers its commits, optionally slow, gated or failing."""

    def __init__(
        self, *, delay: float = 0.0, fail_at: int | None = None, in_thread: bool = True
    ) -> None:
        super().__init__("watched")
        self.commit_in_thread = in_thread
        self.commits = 0
        self.delay = delay
        self.fail_at = fail_at
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.next: dict[str, int] = {}

    def apply(self, records: Sequence[Record]) -> None:
        self.entered.set()
        self.gate.wait(TIMEOUT)
        if self.delay:
            # Stands for a disk sync, in the committer's worker thread.
            threading.Event().wait(self.delay)
        if self.fail_at is not None and self.commits + 1 >= self.fail_at:
            raise StoreError("watched store: disk on fire")
        super().apply(records)
        for r in records:
            if isinstance(r, NextIndex):
                self.next[r.topic] = max(self.next.get(r.topic, 0), r.next_index)
        self.commits += 1

    def load(self) -> Snapshot:
        return super().load()


@asynccontextmanager
async def watched_server(**store_options: Any) -> AsyncIterator[tuple[WatchedStore, int]]:
    """Run a server in this event loop committing to a new :class:`WatchedStore`
    (``store_options`` its options); yield the store and the server's port."""
    store = WatchedStore(**store_options)
    with anyio.fail_after(TIMEOUT):
        async with in_process(store=store) as server:
            yield store, server.port


async def subscriber(port: int, topic: str) -> LineClient:
    """A connection subscribed to ``topic`` (its reply read)."""
    consumer = await LineClient.open(port)
    assert await consumer.request(sub(topic)) == OK
    return consumer


# The in-process tests run on both backends (BOTH_BACKENDS): under asyncio the
# server uses asyncio Protocols, under trio anyio streams, and both must hold the order.


@BOTH_BACKENDS
@pytest.mark.parametrize("in_thread", [True, False], ids=["thread", "inline"])
async def test_replies_and_deliveries_wait_for_their_commit_and_commits_are_grouped(
    in_thread: bool,
) -> None:
    n = 3000
    async with (
        watched_server(delay=0.002, in_thread=in_thread) as (store, port),
        await subscriber(port, "t") as consumer,
        await LineClient.open(port) as producer,
    ):

        async def produce() -> None:
            for start in range(0, n, 500):
                await producer.write(*(send("t", f"m{i}") for i in range(start, start + 500)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            for k in range(1, n + 1):
                assert await producer.read() == OK
                # The k-th reply is written only once the k-th send is stored.
                assert store.next["t"] >= k
            for i in range(n):
                m = await consumer.read()
                assert m["index"] == i
                assert store.next["t"] > i
    # Group commit: far fewer commits (each a simulated 2 ms sync) than messages.
    assert store.commits < n / 10


@BOTH_BACKENDS
async def test_a_replay_of_a_message_not_yet_stored_waits_for_the_commit() -> None:
    async with watched_server() as (store, port), await LineClient.open(port) as producer:
        store.gate.clear()
        store.entered.clear()
        await producer.write(send("t", "early"))
        # The commit of "early" is under way (and held): the broker has cached it.
        await anyio.to_thread.run_sync(store.entered.wait, TIMEOUT)
        async with await LineClient.open(port) as consumer:
            await consumer.write(sub("t"))
            store.gate.set()
            assert await consumer.read() == OK
            replayed = await consumer.read()
            assert (replayed["msg"], replayed["index"]) == ("early", 0)
            assert store.next["t"] == 1  # stored before it was replayed
            assert await producer.read() == OK


@BOTH_BACKENDS
@pytest.mark.parametrize("in_thread", [True, False], ids=["thread", "inline"])
async def test_a_failing_store_stops_the_server_and_acknowledges_nothing_more(
    in_thread: bool,
) -> None:
    store = WatchedStore(fail_at=2, in_thread=in_thread)
    server = TCPServer(port=0, store=store)
    await server.bind()
    errors: list[StoreError] = []
    replies: list[Any] = []

    async def serve() -> None:
        try:
            await server.serve()
        except StoreError as exc:
            errors.append(exc)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            producer = await LineClient.open(server.port)
            assert await producer.request(send("t", "stored")) == OK
            await producer.write(send("t", "not stored"))
            try:
                while True:
                    replies.append(await producer.read())
            except DEAD:
                pass
            await producer.aclose()
    assert [str(e) for e in errors] == ["watched store: disk on fire"]
    assert replies == []  # the server closed the connection without acknowledging
    assert store.next == {"t": 1}


@BOTH_BACKENDS
async def test_a_one_message_is_consumed_in_the_store_only_once_its_bytes_left_the_server() -> None:
    n = 40  # 36 MB of `one` messages: more than the socket buffers hold
    payload = "x" * 900_000
    async with (
        watched_server(in_thread=False) as (store, port),
        await subscriber(port, "jobs") as consumer,
        await LineClient.open(port) as producer,
    ):
        for _ in range(n):
            assert await producer.request(send("jobs", payload, "one")) == OK
        # The consumer has read nothing: the newest job is still in the
        # server's buffers, so the store still holds it for a redelivery.
        stored = {i for state in store.load().topics for i, _, _ in state.cache}
        assert n - 1 in stored
        for i in range(n):
            assert (await consumer.read())["index"] == i
        # Everything has left; the next commit takes the consumptions along.
        assert await producer.request(send("other", "m")) == OK
        assert store.cached_count() == 1  # only "other"'s message


@BOTH_BACKENDS
async def test_a_half_closed_client_gets_every_reply_held_for_a_commit() -> None:
    n = 500
    async with (
        watched_server(delay=0.002, in_thread=True) as (store, port),
        await LineClient.open(port) as producer,
    ):
        await producer.write(*(send("h", f"m{i}") for i in range(n)))
        await producer.stream.send_eof()
        replies = [await producer.read() for _ in range(n)]
        with pytest.raises(anyio.EndOfStream):  # then the server closes
            await producer.read()
        assert replies == [OK] * n
        assert store.next["h"] == n


@BOTH_BACKENDS
async def test_a_quit_while_a_commit_is_released_does_not_release_later_outputs_early() -> None:
    n = 3000
    async with watched_server(delay=0.001, in_thread=True) as (store, port):
        done = anyio.Event()

        async def quitter() -> None:
            # Connections closing (a `quit`) while outputs are being released.
            while not done.is_set():
                async with await LineClient.open(port) as conn:
                    await conn.stream.send(b"quit\n")
                    with pytest.raises(anyio.EndOfStream):
                        await conn.read()

        async def produce(topic: str) -> None:
            async with await LineClient.open(port) as producer:
                for start in range(0, n, 250):
                    await producer.write(*(send(topic, "m") for _ in range(250)))
                    for k in range(start + 1, start + 251):
                        assert await producer.read() == OK
                        # The k-th reply is written only once the k-th send is stored.
                        assert store.next[topic] >= k

        async with anyio.create_task_group() as tg:
            tg.start_soon(quitter)
            async with anyio.create_task_group() as producers:
                producers.start_soon(produce, "q1")
                producers.start_soon(produce, "q2")
            done.set()

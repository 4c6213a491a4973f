"""Commits that span loop turns (``mqcore_tcp._commit_span``): prompt for a lone sender, bounded,
and nothing acknowledged is lost when the server is killed in the middle of a burst."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from mqcore import CacheAdd, ConnectionId, NextIndex, Output, Record
from mqcore_tcp._commit_span import (
    MAX_SPAN_BYTES,
    MAX_SPAN_OUTPUTS,
    MAX_SPAN_RECORDS,
    MAX_SPAN_SECONDS,
    SPAN_FACTOR,
    Span,
)

from ..conftest import BOTH_BACKENDS
from ..helpers import TIMEOUT, LineClient, server_process
from ..wire import OK, send
from .test_durability import (
    Consumer,
    Producer,
    check_replays,
    hello_epoch,
    watched_server,
)

pytestmark = pytest.mark.anyio

# -- the span's bounds, on the class itself ---------------------------------------------


def output_of(records: Sequence[Record], reply: bytes = b"") -> Output:
    output = Output(records=list(records))
    if reply:
        output.writes[ConnectionId(1)] = [reply]
    return output


def test_a_span_is_full_at_its_output_bound() -> None:
    span = Span()
    full = [span.add(output_of([NextIndex("t", 1)]), 0.0) for _ in range(MAX_SPAN_OUTPUTS)]
    assert full == [False] * (MAX_SPAN_OUTPUTS - 1) + [True]
    assert len(span.take()) == MAX_SPAN_OUTPUTS
    assert (span.outputs, span.records, span.bytes) == ([], 0, 0)


def test_a_span_is_full_at_its_record_bound() -> None:
    span = Span()
    assert not span.add(output_of([NextIndex("t", i) for i in range(MAX_SPAN_RECORDS - 1)]), 0.0)
    assert span.add(output_of([NextIndex("t", 0)]), 0.0)


def test_a_span_counts_message_bytes_and_written_bytes() -> None:
    span = Span()
    big = b"x" * (MAX_SPAN_BYTES // 4)
    assert not span.add(output_of([CacheAdd("t", 0, "all", big)]), 0.0)
    assert not span.add(output_of([], reply=big), 0.0)  # one message, one write: half
    assert not span.add(output_of([CacheAdd("t", 1, "all", big)]), 0.0)
    assert span.bytes == 3 * len(big)
    assert span.add(output_of([], reply=big), 0.0)


def test_a_span_is_due_after_a_multiple_of_the_last_commit_and_at_most_its_cap() -> None:
    span = Span()
    span.add(output_of([NextIndex("t", 1)]), 100.0)
    assert not span.due(100.0 + SPAN_FACTOR * 0.01 - 1e-6, 0.01)
    assert span.due(100.0 + SPAN_FACTOR * 0.01, 0.01)
    assert span.due(100.0 + MAX_SPAN_SECONDS, 3600.0)  # a slow commit never holds longer
    assert span.due(100.0, 0.0)  # no commit measured yet: no wait beyond "no read followed"


# -- in-process: prompt acknowledgements -------------------------------------------------


@BOTH_BACKENDS
async def test_a_lone_request_reply_sender_is_answered_without_a_following_read() -> None:
    # Each send is the last input for a while: the span must end by itself.
    async with (
        watched_server(in_thread=False) as (store, port),
        await LineClient.open(port) as client,
    ):
        for k in range(1, 201):
            assert await client.request(send("lone", f"m{k}")) == OK
            assert store.next["lone"] == k  # stored before acknowledged


@BOTH_BACKENDS
async def test_a_lone_sender_is_answered_while_a_burst_to_many_topics_keeps_commits_spanning() -> (
    None
):
    topics = [f"burst{i}" for i in range(200)]
    writes, per_write = 20, 400
    async with (
        watched_server(in_thread=False) as (store, port),
        await LineClient.open(port) as bulk,
        await LineClient.open(port) as lone,
    ):

        async def burst() -> None:
            # Pipelined: every write before any reply is read.
            for w in range(writes):
                first = w * per_write
                await bulk.write(
                    *(send(topics[(first + i) % len(topics)], "b") for i in range(per_write))
                )

        async def read_burst_replies() -> None:
            for k in range(1, writes * per_write + 1):
                assert await bulk.read() == OK
                stored = sum(store.next.get(t, 0) for t in topics)
                assert stored >= k  # the k-th reply only once the k-th send is stored

        async with anyio.create_task_group() as tg:
            tg.start_soon(burst)
            tg.start_soon(read_burst_replies)
            for k in range(1, 51):
                assert await lone.request(send("lone", f"m{k}")) == OK
                assert store.next["lone"] >= k


# -- a real server killed mid-burst -------------------------------------------------------


class BurstProducer(Producer):
    """A :class:`Producer` with a wide window: its sends keep every loop turn reading."""

    window = 1000


async def test_sigkill_mid_burst_to_many_topics_loses_nothing_acknowledged(
    data_dir: Path,
) -> None:
    producers = [BurstProducer(f"p{i}", [f"t{i}.{j}" for j in range(100)], "all") for i in range(3)]
    watcher = Consumer([producers[0].topics[0]])
    args = ("--data-dir", str(data_dir), "--cache-size", "50", "--fsync", "batch")
    with anyio.fail_after(TIMEOUT * 2):
        async with server_process(*args) as server:
            epoch = await hello_epoch(server.port)
            conn = await watcher.subscribe(server.port)
            enough = anyio.Event()
            acks = [0]
            async with anyio.create_task_group() as tg:
                tg.start_soon(watcher.run, conn)
                for producer in producers:
                    tg.start_soon(producer.run, server.port, enough, acks)
                await enough.wait()
                server.kill()  # mid-burst: every producer has a window of sends in flight
            await conn.aclose()
            assert await server.process.wait() == -signal.SIGKILL

        async with server_process(*args) as server:
            assert await hello_epoch(server.port) == epoch
            await check_replays(server.port, producers, 50)
    assert sum(p.acked for p in producers) >= 3000

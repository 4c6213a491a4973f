"""Wildcard subscriptions end to end: real sockets, the server in process and as a process."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mqcore import Reason

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient, in_process, server_process
from ..wire import OK, delivered, fail, send, sub, unsub

pytestmark = pytest.mark.anyio


@BOTH_BACKENDS
async def test_patterns_route_over_tcp_once_per_connection() -> None:
    async with (
        in_process() as server,
        await LineClient.open(server.port) as star,
        await LineClient.open(server.port) as rest,
        await LineClient.open(server.port) as both,
        await LineClient.open(server.port) as pub,
    ):
        assert await star.request(sub("orders.*")) == OK
        assert await rest.request(sub("orders.>")) == OK
        await both.write(sub("orders.eu"), sub("orders.*"), sub(">"))
        assert await both.read_n(3) == [OK] * 3
        await pub.write(
            send("orders.eu", "a"),
            send("orders.*", "refused"),
            send("orders.eu.1", "b"),
            send("orders", "c"),
        )
        assert await pub.read_n(4) == [OK, fail(Reason.SEND_TO_PATTERN), OK, OK]
        assert await star.read() == delivered("orders.eu", "a", 0)
        assert await rest.read_n(2) == [
            delivered("orders.eu", "a", 0),
            delivered("orders.eu.1", "b", 0),
        ]
        assert await both.read_n(3) == [
            delivered("orders.eu", "a", 0),
            delivered("orders.eu.1", "b", 0),
            delivered("orders", "c", 0),
        ]
        # Nothing more is owed to any of them: a marker arrives next.
        await pub.write(send("marker", "end"))
        assert await pub.read() == OK
        assert await both.read() == delivered("marker", "end", 0)
        assert await star.request(unsub("orders.*")) == OK
        assert await star.request(sub("orders.>.x")) == fail(Reason.PATTERN_MULTI_NOT_LAST)


async def test_garbage_many_patterns_and_disconnects_leave_the_server_serving() -> None:
    async with in_process() as server, await LineClient.open(server.port) as pub:
        for n in range(5):
            async with await LineClient.open(server.port) as churn:
                await churn.write(
                    *[sub(f"c.{k}.*", cache=False) for k in range(300)], sub(">", cache=False)
                )
                await churn.stream.send(b'{"command":"subscribe","topic":"a..*"}\nnope\n')
                replies = await churn.read_n(303)
                assert replies[:301] == [OK] * 301
                assert replies[301:] == [
                    fail(Reason.PATTERN_EMPTY_TOKEN),
                    fail("Could not parse json"),
                ]
                await pub.write(send("c.7.x", "seen"))
                assert await pub.read() == OK
                assert await churn.read() == delivered("c.7.x", "seen", n)
                await churn.stream.send(b"quit\n")
                with pytest.raises(anyio.EndOfStream):
                    await churn.read_line()
        # Every churned connection quit (its 301 patterns with it) before its end of stream.
        assert server.broker._table.patterns.count == 0
        async with await LineClient.open(server.port) as late:
            assert await late.request(sub("c.*.x")) == OK
            # The cached messages of c.7.x replay, by index.
            assert [m["index"] for m in await late.read_n(5)] == [0, 1, 2, 3, 4]


async def test_a_durable_restart_replays_every_matching_topic(data_dir: Path) -> None:
    args = ("--data-dir", str(data_dir))
    async with server_process(*args) as server, await LineClient.open(server.port) as pub:
        await pub.write(send("s.b", "b0"), send("s.a", "a0"), send("s.a", "a1"), send("t.a", "no"))
        assert await pub.read_n(4) == [OK] * 4
    async with server_process(*args) as server, await LineClient.open(server.port) as c:
        await c.write(sub("s.*"))
        assert await c.read_n(4) == [
            OK,
            delivered("s.a", "a0", 0),
            delivered("s.a", "a1", 1),
            delivered("s.b", "b0", 0),
        ]
        async with await LineClient.open(server.port) as pub:
            await pub.write(send("s.c", "live"))
            assert await pub.read() == OK
        assert await c.read() == delivered("s.c", "live", 0)

"""End-to-end tests of the TCP server over real loopback sockets."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketAttribute

from mqcore_tcp import TCPServer
from mqcore_tcp._aio import AioConnection
from mqcore_tcp._streams import StreamConnection

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient, in_process
from ..wire import OK, send, sub

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def client(server: TCPServer) -> AsyncIterator[LineClient]:
    """A raw protocol client of ``server``, closed on leaving."""
    async with await LineClient.open(server.port) as c:
        yield c


@BOTH_BACKENDS
async def test_accepted_sockets_send_small_writes_at_once() -> None:
    # TCP_NODELAY on the server's side: without it a reply or a delivery
    # waits for the client's delayed ACK (up to 40 ms at low rates).
    async with in_process() as server, client(server) as c:
        assert await c.request(sub("t")) == OK  # the connection is the hub's now
        (link,) = server.hub.links.values()
        conn = link.conn
        if isinstance(conn, AioConnection):
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
        else:
            assert isinstance(conn, StreamConnection)
            sock = conn.stream.extra(SocketAttribute.raw_socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


async def test_fan_out_to_several_subscribers() -> None:
    async with in_process() as server, client(server) as pub:
        subs = []
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                c = await LineClient.open(server.port)
                assert await c.request(sub("news")) == OK
                subs.append(c)
            tg.cancel_scope.cancel()
        assert await pub.request(send("news", "hello")) == OK
        for c in subs:
            assert await c.read() == {**send("news", "hello"), "index": 0}
            await c.aclose()


async def test_one_reaches_exactly_one_of_several() -> None:
    async with in_process() as server, client(server) as pub:
        subs = []
        for _ in range(4):
            c = await LineClient.open(server.port)
            assert await c.request(sub("jobs")) == OK
            subs.append(c)
        n = 40
        for i in range(n):
            assert await pub.request(send("jobs", f"j{i}", "one")) == OK
        # Every subscriber ends its stream with a marker, so reading to it is exact.
        assert await pub.request(send("jobs", "end")) == OK
        seen: list[int] = []
        for c in subs:
            while (msg := await c.read())["msg"] != "end":
                assert msg["delivery"] == "one"
                seen.append(msg["index"])
            await c.aclose()
        assert sorted(seen) == list(range(n))


async def test_cache_replay_with_last_seen() -> None:
    async with in_process(cache_size=5) as server, client(server) as pub, client(server) as late:
        for i in range(8):
            assert await pub.request(send("t", f"m{i}")) == OK
        await late.write(sub("t", last_seen=4))
        replies = await late.read_n(4)
        assert replies[0] == OK
        assert [m["index"] for m in replies[1:]] == [5, 6, 7]
        assert await pub.request(send("t", "m8")) == OK
        assert (await late.read())["index"] == 8


async def test_pipelined_sends_are_acknowledged_and_delivered_in_order() -> None:
    n = 10_000
    async with in_process() as server, client(server) as pub, client(server) as subscriber:
        assert await subscriber.request(sub("p")) == OK
        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                await pub.stream.send(
                    b"".join(
                        b'{"command":"send","topic":"p","msg":"%d","delivery":"all"}\n' % i
                        for i in range(n)
                    )
                )

            tg.start_soon(produce)
            assert await pub.read_n(n) == [OK] * n
        received = await subscriber.read_n(n)
        assert [m["index"] for m in received] == list(range(n))
        assert [m["msg"] for m in received] == [str(i) for i in range(n)]


async def test_500_concurrent_connections() -> None:
    async with in_process() as server, client(server) as pub:
        conns: list[LineClient] = []
        try:

            async def join() -> None:
                c = await LineClient.open(server.port)
                conns.append(c)
                assert await c.request(sub("all")) == OK

            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(join)
            assert len(server.broker.subscribers("all")) == 500
            assert await pub.request(send("all", "broadcast")) == OK
            async with anyio.create_task_group() as tg:
                for c in conns:

                    async def check(c: LineClient = c) -> None:
                        assert (await c.read())["msg"] == "broadcast"

                    tg.start_soon(check)
        finally:
            for c in conns:
                await c.aclose()


async def test_slow_subscriber_is_disconnected_while_others_keep_receiving() -> None:
    cap = 2 << 20
    payload = "x" * 8000
    n = 4000  # 32 MB: far more than the socket buffers and the cap hold
    async with (
        in_process(max_queued_bytes=cap) as server,
        client(server) as pub,
        client(server) as slow,
        client(server) as fast,
    ):
        assert await slow.request(sub("s")) == OK
        assert await fast.request(sub("s")) == OK
        got: list[int] = []
        for _ in range(0, n, 100):
            # The fast subscriber keeps up batch by batch; the slow one never reads.
            await pub.write(*[send("s", payload) for _ in range(100)])
            assert await pub.read_n(100) == [OK] * 100
            got += [m["index"] for m in await fast.read_n(100)]
        assert got == list(range(n))
        # The slow one was dropped (the broker forgot it), the others were not.
        assert len(server.broker.subscribers("s")) == 1
        # What the slow subscriber finally reads ends in EOF, far short of n messages.
        received = b""
        ended = False
        while not ended:
            try:
                received += await slow.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                ended = True
        assert received.count(b"\r\n") < n


async def test_quit_flushes_then_closes() -> None:
    async with in_process() as server, client(server) as c:
        await c.stream.send(b'{"command":"subscribe","topic":"q"}\nquit\n{"command":"x"}\n')
        assert await c.read() == OK
        with pytest.raises(anyio.EndOfStream):
            await c.read()


async def test_half_closed_client_still_gets_its_replies() -> None:
    async with in_process() as server, client(server) as c:
        await c.write(sub("h"), send("h", "m"))
        await c.stream.send_eof()
        assert await c.read_n(3) == [OK, {**send("h", "m"), "index": 0}, OK]
        with pytest.raises(anyio.EndOfStream):
            await c.read()


async def test_graceful_shutdown_flushes_and_closes_connections() -> None:
    server = TCPServer(port=0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with client(server) as c:
            assert await c.request(sub("g")) == OK
            server.shutdown()
            with anyio.fail_after(10), pytest.raises(anyio.EndOfStream):
                await c.read()
    # serve() returned by itself: the task group did not need cancelling.


async def test_bad_input_does_not_disturb_other_clients() -> None:
    async with (
        in_process(max_line_bytes=1024) as server,
        client(server) as bad,
        client(server) as good,
    ):
        assert await good.request(sub("b")) == OK
        await bad.stream.send(b"\xff\n{\n[]\n" + b"y" * 5000 + b"\n")
        assert [r["reason"] for r in await bad.read_n(4)] == [
            "Could not decode input as UTF-8",
            "Could not parse json",
            "Malformed json message",
            "Line too long",
        ]
        assert await bad.request(send("b", "still fine")) == OK
        assert (await good.read())["msg"] == "still fine"


async def test_one_never_goes_to_a_closed_connection() -> None:
    async with in_process() as server, client(server) as pub, client(server) as stay:
        gone = await LineClient.open(server.port)
        for c in (gone, stay):
            assert await c.request(sub("w")) == OK
        await gone.stream.send(b"quit\n")
        with pytest.raises(anyio.EndOfStream):
            await gone.read()
        await gone.aclose()
        for i in range(20):
            assert await pub.request(send("w", f"j{i}", "one")) == OK
        assert [m["index"] for m in await stay.read_n(20)] == list(range(20))

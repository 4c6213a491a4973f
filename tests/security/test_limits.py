"""--max-connections, --line-timeout and heartbeats, on asyncio and trio, TCP and Unix."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from wsproto.events import Message, Ping

import mqcore_client
from mqcore_client import ConnectError

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from ..web.support import WSClient
from ..wire import OK, fail, send
from .support import TRANSPORTS, RawClient, open_raw, two_clients

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_connection_past_the_limit_is_refused_and_others_are_served(
    tmp_path: Path, transport: str
) -> None:
    async with two_clients(tmp_path, transport, max_connections=2) as (server, first, second):
        assert await first.request(send("t", "1")) == OK
        async with await open_raw(server.port, tmp_path, transport) as third:
            assert await third.read() == fail("Too many connections")
            assert await third.closed()
        assert await second.request(send("t", "2")) == OK
        await first.aclose()
        await second.aclose()
        # Room again once they are gone.
        with anyio.fail_after(10):
            while True:
                async with await open_raw(server.port, tmp_path, transport) as again:
                    reply = await again.request(send("t", "3"))
                if reply == OK:
                    break
                await anyio.sleep(0.05)


async def test_the_client_reports_too_many_connections(tmp_path: Path) -> None:
    async with (
        in_process(max_connections=1) as server,
        await RawClient.tcp(server.port) as holder,
    ):
        assert await holder.request(send("t", "1")) == OK
        with pytest.raises(ConnectError, match="Too many connections"):
            async with mqcore_client.connect("127.0.0.1", server.port):
                pass


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_a_line_left_unfinished_past_the_timeout_closes_the_connection(
    tmp_path: Path, transport: str
) -> None:
    async with two_clients(tmp_path, transport, line_timeout=1.0) as (_, slow, busy):
        await slow.stream.send(b'{"command": "send", "topic"')
        started = anyio.current_time()
        # A client that keeps finishing its lines is never closed.
        for i in range(12):
            assert await busy.request(send("t", str(i))) == OK
            await busy.stream.send(b'{"command": "send", ')
            await anyio.sleep(0.2)
            await busy.stream.send(b'"topic": "t", "msg": "m", "delivery": "all"}\n')
            assert await busy.read() == OK
        with anyio.fail_after(5):
            assert await slow.closed()
        assert anyio.current_time() - started >= 1.0
        assert await busy.request(send("t", "after")) == OK


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_silent_heartbeat_client_is_dropped_and_a_plain_one_is_not(
    tmp_path: Path, transport: str
) -> None:
    async with two_clients(tmp_path, transport) as (_, beating, plain):
        reply = await beating.request({"command": "hello", "heartbeat": 1})
        assert reply["heartbeat"] == 1.0
        hello = await plain.request({"command": "hello"})
        assert "heartbeat" not in hello
        # The server beats (empty lines, skipped by read()), then drops it for silence.
        with anyio.fail_after(5):
            data = b""
            try:
                while True:
                    data += await beating.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        assert b"\r\n" in data
        assert await plain.request(send("t", "m")) == OK


async def test_the_client_keeps_a_heartbeat_connection_alive() -> None:
    async with (
        in_process() as server,
        mqcore_client.connect("127.0.0.1", server.port, heartbeat=1.0) as client,
    ):
        await anyio.sleep(2.5)  # past the interval: the client's beats keep it alive
        await client.send("t", "alive")
        assert client.server is not None
        assert client.server.heartbeat == 1.0


@pytest.mark.parametrize("after_a_ping", [False, True], ids=["split-here", "in-wsproto"])
async def test_a_websocket_frame_left_unfinished_past_the_line_timeout_closes_it(
    after_a_ping: bool,
) -> None:
    # Over /ws a line is a frame: half a frame is the WebSocket slowloris. After a
    # ping (a frame of another kind) frames are parsed by wsproto, not split here.
    async with in_process(listen=("http://127.0.0.1:0",), line_timeout=1.0) as server:
        slow = await WSClient.open(server.port)
        good = await RawClient.ws(server.port)
        async with good:
            if after_a_ping:
                await slow.stream.send(slow.ws.send(Ping(b"p")))
                assert await slow.request(send("t", "parsed by wsproto")) == OK
            frame = slow.ws.send(Message(data='{"command": "send", "topic": "t", "msg": "m"}'))
            await slow.stream.send(frame[:10])
            with anyio.fail_after(5):
                await slow.until_closed()
            assert await good.request(send("t", "after")) == OK
        await slow.aclose()

"""mqcore_client._ws: the client's byte stream over ws://, against the server's /ws."""

from __future__ import annotations

import anyio
import pytest

from mqcore_client._ws import connect_ws

from ..conftest import BOTH_BACKENDS
from ..wire import OK_BYTES, delivered, line, lines, parse, send, sub
from .support import web_server

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


async def test_lines_over_websocket_read_as_over_tcp() -> None:
    async with web_server() as web:
        stream = await connect_ws(f"ws://127.0.0.1:{web.http_port}/ws")
        await stream.send(line(sub("t")))
        assert await stream.receive() == OK_BYTES
        await stream.send(lines(send("t", "a"), send("t", "b")))
        data = b""
        while data.count(b"\r\n") < 4:
            data += await stream.receive()
        got = parse([data])
        assert [m for m in got if m != {"success": True}] == [
            delivered("t", "a", 0),
            delivered("t", "b", 1),
        ]
        await stream.send_eof()  # quit: the server closes
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        await stream.aclose()


async def test_a_refused_upgrade_is_an_os_error() -> None:
    async with web_server() as web:
        with pytest.raises(OSError, match="refused"):
            await connect_ws(f"ws://127.0.0.1:{web.http_port}/nope")


async def test_the_client_speaks_over_ws_urls() -> None:
    # connect("ws://...") is the whole client, subscriptions and replies, over /ws.
    from mqcore_client import connect

    async with web_server() as web:
        url = f"ws://127.0.0.1:{web.http_port}/ws"
        async with connect(url) as client, client.subscribe("t") as subscription:
            await client.send("t", "over the web")
            with anyio.fail_after(10):
                received = await subscription.__anext__()
            assert (received.topic, received.msg, received.index) == ("t", "over the web", 0)

"""The server's two connection paths: asyncio Protocols, and anyio streams under trio.

The end-to-end suite runs on asyncio (the Protocol path); these check that the
stream path still serves under trio, and the Protocol path's own edges.
"""

from __future__ import annotations

import anyio
import pytest

from mqcore_tcp import TCPServer

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient, in_process
from ..wire import OK, delivered, lines, send, sub


async def _read_forever(client: LineClient) -> None:
    while True:
        await client.read_line()


@BOTH_BACKENDS
@pytest.mark.anyio
async def test_both_paths_deliver_pipelined_sends_in_order(anyio_backend: str) -> None:
    n = 2000
    async with in_process() as server:
        with anyio.fail_after(20):
            async with (
                await LineClient.open(server.port) as subscriber,
                await LineClient.open(server.port) as pub,
            ):
                assert await subscriber.request(sub("t")) == OK
                await pub.stream.send(lines(*(send("t", str(i)) for i in range(n))))
                assert await pub.read_n(n) == [OK] * n
                assert await subscriber.read_n(n) == [delivered("t", str(i), i) for i in range(n)]


@pytest.mark.anyio
async def test_cancelling_serve_closes_protocol_connections() -> None:
    server = TCPServer(port=0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        client = await LineClient.open(server.port)
        assert await client.request(sub("t")) == OK
        tg.cancel_scope.cancel()  # not shutdown(): no task owns the connection
    async with client:
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await _read_forever(client)
    assert server.broker.subscribers("t") == []

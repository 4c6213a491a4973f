"""The server's two connection paths: asyncio Protocols, and anyio streams under trio.

The end-to-end suite runs on asyncio (the Protocol path); these check that the
stream path still serves under trio, and the Protocol path's own edges.
"""

from __future__ import annotations

import anyio
import pytest

from mqcore_tcp import TCPServer

from ..helpers import LineClient, in_process

SUBSCRIBE = b'{"command":"subscribe","topic":"t"}\n'
OK = b'{"success": true}\r\n'


def _send(i: int) -> bytes:
    return b'{"command":"send","topic":"t","msg":"%d","delivery":"all"}\n' % i


async def _read_lines(client: LineClient, n: int) -> list[bytes]:
    return [await client.read_line() for _ in range(n)]


async def _read_forever(client: LineClient) -> None:
    while True:
        await client.read_line()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_both_paths_deliver_pipelined_sends_in_order(anyio_backend: str) -> None:
    n = 2000
    async with in_process() as server:
        with anyio.fail_after(20):
            async with (
                await LineClient.open(server.port) as sub,
                await LineClient.open(server.port) as pub,
            ):
                await sub.stream.send(SUBSCRIBE)
                assert await _read_lines(sub, 1) == [OK[:-2]]
                await pub.stream.send(b"".join(_send(i) for i in range(n)))
                assert await _read_lines(pub, n) == [OK[:-2]] * n
                lines = await _read_lines(sub, n)
                assert lines[-1].endswith(b', "index": %d}' % (n - 1))
                assert [line.split(b'"msg":"')[1].split(b'"')[0] for line in lines] == [
                    b"%d" % i for i in range(n)
                ]


@pytest.mark.anyio
async def test_cancelling_serve_closes_protocol_connections() -> None:
    server = TCPServer(port=0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        client = await LineClient.open(server.port)
        await client.stream.send(SUBSCRIBE)
        assert await _read_lines(client, 1) == [OK[:-2]]
        tg.cancel_scope.cancel()  # not shutdown(): no task owns the connection
    async with client:
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await _read_forever(client)
    assert server.broker.subscribers("t") == []

"""The async client's bounds and addresses: timeouts, keepalive, queue bytes, URLs.

Each wait on the server is bounded (a stalling server is a few bytes of
:func:`support.scripted`), so no test here can hang the suite.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mqcore_client import (
    Address,
    Client,
    MQTimeoutError,
    ServerError,
    SubscriptionOverflowError,
    connect,
)
from mqcore_client._connection import open_stream

from ..conftest import BOTH_BACKENDS
from ..helpers import server_process
from .support import proxying, scripted, serving, unix_forwarder

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

DEADLINE = 10
#: How a plain (reference) server answers ``hello``; after it, the server stalls.
PLAIN_HELLO = b'{"success": false, "reason": "Malformed json message"}\r\n'


async def send_one(client: Client) -> None:
    await client.send("t", "x")


async def publish_then_leave(client: Client) -> None:
    await client.publish("t", "x")  # Leaving the block flushes: no reply comes.


async def enter_subscription(client: Client) -> None:
    async with client.subscribe("t"):
        pass


async def fill_the_window(client: Client) -> None:
    for _ in range(3):
        await client.publish("t", "x")  # The third waits for room: max_in_flight=2.


@pytest.mark.parametrize(
    "stalls", [send_one, publish_then_leave, enter_subscription, fill_the_window]
)
async def test_every_wait_on_a_stalling_server_times_out(stalls: object) -> None:
    with anyio.fail_after(DEADLINE):
        async with scripted([PLAIN_HELLO]) as port:
            with pytest.raises(MQTimeoutError, match=r"waited 0\.2 s|within 0\.2 s"):
                async with connect(port=port, timeout=0.2, max_in_flight=2) as client:
                    await stalls(client)  # type: ignore[operator]


async def test_after_a_timed_out_send_replies_still_match_their_commands() -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            serving() as port,
            proxying(port) as (proxy, proxy_port),
            connect(port=proxy_port, timeout=0.2) as client,
        ):
            proxy.hold()
            with pytest.raises(MQTimeoutError, match="reply to send"):
                await client.send("t", "late")
            proxy.release()
            # The late success is the timed-out send's, not this one's.
            with pytest.raises(ServerError):
                await client.send("t", "x", "bogus")  # type: ignore[arg-type]
            await client.send("t", "y")
            async with client.subscribe("t") as sub:
                assert [(await anext(sub)).msg for _ in range(2)] == ["late", "y"]


async def test_tcp_connections_have_keepalive_on() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            stream = await open_stream(Address(port=port))
            async with stream:
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


async def test_a_subscription_queue_is_bounded_in_bytes() -> None:
    big = "x" * (1 << 20)
    with anyio.fail_after(DEADLINE):
        async with (
            serving(max_line_bytes=2 << 20) as port,
            connect(port=port) as client,
            client.subscribe("t", max_queued_bytes=3 << 20) as sub,
        ):
            for _ in range(6):
                await client.send("t", big, cache=False)
            got = [await anext(sub) for _ in range(3)]
            with pytest.raises(SubscriptionOverflowError) as overflow:
                await anext(sub)
    assert [m.index for m in got] == [0, 1, 2]
    assert overflow.value.last_index == 2


@pytest.fixture
def socket_path() -> Iterator[str]:
    # Short: a Unix socket path is limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="mq") as tmp:
        yield str(Path(tmp) / "s")


async def test_connect_takes_urls(socket_path: str) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, unix_forwarder(socket_path, port):
            for where in (f"mqcore://127.0.0.1:{port}", f"unix://{socket_path}"):
                async with connect(where) as client, client.subscribe("t", cache=False) as sub:
                    await client.send("t", where)
                    assert (await anext(sub)).msg == where
                    assert client.server is not None


@pytest.mark.skipif(
    "--listen" not in subprocess.run(
        [sys.executable, "-m", "mqcore_tcp", "--help"], capture_output=True, text=True
    ).stdout,
    reason="the server's --listen (Unix listener) is another layer's; present after the merge",
)
async def test_unix_socket_against_the_server_command(socket_path: str) -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            server_process("--listen", f"unix://{socket_path}", "--in-memory"),
            connect(f"unix://{socket_path}") as client,
            client.subscribe("t") as sub,
        ):
            await client.send("t", "over a unix socket")
            assert (await anext(sub)).msg == "over a unix socket"

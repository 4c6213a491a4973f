"""The mqcore protocol over WebSocket, asyncio and trio: as over TCP; bad frames get close codes."""

from __future__ import annotations

import json

import anyio
import pytest
from wsproto.events import Message, Ping

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient
from ..wire import OK, delivered, fail, send, sub
from .support import WSClient, get, web_server

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


async def test_websocket_and_tcp_clients_talk_both_ways() -> None:
    async with web_server() as web, await LineClient.open(web.tcp_port) as tcp:
        ws = await WSClient.open(web.http_port)
        assert await ws.request(sub("news")) == OK
        assert await tcp.request(sub("news")) == OK
        await tcp.write(send("news", "from tcp"))
        first = delivered("news", "from tcp", 0)
        assert sorted(map(json.dumps, await tcp.read_n(2))) == sorted(map(json.dumps, [OK, first]))
        assert await ws.read() == first
        await ws.send_json(send("news", "from ws"))
        second = delivered("news", "from ws", 1)
        assert sorted(map(json.dumps, await ws.read_n(2))) == sorted(map(json.dumps, [OK, second]))
        assert await tcp.read() == second
        hello = await ws.request({"command": "hello"})
        assert hello["server"] == "mqcore"
        await ws.aclose()


async def test_each_reply_and_delivery_is_one_text_frame_and_lines_in_a_frame_are_commands() -> (
    None
):
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)
        lines = "\n".join(json.dumps(c) for c in (sub("t"), send("t", "a"), send("t", "b")))
        await ws.send_text(lines)
        while len(ws.messages) < 5:
            assert await ws.pump()
        assert all(not m.endswith("\r\n") for m in ws.messages)
        parsed = [json.loads(m) for m in ws.messages]
        assert parsed.count(OK) == 3
        assert [p for p in parsed if p != OK] == [delivered("t", "a", 0), delivered("t", "b", 1)]
        await ws.aclose()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "Could not parse json"),
        ('{"command": "send"}', "Malformed json message"),
        ("[1, 2]", "Malformed json message"),
    ],
)
async def test_errors_are_the_same_as_over_tcp_and_the_connection_stays(
    text: str, reason: str
) -> None:
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)
        await ws.send_text(text)
        assert await ws.read() == fail(reason)
        assert await ws.request(sub("t")) == OK
        await ws.aclose()


async def test_quit_closes_normally_after_the_replies() -> None:
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)
        await ws.send_text(json.dumps(sub("t")) + "\nquit")
        assert await ws.until_closed() == 1000
        assert [json.loads(m) for m in ws.messages] == [OK]
        await ws.aclose()


async def test_a_frame_over_the_line_limit_is_closed_1009_after_what_came_before() -> None:
    async with web_server(max_line_bytes=1000) as web:
        ws = await WSClient.open(web.http_port)
        await ws.send_json(sub("t"))
        await ws.send_text(json.dumps(send("t", "x" * 2000)))
        assert await ws.until_closed() == 1009
        assert [json.loads(m) for m in ws.messages] == [OK]
        await ws.aclose()
        # A fragmented message is counted whole: 4 fragments of 400 bytes.
        ws = await WSClient.open(web.http_port)
        for n in range(4):
            frame = ws.ws.send(Message(data="x" * 400, message_finished=n == 3))
            await ws.stream.send(frame)
        assert await ws.until_closed() == 1009
        await ws.aclose()
        assert (await get(web.http_port, "/healthz")).status == 200


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x82\x03abc", 1003),  # binary, unmasked -> protocol error first? masked below
        (b"\x82\x83\x00\x00\x00\x00abc", 1003),  # binary, masked
        (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),  # text, invalid UTF-8
        (b"\x8f\x80\x00\x00\x00\x00", 1002),  # unknown opcode
    ],
    ids=["binary-unmasked", "binary", "bad-utf8", "bad-opcode"],
)
async def test_bad_frames_get_their_close_code(frame: bytes, code: int) -> None:
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)
        await ws.stream.send(frame)
        seen = await _close_code(ws)
        await ws.aclose()
        assert seen in ((1002, 1003) if frame.startswith(b"\x82\x03") else (code,))
        assert (await get(web.http_port, "/healthz")).status == 200


async def _close_code(ws: WSClient) -> int | None:
    """The close code the server sent, read from raw frames (our wsproto may reject them)."""
    data = b""
    with anyio.fail_after(10):
        while True:
            try:
                data += await ws.stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            at = data.find(b"\x88")
            if at >= 0 and len(data) >= at + 4:
                return int.from_bytes(data[at + 2 : at + 4], "big")
    return None


async def test_a_websocket_that_does_not_read_is_dropped_and_counted() -> None:
    async with web_server(max_queued_bytes=64 << 10) as web:
        lazy = await WSClient.open(web.http_port)
        assert await lazy.request(sub("t")) == OK
        async with await LineClient.open(web.tcp_port) as tcp:
            assert await tcp.request(sub("t")) == OK
            big = "x" * 60_000
            # The lazy one never reads: once its kernel buffers fill, bytes queue in the server.
            for _ in range(200):
                await tcp.write(send("t", big))
                replies = await tcp.read_n(2)
                assert OK in replies
                metrics = (await get(web.http_port, "/metrics")).body.decode()
                if "mqcore_slow_consumer_disconnects_total 1.0" in metrics:
                    break
            else:
                pytest.fail("the lazy WebSocket was never dropped")
            await tcp.write(send("t", "still here"))
            assert OK in await tcp.read_n(2)
        await lazy.aclose()


async def test_frames_split_anywhere_and_control_frames_between_commands() -> None:
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)
        # One simple frame, byte by byte: it waits for its end, then counts once.
        frame = ws.ws.send(Message(data=json.dumps(sub("t"))))
        for n in range(len(frame)):
            await ws.stream.send(frame[n : n + 1])
        assert await ws.read() == OK
        # A ping between two commands, in one write: pong, then both replies in order.
        first = ws.ws.send(Message(data=json.dumps(send("t", "a"))))
        ping = ws.ws.send(Ping(b"are you there"))
        second = ws.ws.send(Message(data=json.dumps(send("t", "b"))))
        await ws.stream.send(first + ping + second)
        got = [m for m in await ws.read_n(4) if m != OK]
        assert got == [delivered("t", "a", 0), delivered("t", "b", 1)]
        # And still after the switch to wsproto's parsing: a message in three fragments.
        for n, part in enumerate(
            ['{"command": "send", ', '"topic": "t", "msg": "c", ', '"delivery": "all"}']
        ):
            await ws.stream.send(ws.ws.send(Message(data=part, message_finished=n == 2)))
        got = [m for m in await ws.read_n(2) if m != OK]
        assert got == [delivered("t", "c", 2)]
        await ws.aclose()

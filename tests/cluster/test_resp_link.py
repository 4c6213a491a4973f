"""A node's taken-over Redis connections against a peer that breaks the protocol.

A real ``redis-server`` never sends these, so the peer here is a small TCP
server that answers redis-py's handshake (``CLIENT SETNAME``/``SETINFO``,
``SCRIPT LOAD``) like Redis, then misbehaves: bytes that are not RESP, a reply on a
pub/sub connection that is not a message, more replies than were asked for.
Each must close the connection with the reason, never crash the node's
loop or be taken for a success.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from mqcore import ConnectionId, Output, Reason, error_reply
from mqcore._cluster import TopicBatch
from mqcore_tcp.cluster._backend import BackendError
from mqcore_tcp.cluster._pipeline import PublishPipeline
from mqcore_tcp.cluster._pubsub import RawPubSub
from mqcore_tcp.cluster._resp import MAX_REPLY_BYTES, RespLink, open_link

from ..wire import OK_BYTES

pytestmark = pytest.mark.anyio

SHA = b"0123456789012345678901234567890123456789"


async def _command(stream: SocketStream, buffer: bytearray) -> list[bytes]:
    """Read one RESP command (an array of bulk strings) from ``stream``."""

    async def line() -> bytes:
        while b"\r\n" not in buffer:
            buffer.extend(await stream.receive())
        end = buffer.index(b"\r\n")
        got = bytes(buffer[:end])
        del buffer[: end + 2]
        return got

    count = int((await line())[1:])
    args = []
    for _ in range(count):
        size = int((await line())[1:])
        while len(buffer) < size + 2:
            buffer.extend(await stream.receive())
        args.append(bytes(buffer[:size]))
        del buffer[: size + 2]
    return args


Script = Callable[[SocketStream, bytearray], Any]


@asynccontextmanager
async def broken_redis(after_handshake: Script) -> AsyncIterator[str]:
    """A peer that answers the handshake, then runs ``after_handshake``; yields its URL."""

    async def serve(stream: SocketStream) -> None:
        buffer = bytearray()
        async with stream:
            while True:
                args = await _command(stream, buffer)
                if args[0] == b"CLIENT":  # SETNAME, SETINFO: redis-py's handshake
                    await stream.send(b"+OK\r\n")
                elif args[:2] == [b"SCRIPT", b"LOAD"]:
                    await stream.send(b"$40\r\n" + SHA + b"\r\n")
                    await after_handshake(stream, buffer)
                    return
                else:
                    await after_handshake(stream, buffer)
                    return

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"redis://127.0.0.1:{port}/0"
        tg.cancel_scope.cancel()


class Lost:
    """A link's ``lost`` callback: why it closed, awaited."""

    def __init__(self) -> None:
        self.reasons: list[BaseException] = []
        self._closed = anyio.Event()

    def record(self, link: RespLink, why: BaseException) -> None:
        self.reasons.append(why)
        self._closed.set()

    async def reason(self, within: float) -> BaseException:
        """The reason the link closed (it closes once), within ``within`` seconds."""
        with anyio.fail_after(within):
            await self._closed.wait()
        assert len(self.reasons) == 1
        return self.reasons[0]


async def _send_garbage(stream: SocketStream, buffer: bytearray) -> None:
    await stream.send(b"?this is not RESP\r\n")
    await anyio.sleep_forever()


async def test_bytes_that_are_not_resp_close_the_link_with_the_reason() -> None:
    lost = Lost()
    async with broken_redis(_send_garbage) as url:
        # Answered SETNAME, then the peer waits for a command to misbehave after:
        link, _ = await open_link(url, lambda replies: None, lost.record, name="probe")
        assert link.write([b"*1\r\n$4\r\nPING\r\n"])
        why = await lost.reason(within=5)
    assert isinstance(why, BackendError)
    assert "not a Redis reply" in str(why)
    assert link.closing
    assert not link.write([b"*1\r\n$4\r\nPING\r\n"])  # nothing is sent on a closed link


async def test_a_pub_sub_reply_that_is_not_a_message_closes_the_listener() -> None:
    heard: list[Any] = []

    async def integer_reply(stream: SocketStream, buffer: bytearray) -> None:
        await stream.send(b":1\r\n")  # an SSUBSCRIBE answered as if it were a call
        await anyio.sleep_forever()

    async with broken_redis(integer_reply) as url:
        pubsub = RawPubSub(url, heard.extend)
        await pubsub.connect()
        await pubsub.ssubscribe(b"{t}:ch")
        with anyio.fail_after(5), pytest.raises(BackendError, match="unexpected pub/sub reply"):
            await pubsub.closed()
    assert heard == []


async def test_more_replies_than_calls_refuse_what_is_unanswered() -> None:
    released: list[Output] = []
    errors: list[BaseException] = []
    failed = anyio.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    async def two_replies_for_one_call(stream: SocketStream, buffer: bytearray) -> None:
        assert (await _command(stream, buffer))[0] == b"EVALSHA"
        await stream.send(b":0\r\n:7\r\n")  # the second answers nothing that was sent
        await anyio.sleep_forever()

    cid = ConnectionId(1)

    def output(msg: str) -> Output:
        head = b'{"topic": "t", "msg": "%s", "index": ' % msg.encode()
        batch = TopicBatch("t", ["c"], [head], [(cid, 0)])
        return Output(writes={cid: [OK_BYTES]}, publishes=[batch])

    async with broken_redis(two_replies_for_one_call) as url:
        pipeline = PublishPipeline(url, 100, released.extend, on_error, lambda names: None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.watch)
            first = output("first")
            await pipeline.send([first])
            with anyio.fail_after(5):
                await failed.wait()
            tg.cancel_scope.cancel()
        await pipeline.aclose()
    assert released == [first]
    assert first.writes[cid] == [OK_BYTES]  # its own reply was seen: stored
    assert "a reply nothing asked for" in str(errors[0])
    assert pipeline.in_flight == 0
    assert error_reply(Reason.BACKEND_UNAVAILABLE) not in first.writes[cid]


async def test_a_reply_past_the_bound_closes_the_link_before_it_is_whole() -> None:
    lost = Lost()
    async def endless_bulk(stream: SocketStream, buffer: bytearray) -> None:
        await stream.send(b"$%d\r\n" % (4 * MAX_REPLY_BYTES))  # announced, then sent forever
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                await stream.send(chunk)

    async with broken_redis(endless_bulk) as url:
        link, _ = await open_link(url, lambda replies: None, lost.record, name="probe")
        assert link.write([b"*1\r\n$4\r\nPING\r\n"])
        why = await lost.reason(within=30)
    assert f"over {MAX_REPLY_BYTES} bytes" in str(why)

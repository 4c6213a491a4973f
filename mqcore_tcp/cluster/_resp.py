"""A connection to a standalone Redis whose replies are handed over as they are read.

The node's two busy connections (the publishing pipeline and the pub/sub
listener) do not wait for replies in a task: each read's replies go to a
callback at once, in the event loop's read callback, so a reply costs no task
wake-up, no timeout scope and no per-reply coroutine (at 5,000 one-message
flights a second, those were most of a node's CPU and of its latency).

- **Opening.** redis-py opens the connection: its URL handling (``rediss://``,
  a password, a database number), TLS, AUTH and SELECT, each bounded by
  :data:`CALL_TIMEOUT`. The opening commands (``SCRIPT LOAD``) run through it
  too. Then its asyncio transport is taken over: redis-py forgets the socket
  (it never reads or writes it again) and :class:`RespLink` becomes the
  transport's protocol. Nothing is lost in the hand-over: a RESP2 connection
  that is not subscribed receives nothing it did not ask for, and every
  opening command was answered.
- **Reading.** Each read is fed to a hiredis parser; every complete reply of
  it goes to ``received`` in one list (an error reply is a
  ``hiredis.ReplyError`` value in that list, not raised). Bytes that are not
  RESP abort the connection, and so does a reply still incomplete past
  :data:`MAX_REPLY_BYTES` (the parser's buffer is bounded).
- **Loss.** The connection closing, for whatever reason (Redis gone, a
  protocol error, :meth:`RespLink.abort`), calls ``lost`` once with the reason.
- **Writing.** :meth:`RespLink.write` hands commands to the transport and
  returns at once; the owner bounds what it has sent and not had answered
  (the transport's buffer is part of that), and times out the replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import hiredis
from redis.asyncio.connection import ConnectionPool

from ._backend import CALL_TIMEOUT, BackendError

__all__ = ["MAX_REPLY_BYTES", "RespLink", "bulk", "command", "open_link"]

#: Bytes of one reply not yet complete: past this the connection is closed. A
#: node's own batches are far smaller (a flight is at most 8 MiB of commands).
MAX_REPLY_BYTES: Final = 64 << 20


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """A RESP command (an array of bulk strings)."""
    return b"*%d\r\n%s" % (len(args), b"".join(map(bulk, args)))


class RespLink(asyncio.Protocol):
    """One taken-over Redis connection (see the module's docstring)."""

    def __init__(
        self,
        received: Callable[[list[Any]], None],
        lost: Callable[[RespLink, BaseException], None],
    ) -> None:
        self._received = received
        self._lost = lost
        self._parser = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # redis-py's stream writer: kept so that its finaliser does not close the socket.
        self._keep: object = None

    @property
    def closing(self) -> bool:
        """Whether the connection is closed or closing (a write would not be sent)."""
        transport = self.transport
        return self.closed or transport is None or transport.is_closing()

    def write(self, chunks: Sequence[bytes]) -> bool:
        """Send ``chunks``; False (nothing sent) if the connection is closing or closed."""
        transport = self.transport
        if transport is None or self.closing:
            return False
        transport.writelines(chunks)
        return True

    def abort(self, why: BaseException | None = None) -> None:
        """Close now, dropping what is not sent; ``lost`` is called (once) if not yet."""
        self._close(why or BackendError("connection aborted"))
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio's side ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        replies: list[Any] = []
        try:
            reply = parser.gets()
            while reply is not False:  # RESP2 has no boolean: False is "more bytes needed"
                replies.append(reply)
                reply = parser.gets()
        except hiredis.ProtocolError as exc:
            if replies:
                self._received(replies)
            self.abort(BackendError(f"not a Redis reply: {exc}"))
            return
        if replies:
            self._received(replies)
        elif parser.len() > MAX_REPLY_BYTES:
            self.abort(BackendError(f"a reply of over {MAX_REPLY_BYTES} bytes"))

    def eof_received(self) -> bool:
        return False  # close: Redis ended the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(exc or BackendError("Redis closed the connection"))

    def _close(self, why: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self._lost(self, why)


async def open_link(
    url: str,
    received: Callable[[list[Any]], None],
    lost: Callable[[RespLink, BaseException], None],
    opening: Sequence[Sequence[str | bytes]] = (),
    name: str | None = None,
) -> tuple[RespLink, list[Any]]:
    """Connect to ``url`` (as client ``name``), run the ``opening`` commands, take it over.

    Returns the link and the opening commands' replies; raises (the
    connection closed) if connecting or any of them fails or takes longer
    than :data:`CALL_TIMEOUT` in all.
    """
    pool: Any = ConnectionPool.from_url(
        url,
        socket_connect_timeout=CALL_TIMEOUT,
        socket_timeout=CALL_TIMEOUT,
        health_check_interval=0,
        protocol=2,
        client_name=name,  # what CLIENT LIST shows
    )
    conn = pool.make_connection()
    answers: list[Any] = []
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            await conn.connect()
            for args in opening:
                await conn.send_command(*args, check_health=False)
                answers.append(await conn.read_response())
    except BaseException:
        with anyio.move_on_after(CALL_TIMEOUT, shield=True):
            await conn.disconnect(nowait=True)
        raise
    # Taken from redis-py, which then counts itself disconnected (and never
    # touches the socket again).
    writer: Any = conn._writer
    conn._reader = conn._writer = None
    transport: asyncio.Transport = writer.transport
    link = RespLink(received, lost)
    link.transport = transport
    link._keep = writer
    transport.set_protocol(link)
    if transport.is_closing():  # closed during the hand-over: nothing will call connection_lost
        link._close(BackendError("Redis closed the connection"))
    return link, answers

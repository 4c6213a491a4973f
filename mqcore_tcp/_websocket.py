"""The WebSocket transport: the mqcore protocol over WebSocket text frames (``GET /ws``).

Theory of operation. After the HTTP listener (``_http``) has accepted the
upgrade, :func:`serve_websocket` registers a :class:`WebSocketConnection`
with the hub, exactly as the byte-stream transport does, and runs a reader
and a writer task on the same anyio stream:

- In: each text message is one command, or several separated by newlines;
  the reader feeds the hub the message's UTF-8 bytes plus a newline, so the
  broker's framing, line limit and error replies are the same as over TCP.
  wsproto (sans-I/O) parses frames and answers pings. A message longer than
  the broker's line limit is closed with 1009 (message too big), a binary
  one with 1003 (unsupported data), a frame wsproto rejects with the code it
  gives (1002 protocol error, 1007 invalid UTF-8); what is owed to the
  connection is written before the close frame.
- Out: every chunk the hub writes is one reply or delivery ending in
  ``\\r\\n``; each becomes one text frame without the ``\\r\\n``. The frames
  are built here, not by wsproto: a server's frames are unmasked, so a frame
  is a 2 to 10 byte header before the chunk's bytes, and the writer joins a
  whole wake-up's frames into one send (wsproto would decode and re-encode
  every message as text). No extension is negotiated, so wsproto's state
  never depends on data frames.
- :attr:`WebSocketConnection.queued` counts chunk bytes (without frame
  headers), the unit the hub counts in, so the slow-consumer cap and the
  durable after-write records work as over TCP.
- Closing (``quit``, end of input, shutdown, a frame error) writes what is
  owed, sends a close frame, and waits for the peer's close frame, all within
  :data:`~mqcore_tcp._accept.CLOSE_TIMEOUT`.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from mqcore import ConnectionId

from ._hub import Hub
from ._queued_writes import QueuedWrites
from ._ws_frames import split_text_frames, text_frames

__all__ = ["WebSocketConnection", "accept_upgrade", "serve_websocket"]

log = logging.getLogger("mqcore_tcp")

#: How much one receive() may return.
READ_SIZE: Final = 256 << 10

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


def accept_upgrade(headers: list[tuple[bytes, bytes]], target: bytes) -> tuple[WSConnection, bytes]:
    """Check an upgrade request already parsed by h11; return wsproto's state and the 101 bytes.

    Raises :class:`ValueError` saying what is wrong with the handshake.
    """
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(headers, target)
        events = list(ws.events())
    except RemoteProtocolError as exc:
        raise ValueError(str(exc)) from None
    if not events or not isinstance(events[0], Request):
        reason = events[0].reason if events and isinstance(events[0], CloseConnection) else ""
        raise ValueError(f"not a WebSocket upgrade {reason}".strip())
    return ws, ws.send(AcceptConnection())


class WebSocketConnection(QueuedWrites):
    """One WebSocket connection's write side, as the hub drives it."""

    #: How /api/connections names this transport.
    transport_name = "websocket"

    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection, max_message: int) -> None:
        super().__init__()
        self.stream = stream
        self.ws = ws
        self.max_message = max_message
        self._control: list[bytes] = []  # pongs, written before data
        self._close: tuple[int, str] = (CloseReason.NORMAL_CLOSURE, "")
        self._ended = anyio.Event()  # the peer's close frame came (or its side ended)
        self._message_bytes = 0  # of the text message under way
        # Simple frames are split here until the first other one (see _ws_frames);
        # _pending holds an incomplete simple frame meanwhile.
        self._fast = True
        self._pending = b""
        self._switch_to: bytes | None = None  # what wsproto gets first, once it takes over
        # wsproto's path: events of the last chunk, and whether it completed none.
        self._events = 0
        self._stalled = False

    # -- the hub's side ----------------------------------------------------------------

    @property
    def holds_partial_frame(self) -> bool:
        """Part of a frame or message came and not its end (the Watch times it as a line).

        Seen while frames are split here and for fragmented messages; once
        wsproto parses, bytes that completed no frame at all count as one.
        """
        return bool(self._pending) or self._message_bytes > 0 or self._stalled

    # -- reading -----------------------------------------------------------------------

    async def read_loop(self, hub: Hub, cid: ConnectionId, initial: bytes) -> None:
        """Feed the hub each text message (plus a newline) until the peer is done."""
        data = initial
        while True:
            if data:
                if self._fast:
                    commands = self._fast_commands(data)
                    if commands:
                        hub.receive(cid, commands)
                if not self._fast:  # (also when it just stopped being fast)
                    commands = self._slow_commands(hub, cid, data)
                    if commands:
                        hub.receive(cid, commands)
                hub.flush()
                if hub.backlogged(cid):
                    await hub.wait_for_room(cid)
            if self._ended.is_set():
                return
            try:
                data = await self.stream.receive(READ_SIZE)
            except _GONE:
                break
        self._ended.set()
        if not self._closing:
            hub.receive_eof(cid)

    def _fast_commands(self, data: bytes) -> bytes:
        """Split simple frames here; leave the rest to wsproto from the first that is not."""
        if self._pending:
            data = self._pending + data
        payloads, used, other = split_text_frames(data, self.max_message)
        commands = b""
        if payloads:
            payloads.append(b"")
            commands = b"\n".join(payloads)  # one command line (or several) per frame
            try:
                commands.decode()
            except UnicodeDecodeError:
                # Not text: let wsproto parse these frames again, and close with 1007.
                used, other, commands = 0, True, b""
        if other or self._closing:
            self._fast = False
            self._pending = b""
            self._switch_to = data[used:]
        else:
            self._pending = data[used:]
        return commands

    def _slow_commands(self, hub: Hub, cid: ConnectionId, data: bytes) -> bytes:
        """wsproto's path: every frame kind, every rule."""
        if self._switch_to is not None:
            data, self._switch_to = self._switch_to, None
        if data:
            self.ws.receive_data(data)
        self._events = 0
        commands = self._take_events(hub, cid)
        # Bytes that completed no frame: a frame under way inside wsproto.
        self._stalled = bool(data) and not self._events
        return commands

    def _take_events(self, hub: Hub, cid: ConnectionId) -> bytes:
        """Handle what wsproto parsed; return the command bytes for the hub."""
        commands: list[bytes] = []
        for event in self.ws.events():
            self._events += 1
            if isinstance(event, TextMessage):
                if self._closing:
                    continue  # closing: input is discarded
                data = event.data.encode()
                self._message_bytes += len(data)
                if self._message_bytes > self.max_message:
                    self._fail(hub, cid, commands, CloseReason.MESSAGE_TOO_BIG, "Line too long")
                    continue
                commands.append(data)
                if event.message_finished:
                    commands.append(b"\n")
                    self._message_bytes = 0
            elif isinstance(event, BytesMessage):
                self._fail(hub, cid, commands, CloseReason.UNSUPPORTED_DATA, "Send text frames")
            elif isinstance(event, Ping):
                self._control.append(self.ws.send(event.response()))
                self._wake.set()
            elif isinstance(event, CloseConnection):
                if self.ws.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                    # The peer's close (or its answer to ours): it sends nothing more.
                    self._ended.set()
                    if not self._closing:
                        self._fail(hub, cid, commands, CloseReason.NORMAL_CLOSURE, "")
                    break
                # wsproto could not parse a frame: it says which code applies.
                self._fail(hub, cid, commands, event.code, event.reason or "")
        return b"".join(commands)

    def _fail(
        self, hub: Hub, cid: ConnectionId, commands: list[bytes], code: int, reason: str
    ) -> None:
        """End the input: feed what came before, write what is owed, then close with ``code``."""
        if self._closing:
            return
        if code != CloseReason.NORMAL_CLOSURE:
            log.debug("connection %d: websocket closed with %d (%s)", cid, code, reason)
        if commands:
            hub.receive(cid, b"".join(commands))
            commands.clear()
        self._close = (code, reason)
        hub.receive_eof(cid)
        self.close_when_flushed()  # if the hub did not already

    # -- writing -----------------------------------------------------------------------

    def _frame(self, chunks: list[bytes]) -> tuple[bytes, int]:
        return text_frames(chunks)

    def _urgent(self) -> bytes | None:
        if not self._control:
            return None
        control, self._control = self._control, []
        return b"".join(control)

    async def write_loop(self, hub: Hub, cid: ConnectionId) -> None:
        """Send what is owed, one send per wake-up; then the close frame; wait for the peer's."""
        stream = self.stream
        try:
            await self._send_owed(stream, hub, cid)
            if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                code, reason = self._close
                await stream.send(self.ws.send(CloseConnection(code=code, reason=reason)))
            await self._ended.wait()
        except (*_GONE, OSError):
            pass  # gone, or the peer reset it
        self.scope.cancel()


async def serve_websocket(
    hub: Hub,
    stream: anyio.abc.ByteStream,
    peer: str,
    ws: WSConnection,
    initial: bytes,
    identity: str | None = None,
) -> None:
    """Serve one upgraded connection (its 101 already sent) until it ends; closes the stream.

    ``identity`` is the user a verified client certificate names (``https://`` with
    ``--tls-client-ca``), as on any other TLS listener.
    """
    conn = WebSocketConnection(stream, ws, hub.broker.max_line_bytes)
    cid = hub.connect(conn, peer, identity)
    try:
        with conn.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.write_loop, hub, cid)
                await conn.read_loop(hub, cid, initial)
    finally:
        hub.disconnected(cid)
        with anyio.CancelScope(shield=True):
            await stream.aclose()

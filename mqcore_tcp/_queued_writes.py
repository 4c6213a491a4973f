"""The hub's side of a connection written by a task of its own (anyio streams, WebSocket).

The hub calls :meth:`write` with the chunks a connection is owed; they wait
in a list (their lengths summed as they come, for the hub's bound on queued
bytes) until the connection's writer task wakes and sends them.
:meth:`close_when_flushed` gives that task :data:`CLOSE_TIMEOUT` to send the
rest and close; :meth:`abort` cancels it at once. The writer task's loop is
:meth:`_send_owed`: one send per wake-up of everything queued meanwhile
(bounded: the hub drops the connection past ``max_queued_bytes``). The asyncio fast path
(``_aio``) writes to its transport directly and does not use this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc

from mqcore import ConnectionId

from ._accept import CLOSE_TIMEOUT

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["QueuedWrites"]


class QueuedWrites:
    """Chunks owed to one connection, until its writer task takes them."""

    def __init__(self) -> None:
        #: The connection's tasks run in it: closing sets its deadline, aborting cancels it.
        self.scope = anyio.CancelScope()
        self._queue: list[bytes] = []
        self._queued = 0
        self._wake = anyio.Event()
        self._closing = False

    @property
    def queued(self) -> int:
        return self._queued

    def write(self, chunks: list[bytes]) -> int:
        self._queue += chunks
        self._queued += sum(map(len, chunks))
        self._wake.set()
        return self._queued

    def close_when_flushed(self) -> None:
        if not self._closing:
            self._closing = True
            self.scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
            self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self.scope.cancel()

    # -- the writer task's side ---------------------------------------------------------

    def _frame(self, chunks: list[bytes]) -> tuple[bytes, int]:
        """The bytes to send for ``chunks``, and how many of the queued bytes they carry."""
        data = b"".join(chunks)
        return data, len(data)

    def _urgent(self) -> bytes | None:
        """Bytes to send before any queued chunk (a WebSocket's pongs), if any."""
        return None

    async def _send_owed(self, stream: anyio.abc.ByteStream, hub: Hub, cid: ConnectionId) -> None:
        """Send what is owed, one send per wake-up, until closing with nothing left."""
        while True:
            urgent = self._urgent()
            if urgent is not None:
                await stream.send(urgent)
            elif self._queue:
                data, size = self._frame(self._queue)
                self._queue = []
                await stream.send(data)
                self._queued -= size
                hub.sent(cid)
            elif self._closing:
                return
            else:
                self._wake = anyio.Event()
                await self._wake.wait()

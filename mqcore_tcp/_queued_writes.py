"""The hub's side of a connection written by a task of its own (anyio streams, WebSocket).

The hub calls :meth:`write` with the chunks a connection is owed; they wait
in a list (their lengths summed as they come, for the hub's bound on queued
bytes) until the connection's writer task wakes and sends them.
:meth:`close_when_flushed` gives that task :data:`CLOSE_TIMEOUT` to send the
rest and close; :meth:`abort` cancels it at once. The asyncio fast path
(``_aio``) writes to its transport directly and does not use this.
"""

from __future__ import annotations

import anyio

from ._accept import CLOSE_TIMEOUT

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

"""Sharded pub/sub on one connection to a standalone Redis, read in the loop's read callback.

The node's listener hears every published batch. redis-py's ``PubSub`` layer
costs a retry wrapper, a health check and a parse into a dict per message,
and a task wake-up per read (together, half of a node's CPU at 5,000
one-message batches a second). :class:`RawPubSub` is a
:class:`~._resp.RespLink` (redis-py opens it: URL, AUTH, TLS): each read's
messages go to the node's ``heard`` callback at once, as ``(kind, channel,
data)`` tuples of bytes, and the node flushes its hub once per read. A
Redis Cluster keeps redis-py's ``PubSub`` (it follows the slots to their
shards).

A reply that is not a three-element pub/sub array (an error, say: a Redis
without sharded pub/sub) closes the connection, and :meth:`RawPubSub.closed`
raises why: the listener then reconnects as after any loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import anyio

from ._backend import BackendError
from ._resp import RespLink, command, open_link

__all__ = ["LISTENER_NAME", "Heard", "RawPubSub"]

#: The pub/sub connection's client name (``CLIENT LIST``).
LISTENER_NAME: Final = "mqcore-listen"

#: One pub/sub message: its kind (``smessage``, ``ssubscribe``...), channel and data.
Heard = tuple[bytes, bytes, Any]


class RawPubSub:
    """One pub/sub connection to a standalone Redis (see the module's docstring)."""

    def __init__(self, url: str, heard: Callable[[list[Heard]], None]) -> None:
        self._url = url
        self._heard = heard
        self._link: RespLink | None = None
        self._closed = anyio.Event()
        self._why: BaseException = BackendError("not connected")

    async def connect(self) -> None:
        self._link, _ = await open_link(self._url, self._received, self._lost, name=LISTENER_NAME)

    async def ssubscribe(self, *channels: bytes) -> None:
        self._send(b"SSUBSCRIBE", channels)

    async def sunsubscribe(self, *channels: bytes) -> None:
        self._send(b"SUNSUBSCRIBE", channels)

    def _send(self, name: bytes, channels: tuple[bytes, ...]) -> None:
        if self._link is None or not self._link.write([command(name, *channels)]):
            raise BackendError("the pub/sub connection is closed")

    async def closed(self) -> None:
        """Wait until the connection is lost; raise why."""
        await self._closed.wait()
        raise self._why

    async def aclose(self) -> None:
        if self._link is not None:
            self._link.abort()

    def _received(self, replies: list[Any]) -> None:
        messages: list[Heard] = []
        for reply in replies:
            if not isinstance(reply, list) or len(reply) != 3:
                if messages:
                    self._heard(messages)
                if self._link is not None:
                    self._link.abort(BackendError(f"unexpected pub/sub reply {reply!r:.80}"))
                return
            messages.append((reply[0], reply[1], reply[2]))
        self._heard(messages)

    def _lost(self, link: RespLink, why: BaseException) -> None:
        self._why = why
        self._closed.set()

"""Sharded pub/sub on one connection to a standalone Redis, read straight from the connection.

The node's listener reads every published batch; redis-py's ``PubSub`` layer
costs it a retry wrapper, a health check and a parse into a dict per message
(half of a node's CPU at 5,000 one-message batches a second).
:class:`RawPubSub` keeps the subset of ``PubSub``'s interface the node uses
(:meth:`~RawPubSub.ssubscribe`, :meth:`~RawPubSub.sunsubscribe`,
:meth:`~RawPubSub.get_message`, :meth:`~RawPubSub.aclose`) over one
connection of redis-py's (its URL handling, AUTH, TLS and hiredis parser),
sending the commands and reading the replies itself. Replies are RESP2 (the
protocol is pinned): ``[kind, channel, payload]`` arrays. A Redis Cluster
keeps redis-py's ``PubSub`` (it follows the slots to their shards).

Every wait is bounded: a subscribe's send by :data:`CALL_TIMEOUT`, a read by
the caller's timeout (``None`` back when nothing came).
"""

from __future__ import annotations

from typing import Any

import anyio
from redis.asyncio.connection import ConnectionPool

from ._backend import CALL_TIMEOUT

__all__ = ["RawPubSub"]


class RawPubSub:
    """One pub/sub connection to a standalone Redis (see the module's docstring)."""

    def __init__(self, url: str) -> None:
        pool: Any = ConnectionPool.from_url(
            url,
            socket_connect_timeout=CALL_TIMEOUT,
            socket_timeout=CALL_TIMEOUT,
            health_check_interval=0,
            protocol=2,
        )
        self._conn: Any = pool.make_connection()

    async def connect(self) -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            await self._conn.connect()

    async def ssubscribe(self, *channels: bytes) -> None:
        await self._send("SSUBSCRIBE", channels)

    async def sunsubscribe(self, *channels: bytes) -> None:
        await self._send("SUNSUBSCRIBE", channels)

    async def _send(self, command: str, channels: tuple[bytes, ...]) -> None:
        with anyio.fail_after(CALL_TIMEOUT):
            await self._conn.send_command(command, *channels, check_health=False)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        # (the signature of redis-py's PubSub.get_message, which the listener also calls)
        """The next message (``type``, ``channel``, ``data``), or None after ``timeout`` s."""
        reply = await self._conn.read_response(timeout=timeout, disconnect_on_error=False)
        if reply is None:
            return None
        if not isinstance(reply, list) or len(reply) != 3:
            raise ConnectionError(f"unexpected pub/sub reply {reply!r:.80}")
        kind, channel, data = reply
        return {"type": kind.decode("ascii", "replace"), "channel": channel, "data": data}

    async def aclose(self) -> None:
        await self._conn.disconnect(nowait=True)

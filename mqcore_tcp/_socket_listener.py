"""What a listener is to the server (:class:`Listening`), and the one for stream sockets.

A transport module opens a :class:`Listening` from a URL (see ``_listen``).
Stream sockets of any family (TCP, Unix) share :class:`SocketListening`:
under asyncio their connections take the Protocol fast path (``_aio``),
under any other backend anyio's streams (``_streams``).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from . import _aio, _streams
from ._hub import Hub

__all__ = ["Listening", "SocketListening"]


class Listening(Protocol):
    """A bound listener: serves connections to a hub until cancelled."""

    #: How logs name it: ``HOST:PORT`` for TCP, the URL otherwise.
    name: str
    #: The TCP port it is bound to, or None.
    port: int | None
    #: The TCP address it is bound to, or None (a Unix socket): to warn about exposure.
    host: str | None

    async def serve(self, hub: Hub, task_group: anyio.abc.TaskGroup) -> None:
        """Accept connections until cancelled; serve them (in ``task_group`` if they need tasks)."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release what it holds."""
        ...


@dataclass(eq=False)
class SocketListening:
    """A listener of stream sockets (TCP, Unix) made by anyio."""

    listener: anyio.abc.Listener[anyio.abc.SocketStream]
    name: str
    port: int | None = None
    #: Called once it is closed (a Unix socket removes its file).
    cleanup: Callable[[], None] | None = None
    _: KW_ONLY
    tls: ssl.SSLContext | None = None
    host: str | None = None
    # A MultiListener (several addresses) lists its own; a plain one is itself.
    _listeners: list[anyio.abc.SocketListener] = field(init=False)

    def __post_init__(self) -> None:
        self._listeners = list(getattr(self.listener, "listeners", [self.listener]))

    async def serve(self, hub: Hub, task_group: anyio.abc.TaskGroup) -> None:
        if _aio.running_loop() is not None:
            sockets: list[socket.socket] = [
                sub.extra(SocketAttribute.raw_socket) for sub in self._listeners
            ]
            await _aio.serve_sockets(hub, sockets, self.name, self.tls)
            return
        async with anyio.create_task_group() as tg:
            for sub in self._listeners:
                tg.start_soon(_streams.serve_listener, hub, sub, self.name, task_group, self.tls)

    async def aclose(self) -> None:
        await self.listener.aclose()
        if self.cleanup is not None:
            self.cleanup()

"""The TCP transport: ``mqcore://HOST:PORT`` (or ``tcp://``), the protocol's home."""

from __future__ import annotations

from urllib.parse import SplitResult

import anyio
from anyio.abc import SocketAttribute

from ._config import DEFAULT_PORT
from ._socket_listener import SocketListening

__all__ = ["open_tcp"]


async def open_tcp(url: SplitResult) -> SocketListening:
    """Listen on ``url``'s host (default 127.0.0.1) and port (0: any free one)."""
    host = url.hostname or "127.0.0.1"
    port = DEFAULT_PORT if url.port is None else url.port
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    return SocketListening(listener, f"{host}:{port}", port)

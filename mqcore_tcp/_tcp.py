"""The TCP transport: ``mqcore://HOST:PORT`` (or ``tcp://``), the protocol's home; TLS too."""

from __future__ import annotations

import ssl
from urllib.parse import SplitResult

import anyio
from anyio.abc import SocketAttribute

from ._config import DEFAULT_PORT
from ._socket_listener import SocketListening

__all__ = ["open_tcp"]


async def open_tcp(url: SplitResult, tls: ssl.SSLContext | None = None) -> SocketListening:
    """Listen on ``url``'s host (default 127.0.0.1) and port (0: any free one).

    With ``tls``, every connection starts with a TLS handshake (``mqcores://``).
    """
    host = url.hostname or "127.0.0.1"
    port = DEFAULT_PORT if url.port is None else url.port
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    scheme = "mqcores://" if tls is not None else ""
    return SocketListening(listener, f"{scheme}{host}:{port}", port, tls=tls, host=host)

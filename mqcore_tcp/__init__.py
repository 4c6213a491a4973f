"""mqcore_tcp: serve a :class:`mqcore.Broker` over TCP with anyio.

``python -m mqcore_tcp`` runs the standalone server; :func:`serve` and
:class:`TCPServer` embed it in an async application or a test, listening on
TCP and Unix sockets (:data:`TRANSPORTS` maps URL schemes to transports);
:class:`SQLiteStore` makes it durable (``--data-dir``).
"""

from ._cli import main, parse_args
from ._config import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_PORT, ServerConfig
from ._listen import TRANSPORTS
from ._server import TCPServer, serve
from .store import DEFAULT_FSYNC, FSYNC_MODES, FsyncMode, SQLiteStore

__all__ = [
    "DEFAULT_FSYNC",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_PORT",
    "FSYNC_MODES",
    "TRANSPORTS",
    "FsyncMode",
    "SQLiteStore",
    "ServerConfig",
    "TCPServer",
    "main",
    "parse_args",
    "serve",
]

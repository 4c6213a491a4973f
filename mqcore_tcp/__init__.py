"""mqcore_tcp: serve a :class:`mqcore.Broker` over TCP with anyio.

``python -m mqcore_tcp`` runs the standalone server; :func:`serve` and
:class:`TCPServer` embed it in an async application or a test.
"""

from ._cli import main, parse_args
from ._server import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_PORT, TCPServer, serve

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "DEFAULT_PORT", "TCPServer", "main", "parse_args", "serve"]

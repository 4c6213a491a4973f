"""Talk to a Redis server without a client library: free ports and one RESP command.

Theory of operation: the launchers in :mod:`mqcore_tcp.testing_redis` only
need to ping a server, ask who it is and run a few admin commands, so this
speaks just enough RESP2 (simple strings, errors, integers, bulk strings,
arrays) over a fresh socket per command, every read bounded by a timeout.
Free ports are found by binding port 0 and closing it; the caller retries
if another process takes the port in between.
"""

from __future__ import annotations

import socket
from typing import IO

__all__ = ["RedisError", "RedisReply", "free_port", "redis_command"]

_CLUSTER_BUS_OFFSET = 10000

RedisReply = bytes | int | list["RedisReply"] | None


class RedisError(RuntimeError):
    """Redis answered a command with an error reply (``-ERR ...``)."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A loopback TCP port free right now (and ``PORT + 10000`` too with ``cluster_bus``)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not cluster_bus:
            return port
        if port + _CLUSTER_BUS_OFFSET < 65536 and _port_is_free(port + _CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free loopback port with a free cluster bus port")


def _read_reply(stream: IO[bytes]) -> RedisReply:
    header = stream.readline()
    if not header.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, body = header[:1], header[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        return stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP reply: {header[:40]!r}")


def redis_command(port: int, *args: str | bytes | int, timeout: float = 5.0) -> RedisReply:
    """Send one command to ``127.0.0.1:PORT``; its reply (``bytes``, ``int``, list or ``None``).

    An error reply raises :class:`RedisError`; no answer within ``timeout``
    seconds raises ``TimeoutError``.
    """
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)

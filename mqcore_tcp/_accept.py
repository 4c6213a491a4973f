"""Accepting connections: back-off at the open-file limit, and what each accepted socket gets.

At the open-file limit (``EMFILE``, or ``ENFILE`` system-wide) ``accept()``
fails while the listening socket stays readable, so a plain accept loop
spins: it burns a core and, under asyncio, logs a traceback per attempt.
Every accept loop of the server therefore waits after such a failure,
longer each time up to :data:`MAX_BACKOFF`, and logs once per episode: a
warning when it starts and a note when accepting works again. Connections
already served are not affected; a waiting client is accepted once a
descriptor is free.

Every accepted TCP socket gets keepalive (a peer that vanished is noticed),
and every connection of any transport is closed within :data:`CLOSE_TIMEOUT`
once closing starts.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import anyio

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_BACKOFF",
    "AcceptBackoff",
    "out_of_descriptors",
    "peer_name",
    "tune_accepted",
]

log = logging.getLogger("mqcore_tcp")

#: First and longest wait after accept() failed for want of resources.
MIN_BACKOFF: Final = 0.01
MAX_BACKOFF: Final = 1.0

#: The longest a closing connection may take to be flushed and to end its side.
CLOSE_TIMEOUT: Final = 10.0

T = TypeVar("T")

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def out_of_descriptors(exc: BaseException) -> OSError | None:
    """The resource error behind ``exc`` (itself or its cause), if it is one."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, OSError) and candidate.errno in _RESOURCE_ERRNOS:
            return candidate
    return None


class AcceptBackoff:
    """How long one listener waits after a failed accept, with one log line per episode."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._delay = 0.0

    def failed(self, exc: OSError) -> float:
        """Note a failed accept; return how long to wait before the next."""
        if not self._delay:
            log.warning(
                "%s: cannot accept connections: %s; retrying with back-off until one is free",
                self.name,
                exc.strerror or exc,
            )
            self._delay = MIN_BACKOFF
        else:
            self._delay = min(self._delay * 2, MAX_BACKOFF)
        return self._delay

    def succeeded(self) -> None:
        """Note an accepted connection (ending an episode, if one was under way)."""
        if self._delay:
            self._delay = 0.0
            log.warning("%s: accepting connections again", self.name)

    async def accept(self, accept: Callable[[], Awaitable[T]]) -> T:
        """Call ``accept`` until it gives a connection, waiting out resource shortages."""
        while True:
            try:
                accepted = await accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                lack = out_of_descriptors(exc)
                if lack is not None:
                    await anyio.sleep(self.failed(lack))
                elif not isinstance(exc, ConnectionError):
                    raise
                continue  # a peer that went away before we took it
            self.succeeded()
            return accepted


def peer_name(address: object) -> str:
    """How logs name a peer: ``host:port`` for TCP, the path (or ``unix``) otherwise."""
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address) or "unix"


def tune_accepted(sock: socket.socket) -> None:
    """Set an accepted TCP socket's options (a Unix socket's are left as they are).

    Keepalive, so a peer that vanished is noticed; and no Nagle delay: a small
    write (a reply, one delivery) leaves at once instead of waiting for the
    peer's delayed ACK, up to 40 ms. asyncio sets TCP_NODELAY itself only on
    sockets whose ``proto`` is IPPROTO_TCP, which accepted ones do not say.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

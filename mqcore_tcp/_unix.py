"""The Unix-socket transport: ``unix:///PATH``, for clients on the same machine."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from urllib.parse import SplitResult

import anyio

from ._socket_listener import SocketListening

__all__ = ["open_unix"]


async def open_unix(url: SplitResult) -> SocketListening:
    """Listen on the socket file ``url.path``, replacing a stale one that nothing serves."""
    path = url.netloc + url.path
    if not path:
        raise ValueError(f"{url.geturl()}: no socket path")
    _remove_if_stale(path)
    listener = await anyio.create_unix_listener(path)
    inode = os.stat(path).st_ino

    def remove() -> None:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # still ours, not a successor's
                os.unlink(path)

    return SocketListening(listener, f"unix://{path}", cleanup=remove)


def _remove_if_stale(path: str) -> None:
    """Remove a socket file nothing serves; refuse one a live server serves.

    (anyio would unlink any socket file, stealing a live server's address.)
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # not a socket: binding fails with a clear error
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # left by a server that is gone
            return
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), path)

"""Server-layer test support: a server process's open-file limit and memory peak."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

from ..helpers import TIMEOUT


def limit_open_files(pid: int, limit: int) -> None:
    """Lower process ``pid``'s RLIMIT_NOFILE to ``limit`` (soft and hard)."""
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))


def request(sock: socket.socket, line: bytes) -> bytes:
    """Send one command line on a blocking socket; return the reply line."""
    sock.sendall(line)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


def connect(port: int) -> socket.socket:
    """A blocking TCP connection with the test timeout."""
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    for text in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text.startswith("VmHWM:"):
            return int(text.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Make the peak resident memory start again from the current one."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

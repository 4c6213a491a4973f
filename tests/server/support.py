"""Server-layer test support: a server process under a lowered open-file limit, its memory peak."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..helpers import TIMEOUT, listening_port

#: Runs ``python -m mqcore_tcp ARGS`` with RLIMIT_NOFILE lowered to argv[1] (no preexec_fn:
#: forking a threaded pytest is unsafe).
_LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'mqcore_tcp', *sys.argv[2:]])"
)


@contextmanager
def limited_server(max_files: int, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run the server with at most ``max_files`` descriptors; yield it and its port.

    Its log stays in its ``stderr``, for the test to read after stopping it.
    """
    command = [sys.executable, "-c", _LIMITED, str(max_files), "--port", "0", *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for text in proc.stderr:
            port = listening_port(text)
            if port is not None:
                break
        else:
            pytest.fail(f"server exited with {proc.wait()} before listening")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


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

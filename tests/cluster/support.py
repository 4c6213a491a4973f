"""Real nodes on real Redis for the cluster tests: a line client and a node launcher."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

from mqcore_tcp.testing import ServerProcess, launch

__all__ = ["Peer", "nodes"]

TIMEOUT = 10.0
#: Every Peer opened, closed after each test (conftest.py).
OPEN: list[Peer] = []


class Peer:
    """A blocking line client of one node."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._buffer = b""
        OPEN.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def raw_lines(self, count: int) -> list[bytes]:
        """The next ``count`` lines, each with its ``\\r\\n``."""
        found: list[bytes] = []
        while len(found) < count:
            while b"\n" not in self._buffer:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"closed after {len(found)} of {count} lines")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            found.append(line + b"\n")
        return found

    def lines(self, count: int) -> list[Any]:
        return [json.loads(line) for line in self.raw_lines(count)]

    def close(self) -> None:
        self.sock.close()


@contextmanager
def nodes(url: str, count: int, *extra: str) -> Iterator[list[ServerProcess]]:
    """``count`` nodes of the cluster in Redis ``url``, stopped on leaving."""
    with ExitStack() as stack, ThreadPoolExecutor(count) as pool:
        # Started together: each takes a second or two to import and connect.
        futures = [pool.submit(launch, "--cluster", url, *extra) for _ in range(count)]
        started: list[ServerProcess] = []
        for future in futures:
            node = future.result()
            stack.callback(node.stop)
            started.append(node)
        yield started

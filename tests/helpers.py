"""Drive a :class:`mqcore.Broker` synchronously, the way a transport would."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from mqcore import Broker, ConnectionId


def line(obj: Any) -> bytes:
    """One command line as a client of the reference would send it."""
    return json.dumps(obj).encode() + b"\n"


def parse(chunks: Iterable[bytes]) -> list[Any]:
    """Parse the bytes written to one connection into JSON objects.

    Also checks the framing: every object ends with ``\\r\\n`` and nothing else is written.
    """
    data = b"".join(chunks)
    assert data == b"" or data.endswith(b"\r\n"), data
    return [json.loads(part) for part in data.split(b"\r\n")[:-1]]


class Harness:
    """A broker and its output, collected per connection, for tests."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else Broker()
        self.written: dict[ConnectionId, list[bytes]] = {}
        self.closed: list[ConnectionId] = []

    def connect(self) -> ConnectionId:
        """Open a connection."""
        cid = self.broker.open_connection()
        self.written[cid] = []
        return cid

    def feed(self, cid: ConnectionId, data: bytes) -> None:
        """Feed raw bytes and collect the output."""
        self.broker.receive_data(cid, data)
        self.collect()

    def collect(self) -> None:
        """Take the broker's output into ``written`` and ``closed``."""
        output = self.broker.take_output()
        for target, chunks in output.writes.items():
            self.written[target].extend(chunks)
        self.closed.extend(output.close)

    def send(self, cid: ConnectionId, *objs: Any) -> None:
        """Feed JSON command lines."""
        self.feed(cid, b"".join(line(o) for o in objs))

    def take(self, cid: ConnectionId) -> list[Any]:
        """Return and forget what was written to ``cid``, parsed."""
        out = parse(self.written[cid])
        self.written[cid] = []
        return out

    def take_bytes(self, cid: ConnectionId) -> bytes:
        """Return and forget what was written to ``cid``, raw."""
        out = b"".join(self.written[cid])
        self.written[cid] = []
        return out

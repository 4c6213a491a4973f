"""Wire builders shared by every test layer: command objects, expected replies, framing.

One copy of what the protocol looks like, so a test says ``send("t", "m")``
and ``OK`` instead of spelling JSON by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

#: The reply to every successful command, parsed.
OK: dict[str, Any] = {"success": True}
#: The same, as the bytes the server writes.
OK_BYTES = b'{"success": true}\r\n'


def fail(reason: str) -> dict[str, Any]:
    """A failure reply, parsed."""
    return {"success": False, "reason": reason}


def sub(topic: str, **extra: Any) -> dict[str, Any]:
    """A ``subscribe`` command."""
    return {"command": "subscribe", "topic": topic, **extra}


def unsub(topic: str) -> dict[str, Any]:
    """An ``unsubscribe`` command."""
    return {"command": "unsubscribe", "topic": topic}


def send(topic: str, msg: str, delivery: str = "all", **extra: Any) -> dict[str, Any]:
    """A ``send`` command."""
    return {"command": "send", "topic": topic, "msg": msg, "delivery": delivery, **extra}


def delivered(topic: str, msg: str, index: int, delivery: str = "all", **extra: Any) -> Any:
    """A delivery of that ``send``, parsed."""
    return {**send(topic, msg, delivery, **extra), "index": index}


def line(obj: Any) -> bytes:
    """One command line as a client of the reference would send it."""
    return json.dumps(obj).encode() + b"\n"


def lines(*objs: Any) -> bytes:
    """Several command lines, joined."""
    return b"".join(line(o) for o in objs)


def parse(chunks: Iterable[bytes]) -> list[Any]:
    """Parse the bytes written to one connection into JSON objects.

    Also checks the framing: every object ends with ``\\r\\n`` and nothing else is written.
    """
    data = b"".join(chunks)
    assert data == b"" or data.endswith(b"\r\n"), data
    return [json.loads(part) for part in data.split(b"\r\n")[:-1]]


def expected_replies(data: bytes, max_line_bytes: int) -> int:
    """How many replies a server owes for ``data``: one per complete line that is not
    empty after the server's strip, up to a ``quit``; one more for a partial line
    already over ``max_line_bytes`` (answered before it ends)."""
    count = 0
    *complete, partial = data.split(b"\n")
    for raw in complete:
        if len(raw) > max_line_bytes:
            count += 1
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            count += 1
            continue
        if text == "quit":
            return count
        count += bool(text)
    return count + (len(partial) > max_line_bytes)

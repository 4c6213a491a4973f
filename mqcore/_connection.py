"""One connection's state in the broker, and the framing of its input into lines.

Framing rules (the reference's, plus a bound):

- A line ends at ``\\n``; whatever chunks the bytes arrive in, the lines are
  the same. The bytes after the last ``\\n`` of a read are a partial line,
  kept in :attr:`Connection.buffer` until the rest arrives.
- A line longer than ``max_line_bytes`` is answered ``Line too long`` once,
  as soon as that is known (possibly long before its end arrives), and its
  bytes are thrown away up to its end: the buffer never holds more than
  ``max_line_bytes``.
- At end of input (or ``quit``) a partial line is discarded: it never ended,
  so it is not a command.

The framing is split in two calls around the broker's line loop so that
replies keep the order of the lines: :meth:`Connection.split` returns the
complete lines of a read (and whether the first, which began in an earlier
read, was over the limit), and :meth:`Connection.keep` buffers the partial
line once the complete ones were handled.
"""

from __future__ import annotations

from typing import NewType

__all__ = ["Connection", "ConnectionId"]

ConnectionId = NewType("ConnectionId", int)
"""Names one connection registered with a :class:`~mqcore.Broker`."""


class Connection:
    """What the broker knows of one connection."""

    __slots__ = ("buffer", "closing", "discarding", "id", "out", "topics")

    def __init__(self, cid: ConnectionId) -> None:
        self.id = cid
        self.buffer = bytearray()
        # True while the rest of an over-long line is being thrown away.
        self.discarding = False
        # The topics it subscribes to, each with its position in that topic's
        # list of subscribers: what makes unsubscribing O(1).
        self.topics: dict[str, int] = {}
        # Chunks owed to this connection since the last take_output(); None
        # when nothing is owed, so the broker knows when to list it as dirty.
        self.out: list[bytes] | None = None
        # Set by `quit` or end of input: nothing more it sends is read.
        self.closing = False

    def split(self, data: bytes, limit: int) -> tuple[list[bytes], bytes, bool]:
        """Frame one read: its complete lines, its partial last line, and a flag.

        The flag is True if the first line, begun in an earlier read, ended
        over ``limit``: it is dropped from the lines and the caller answers
        ``Line too long`` before the others. Lines of this read that are over
        ``limit`` stay in the list, for the caller to answer in their turn.
        """
        # One split (in C) frames a whole read: much cheaper than a find()
        # and a slice per line in Python. The last part is an unfinished line.
        lines = data.split(b"\n")
        tail = lines.pop()
        buffer = self.buffer
        if lines and (buffer or self.discarding):
            # The first line ends one that began in an earlier read.
            if self.discarding:
                self.discarding = False  # its "Line too long" was already sent
                del lines[0]
            elif len(buffer) + len(lines[0]) > limit:
                buffer.clear()
                del lines[0]
                return lines, tail, True
            else:
                buffer += lines[0]
                lines[0] = bytes(buffer)
                buffer.clear()
        return lines, tail, False

    def keep(self, tail: bytes, limit: int) -> bool:
        """Buffer the partial line ``tail``; True if that passes ``limit``.

        Past the limit, the line is dropped now and its bytes until its end
        will be too: the caller answers ``Line too long`` at once.
        """
        if not tail or self.discarding:
            return False
        buffer = self.buffer
        if len(buffer) + len(tail) > limit:
            buffer.clear()
            self.discarding = True
            return True
        buffer += tail
        return False

    def end_input(self) -> None:
        """Read nothing more: drop a partial line and anything still to discard."""
        self.closing = True
        self.buffer = bytearray()
        self.discarding = False

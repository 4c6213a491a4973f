"""What the server writes, read without I/O: framing lines and telling them apart.

Framing: :class:`LineReader` splits the byte stream at ``\\n``. A line that
spans reads is gathered in one ``bytearray`` and only the new bytes are
searched for its end, so reading a line costs time linear in its length,
whatever the chunking (re-joining the partial line on every read was
quadratic). A line longer than ``max_line`` is not the protocol.

Classification: a server line is one of

- the success reply ``{"success": true}``, recognised by comparing bytes
  (the common case, so no decoding);
- a delivery: an object with ``command``, ``topic``, ``msg``, ``delivery``
  and ``index``, decoded as :class:`Received`;
- any other reply (a failure, or ``hello``'s description), decoded as
  :class:`mqcore.Reply` (``hello``'s fields are decoded again by whoever
  waits for it);
- an empty line, ignored;
- anything else: a :class:`ProtocolError`.
"""

from __future__ import annotations

from typing import Final

import msgspec

from mqcore import SUCCESS, HelloReply, Message, Reply

from ._errors import ProtocolError

__all__ = [
    "ENCODER",
    "OK",
    "LineReader",
    "Received",
    "classify",
    "decode_hello",
    "unexpected",
]


class Received(Message, frozen=True, gc=False, omit_defaults=True):
    """A message delivered to a :class:`Subscription`.

    ``topic``, ``msg``, ``delivery`` and ``index`` are the server's; ``gap`` is
    the client's: it is ``True`` on the first message after a reconnection
    that may have lost messages (the server's index numbering started over,
    or the subscription had no position to resume from). See the README's
    *Resume* section.
    """

    gap: bool = False


ENCODER: Final = msgspec.json.Encoder()
_DELIVERY_DECODER: Final = msgspec.json.Decoder(Received)
_REPLY_DECODER: Final = msgspec.json.Decoder(Reply)
_HELLO_DECODER: Final = msgspec.json.Decoder(HelloReply)
#: Every successful command gets this reply; recognising it needs no decoding.
#: Lines are split at "\n", so a line keeps the reply's "\r".
_OK_LINE: Final = SUCCESS.removesuffix(b"\n")
#: The same reply with other line ends or without the space, as another server
#: may write it: only lines this short are worth stripping to compare.
_OK_LINES: Final = frozenset({SUCCESS.strip(), b"".join(SUCCESS.split())})
_OK_MAX: Final = len(SUCCESS)
OK: Final = Reply(success=True)
#: What decoding a line from the server can raise besides DecodeError: invalid
#: UTF-8 inside a string, and JSON nested deeper than msgspec recurses. Each
#: means the server is not speaking the protocol.
_UNDECODABLE: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def unexpected(line: bytes) -> ProtocolError:
    """The error for a line that is not the protocol."""
    return ProtocolError(f"unexpected line from the server: {line[:200]!r}")


def classify(line: bytes) -> Received | Reply | None:
    """A delivery, a reply, or ``None`` for an empty line; raise ProtocolError otherwise."""
    if line == _OK_LINE or (len(line) <= _OK_MAX and line.strip() in _OK_LINES):
        return OK
    try:
        return _DELIVERY_DECODER.decode(line)
    except msgspec.ValidationError:
        # Not a delivery: a reply (a failure, or `hello`'s).
        try:
            return _REPLY_DECODER.decode(line)
        except _UNDECODABLE:
            raise unexpected(line) from None
    except _UNDECODABLE:
        if not line.strip():
            return None
        raise unexpected(line) from None


def decode_hello(line: bytes) -> HelloReply | None:
    """``hello``'s description, or ``None`` if the server answers it but not as mqcore does."""
    try:
        return _HELLO_DECODER.decode(line)
    except msgspec.DecodeError:
        return None
    except (UnicodeDecodeError, RecursionError):
        # The reply decoder skipped the field that holds it; no server
        # speaking JSON writes this.
        raise unexpected(line) from None


class LineReader:
    """Splits a byte stream into lines (without their ``\\n``), in time linear in its length."""

    __slots__ = ("_partial", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        # The start of a line whose end has not arrived; it never holds a "\n".
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines that ``data`` completes; raise ProtocolError for one over ``max_line``."""
        partial = self._partial
        if partial:
            end = data.find(b"\n")
            if end < 0:
                partial += data
                self._check(len(partial))
                return []
            partial += data[:end]
            first = bytes(partial)
            partial.clear()
            lines = data[end + 1 :].split(b"\n")
            lines.insert(0, first)
        else:
            lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._check(len(tail))
            partial += tail
        return lines

    def clear(self) -> None:
        """Forget a partial line (the connection it came from is gone)."""
        self._partial.clear()

    def _check(self, length: int) -> None:
        if length > self.max_line:
            raise ProtocolError(f"the server sent a line longer than {self.max_line >> 20} MiB")

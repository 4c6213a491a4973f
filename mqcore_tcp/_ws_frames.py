"""WebSocket frames without wsproto where it is safe: the hot path of a WebSocket connection.

Theory of operation. wsproto parses every frame through generators (about
70 us a frame here), five times the broker's cost of a ``send``. Almost every
frame a client sends is the simplest kind: final (FIN), text, no extension
bits, masked, no longer than the line limit. :func:`split_text_frames`
unmasks a run of such complete frames from the start of a buffer in a few
C-level operations each, and stops at the first frame that is anything else
(or incomplete). The connection (``_websocket``) hands that frame and
everything after it to wsproto and stays with wsproto for good: control
frames, fragments, bad frames and the closing handshake are wsproto's, so
every rule of RFC 6455 is still wsproto's to enforce. Server frames are built
here too (:func:`text_frames`): unmasked, one per reply or delivery.
"""

from __future__ import annotations

from typing import Final

__all__ = ["split_text_frames", "text_frames"]

# A text frame's first byte: FIN, no RSV bits, opcode 1.
_TEXT: Final = 0x81
_SMALL_HEADERS: Final = tuple(bytes((_TEXT, n)) for n in range(126))


def text_frames(chunks: list[bytes]) -> tuple[bytes, int]:
    """One unmasked text frame per chunk (its ``\\r\\n`` left out), joined; and the chunks' size."""
    parts: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        length = len(chunk)
        size += length
        if chunk.endswith(b"\r\n"):
            length -= 2
        if length < 126:
            parts.append(_SMALL_HEADERS[length])
        elif length < 65536:
            parts.append(b"\x81\x7e" + length.to_bytes(2, "big"))
        else:
            parts.append(b"\x81\x7f" + length.to_bytes(8, "big"))
        parts.append(memoryview(chunk)[:length])
    return b"".join(parts), size


def split_text_frames(data: bytes, limit: int) -> tuple[list[bytes], int, bool]:
    """Unmask the complete simple text frames at the start of ``data``.

    Returns their payloads, the bytes they took, and whether parsing stopped
    at a frame that is not simple (True) rather than at an incomplete one
    (False: wait for more bytes). A frame longer than ``limit`` is not simple.
    """
    payloads: list[bytes] = []
    at = 0
    end = len(data)
    while end - at >= 2:
        if data[at] != _TEXT or not data[at + 1] & 0x80:
            return payloads, at, True  # control, fragment, RSV bits, unmasked: wsproto's
        length = data[at + 1] & 0x7F
        start = at + 2
        if length == 126:
            start = at + 4
            length = int.from_bytes(data[at + 2 : start], "big")
        elif length == 127:
            start = at + 10
            length = int.from_bytes(data[at + 2 : start], "big")
        if length > limit:
            return payloads, at, True
        if end < start + 4 + length:
            break  # incomplete
        mask = data[start : start + 4]
        payload = data[start + 4 : start + 4 + length]
        if mask != b"\0\0\0\0":
            key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
        payloads.append(payload)
        at = start + 4 + length
    return payloads, at, False

"""The wire protocol: command Structs, the shared decoder and constant replies.

Everything that defines what a valid line is lives here, so the broker, the
TCP server and the client all share one copy of the rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal

import msgspec

from ._subjects import EMPTY_TOKEN, MULTI_NOT_LAST
from ._version import __version__

__all__ = [
    "COMMAND_DECODER",
    "PROTOCOL_FEATURES",
    "REASONS",
    "REFUSED",
    "SERVER_NAME",
    "SUCCESS",
    "Ack",
    "Command",
    "Delivery",
    "Hello",
    "HelloReply",
    "Message",
    "Nack",
    "Reason",
    "Reply",
    "Send",
    "Subscribe",
    "Unsubscribe",
    "delivery_bytes",
    "error_reply",
    "hello_reply",
]

Delivery = Literal["all", "one"]


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="command", forbid_unknown_fields=True):
    """``{"command": "subscribe", "topic": ..., "last_seen"?: int, "cache"?: bool}``.

    ``ack`` and ``prefetch`` (an mqcore extension, see :mod:`mqcore._acks`)
    are UNSET unless given, so a client that does not use them writes the
    same bytes as before.
    """

    topic: str
    # -1 replays every cached message: indices start at 0.
    last_seen: int = -1
    cache: bool = True
    ack: bool | msgspec.UnsetType = msgspec.UNSET
    prefetch: int | msgspec.UnsetType = msgspec.UNSET


class Unsubscribe(
    msgspec.Struct, tag="unsubscribe", tag_field="command", forbid_unknown_fields=True
):
    """``{"command": "unsubscribe", "topic": ...}``."""

    topic: str


class Send(msgspec.Struct, tag="send", tag_field="command", forbid_unknown_fields=True):
    """``{"command": "send", "topic", "msg", "delivery": "all"|"one", "cache"?: bool}``."""

    topic: str
    msg: str
    delivery: Delivery
    cache: bool = True


class Hello(msgspec.Struct, tag="hello", tag_field="command", forbid_unknown_fields=True):
    """``{"command": "hello"}``: an opt-in handshake that describes the server.

    Optional: ``token``, or ``user`` and ``password``, to authenticate (see
    :mod:`mqcore._auth`), and ``heartbeat`` (seconds) to agree on heartbeats.
    A plain ``Hello()`` encodes as before: unset fields are omitted.
    """

    user: str | msgspec.UnsetType = msgspec.UNSET
    password: str | msgspec.UnsetType = msgspec.UNSET
    token: str | msgspec.UnsetType = msgspec.UNSET
    heartbeat: float | msgspec.UnsetType = msgspec.UNSET

    def __repr__(self) -> str:
        # Never show a secret (logs, tracebacks).
        return f"Hello(user={self.user!r}, heartbeat={self.heartbeat!r})"


class Ack(msgspec.Struct, tag="ack", tag_field="command", forbid_unknown_fields=True):
    """``{"command": "ack", "topic": ..., "index": int}``: a pending message is done."""

    topic: str
    index: int


class Nack(msgspec.Struct, tag="nack", tag_field="command", forbid_unknown_fields=True):
    """``{"command": "nack", "topic", "index", "delay"?: seconds, "reason"?: str}``."""

    topic: str
    index: int
    delay: float = 0.0
    reason: str = "nack"


Command = Subscribe | Unsubscribe | Send | Hello | Ack | Nack


class Message(msgspec.Struct, tag="send", tag_field="command", frozen=True, gc=False):
    """A delivered message, as a server writes it: the sender's ``send`` plus ``"index"``.

    Decoding ignores unknown keys (a delivery repeats ``cache`` when the sender
    gave it), so this reads any server that speaks the protocol.
    """

    topic: str
    msg: str
    delivery: Delivery
    #: The topic's sequence number for this message, from 0 (see ``last_seen``).
    index: int
    #: Acknowledged deliveries only (``subscribe`` with ``ack``): which
    #: delivery of the message this is, from 1; 0 on any other delivery.
    attempt: int = 0


class Reply(msgspec.Struct):
    """The one reply every command line gets: ``{"success": bool, "reason"?: str}``.

    Unknown keys are ignored, so a ``hello`` reply decodes as a ``Reply`` too.
    """

    success: bool
    reason: str = ""


#: One decoder for every line: building a Decoder is costly, reusing one is not.
COMMAND_DECODER: Final = msgspec.json.Decoder(Command)


class Reason:
    """The exact failure reasons of the reference broker (and our own additions)."""

    NOT_UTF8: Final = "Could not decode input as UTF-8"
    NOT_JSON: Final = "Could not parse json"
    MALFORMED: Final = "Malformed json message"
    LINE_TOO_LONG: Final = "Line too long"
    TOO_MANY_TOPICS: Final = "Too many topics"
    TOPIC_TOO_LONG: Final = "Topic name too long"
    STORAGE_UNAVAILABLE: Final = "Storage unavailable"
    #: Cluster mode: the shared backend (Redis) did not take the command.
    BACKEND_UNAVAILABLE: Final = "Backend unavailable"
    #: A ``send`` to a name with a ``*`` or ``>`` token (see mqcore._subjects).
    SEND_TO_PATTERN: Final = "Cannot send to a pattern"
    #: A subscribe to a pattern with an empty token.
    PATTERN_EMPTY_TOKEN: Final = f"Malformed pattern: {EMPTY_TOKEN}"
    #: A subscribe to a pattern with ``>`` before its last token.
    PATTERN_MULTI_NOT_LAST: Final = f"Malformed pattern: {MULTI_NOT_LAST}"
    #: A subscribe to a pattern with ``last_seen``: indices are per topic.
    PATTERN_LAST_SEEN: Final = "last_seen is not allowed with a pattern"
    #: Past ``max_topics`` pattern subscriptions over the whole broker.
    TOO_MANY_PATTERNS: Final = "Too many pattern subscriptions"
    #: Acknowledged delivery (see mqcore._acks).
    NOT_ACKING: Final = "Not an acknowledging subscriber of this topic"
    NOT_PENDING: Final = "Not pending: unknown index, already acknowledged, or another's"
    BAD_PREFETCH: Final = "Invalid prefetch"
    BAD_DELAY: Final = "Invalid delay"
    ACK_PATTERN: Final = "An acknowledging subscription needs an exact topic"
    WORK_QUEUE_FULL: Final = "Work queue full"
    AUTH_REQUIRED: Final = "Authentication required"
    AUTH_FAILED: Final = "Authentication failed"
    PERMISSION_DENIED: Final = "Permission denied"
    TOO_MANY_CONNECTIONS: Final = "Too many connections"
    #: A line whose handling failed in a way no rule foresaw (a bug, or out
    #: of memory): the line changed nothing more than it had, and the
    #: connection goes on with the next line.
    INTERNAL_ERROR: Final = "Internal error"


#: The reply to every successful command, byte for byte as the reference writes it.
SUCCESS: Final = b'{"success": true}\r\n'

_ENCODER: Final = msgspec.json.Encoder()


SERVER_NAME: Final = "mqcore"
#: What ``hello`` advertises beyond the reference protocol.
PROTOCOL_FEATURES: Final = ("hello", "epoch", "quit", "line-limit", "wildcards", "ack")


class HelloReply(msgspec.Struct, forbid_unknown_fields=False):
    """The reply to ``hello``: who the server is, its limits and its ``epoch``.

    ``epoch`` changes whenever the server's index numbering starts over, so a
    client that saw another epoch before knows its ``last_seen`` means nothing.
    ``durable`` says whether acknowledged messages survive a restart;
    ``storage`` (durable servers only) is ``"ok"``, or ``"unavailable"``
    while the store cannot be written and every ``send`` is refused with
    ``Storage unavailable``.
    """

    success: bool
    server: str
    version: str
    features: list[str]
    max_line_bytes: int
    cache_size: int
    epoch: str
    durable: bool = False
    # UNSET (absent from the bytes) for a server that is not durable, so its
    # reply stays byte for byte what it was.
    storage: Literal["ok", "unavailable"] | msgspec.UnsetType = msgspec.UNSET
    #: ``True`` when the server requires authentication (UNSET otherwise).
    auth: bool | msgspec.UnsetType = msgspec.UNSET
    #: The agreed heartbeat interval in seconds, when the ``hello`` asked for one.
    heartbeat: float | msgspec.UnsetType = msgspec.UNSET


def hello_reply(
    epoch: str,
    *,
    cache_size: int,
    max_line_bytes: int,
    durable: bool = False,
    storage_available: bool = True,
    auth: bool = False,
    heartbeat: float | None = None,
    features: Sequence[str] = PROTOCOL_FEATURES,
) -> bytes:
    """Return the wire bytes of the reply to ``hello``.

    A durable server's reply says whether its storage is available; one that
    requires authentication says ``"auth": true``; ``heartbeat`` is the agreed
    interval. Without them the bytes are what they always were.
    """
    reply = HelloReply(
        success=True,
        server=SERVER_NAME,
        version=__version__,
        features=list(features),
        max_line_bytes=max_line_bytes,
        cache_size=cache_size,
        epoch=epoch,
        durable=durable,
        storage=("ok" if storage_available else "unavailable") if durable else msgspec.UNSET,
        auth=True if auth else msgspec.UNSET,
        heartbeat=msgspec.UNSET if heartbeat is None else heartbeat,
    )
    return _ENCODER.encode(reply) + b"\r\n"


def delivery_bytes(line: bytes, index: int) -> bytes:
    """Re-encode the valid ``send`` command ``line`` plus ``index`` as a delivery.

    The sender's keys, in its order, with a repeated key once (the last value
    counts, as in the reference's re-encoding).
    """
    fields = msgspec.json.decode(line, type=dict[str, object])
    fields["index"] = index
    return _ENCODER.encode(fields) + b"\r\n"


def error_reply(reason: str) -> bytes:
    """Return the wire bytes of ``{"success": false, "reason": reason}``."""
    return b'{"success": false, "reason": ' + _ENCODER.encode(reason) + b"}\r\n"


#: Each :class:`Reason`'s failure reply, encoded once (taken from the class, so
#: a new reason has its reply too): ``REFUSED[Reason.MALFORMED]``.
REFUSED: Final[Mapping[str, bytes]] = {
    reason: error_reply(reason)
    for name, reason in vars(Reason).items()
    if name.isupper() and isinstance(reason, str)
}
#: The reason of each failure reply, by its bytes: to count failures by reason.
REASONS: Final[Mapping[bytes, str]] = {reply: reason for reason, reply in REFUSED.items()}

"""The client's exceptions: one base class, one subclass per way things fail."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "ConnectTimeoutError",
    "ConnectionLostError",
    "MQError",
    "MQTimeoutError",
    "ProtocolError",
    "ServerError",
    "SubscriptionOverflowError",
]


class MQError(Exception):
    """Base class of every error the client raises."""


class ServerError(MQError):
    """The server answered a command with ``{"success": false, "reason": ...}``.

    ``reason`` is the server's text, e.g. ``"Malformed json message"``;
    ``count`` is how many pipelined publishes failed, when :meth:`Client.flush`
    reports them (``reason`` is then the first one's).
    """

    def __init__(self, reason: str, count: int = 1) -> None:
        self.reason = reason
        self.count = count
        more = f" ({count} commands failed)" if count > 1 else ""
        super().__init__(f"server error: {reason}{more}")


class ConnectionLostError(MQError):
    """The connection is gone (or the client is closed) and the command cannot complete.

    A command that was in flight when the connection dropped may or may not
    have been carried out by the server.
    """


class ConnectError(ConnectionLostError):
    """The client could not connect (refused, unreachable, name not resolved)."""


class MQTimeoutError(MQError, TimeoutError):
    """The server did not answer in time (connecting, a reply, a flush, room to write, ``get``)."""


class ProtocolError(ConnectionLostError):
    """The server wrote something that is not the protocol; the client drops the connection."""


class SubscriptionOverflowError(MQError):
    """A subscription's queue filled up because the application stopped consuming.

    The subscription has ended; every message queued before the overflow was
    still yielded. Subscribe again with ``last_seen=error.last_index`` and
    ``epoch=error.epoch`` to continue without a gap, as far as the server's
    cache reaches.
    """

    def __init__(self, topic: str, last_index: int | None, epoch: str | None) -> None:
        self.topic = topic
        self.last_index = last_index
        self.epoch = epoch
        super().__init__(f"subscription to {topic!r} overflowed its queue after index {last_index}")


class AuthenticationError(ConnectError):
    """The server refused the credentials (or wants some): ``reason`` says which.

    Never retried: reconnecting with the same credentials would fail the same
    way, so a client that reconnects stops and raises this instead.
    """

    def __init__(self, reason: str, address: object) -> None:
        self.reason = reason
        super().__init__(f"{address}: {reason}")


class ConnectTimeoutError(MQTimeoutError, ConnectError):
    """Connecting (TCP connect plus the ``hello`` handshake) took over ``connect_timeout``."""

"""The server's options in one value, :class:`ServerConfig`, for the CLI, server and serve()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mqcore import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPIC_BYTES,
    DEFAULT_MAX_TOPICS,
)

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT: Final = 7000
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and the bounds of what clients may make the server hold.

    ``listen`` lists listener URLs (``mqcore://HOST:PORT``, ``unix:///PATH``);
    when empty the server listens on TCP ``host:port`` only, so ``host`` and
    ``port`` are the shorthand for one TCP listener.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    listen: tuple[str, ...] = ()
    cache_size: int = DEFAULT_CACHE_SIZE
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_topics: int = DEFAULT_MAX_TOPICS
    max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
    #: Acknowledged delivery (see mqcore._acks): seconds to ack, deliveries before T.dead.
    ack_wait: float = DEFAULT_ACK_WAIT
    max_deliver: int = DEFAULT_MAX_DELIVER

    def urls(self) -> tuple[str, ...]:
        """The listener URLs this configuration asks for."""
        if self.listen:
            return self.listen
        return (tcp_url(self.host, self.port),)


def tcp_url(host: str, port: int) -> str:
    """The ``mqcore://`` URL of a TCP listener (IPv6 addresses in brackets)."""
    return f"mqcore://[{host}]:{port}" if ":" in host else f"mqcore://{host}:{port}"

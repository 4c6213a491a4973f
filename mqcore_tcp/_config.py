"""The server's options in one value, :class:`ServerConfig`, for the CLI, server and serve()."""

from __future__ import annotations

import resource
import ssl
from dataclasses import dataclass
from typing import Final, TypedDict

from mqcore import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPIC_BYTES,
    DEFAULT_MAX_TOPICS,
)

__all__ = [
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_LINE_TIMEOUT",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_PORT",
    "ServerConfig",
    "default_max_connections",
]

DEFAULT_PORT: Final = 7000
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20
#: Seconds a started line may take to end (slowloris), and a connection to authenticate.
DEFAULT_LINE_TIMEOUT: Final = 30.0
DEFAULT_AUTH_TIMEOUT: Final = 5.0
#: Descriptors kept free of connections (listeners, the store, logs, accept's own).
_SPARE_DESCRIPTORS: Final = 64


def default_max_connections() -> int:
    """10,000, or fewer if the open-file limit leaves less (then 64 below it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(1, min(10_000, soft - _SPARE_DESCRIPTORS))


class BrokerBounds(TypedDict):
    """The bounds a server's broker is made with (:meth:`ServerConfig.broker_bounds`)."""

    cache_size: int
    max_line_bytes: int
    max_topics: int
    max_topic_bytes: int
    max_cache_bytes: int


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen and the bounds of what clients may make the server hold.

    ``listen`` lists listener URLs (``mqcore://HOST:PORT``, ``unix:///PATH``);
    when empty the server listens on TCP ``host:port`` only, so ``host`` and
    ``port`` are the shorthand for one TCP listener.

    Exposure (issue 11): ``mqcores://`` listeners serve TLS with ``tls_cert``
    and ``tls_key`` (or a ready ``tls_context``); ``tls_client_ca`` requires
    client certificates. ``auth`` names the users file (see ``_auth``).
    ``max_connections`` (None: :func:`default_max_connections`),
    ``line_timeout`` and ``auth_timeout`` bound what one peer may hold.
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
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_context: ssl.SSLContext | None = None
    auth: str | None = None
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    max_connections: int | None = None
    line_timeout: float = DEFAULT_LINE_TIMEOUT
    #: Cluster mode: the Redis URL of the cluster (see mqcore_tcp.cluster).
    cluster: str | None = None

    def broker_bounds(self) -> BrokerBounds:
        """The options of :class:`mqcore.Broker` (or a cluster node's) that bound it."""
        return BrokerBounds(
            cache_size=self.cache_size,
            max_line_bytes=self.max_line_bytes,
            max_topics=self.max_topics,
            max_topic_bytes=self.max_topic_bytes,
            max_cache_bytes=self.max_cache_bytes,
        )

    def urls(self) -> tuple[str, ...]:
        """The listener URLs this configuration asks for."""
        if self.listen:
            return self.listen
        return (tcp_url(self.host, self.port),)


def tcp_url(host: str, port: int) -> str:
    """The ``mqcore://`` URL of a TCP listener (IPv6 addresses in brackets)."""
    return f"mqcore://[{host}]:{port}" if ":" in host else f"mqcore://{host}:{port}"

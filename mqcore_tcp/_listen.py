"""Listeners as URLs: the registry from a URL scheme to the transport that opens it.

A new transport is one module with an ``async def open_X(url) -> Listening``
(see ``_socket_listener.Listening``) and one line in :data:`TRANSPORTS`.
``mqcores://`` (TLS over TCP) is the TCP transport with the server's TLS
context (see ``_tls``), ``https://`` the HTTP one; opening either without a
context is refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

from ._http import open_http
from ._socket_listener import Listening
from ._tcp import open_tcp
from ._tls import TLS_SCHEMES
from ._unix import open_unix

__all__ = ["TRANSPORTS", "open_listener", "parse_url"]

Opener = Callable[[SplitResult], Awaitable[Listening]]

#: URL scheme -> the transport that listens there.
TRANSPORTS: dict[str, Opener] = {
    "mqcore": open_tcp,
    "tcp": open_tcp,
    "mqcores": open_tcp,
    "tls": open_tcp,
    "unix": open_unix,
    "http": open_http,
    "https": open_http,
}


def parse_url(url: str) -> SplitResult:
    """Split and check a listener URL; :class:`ValueError` says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in TRANSPORTS:
        known = ", ".join(f"{scheme}://" for scheme in TRANSPORTS)
        raise ValueError(f"{url!r}: unknown scheme (use {known})")
    if parts.scheme == "unix":
        if not parts.netloc + parts.path:
            raise ValueError(f"{url!r}: no socket path (e.g. unix:///run/mqcore.sock)")
    else:
        _ = parts.port  # raises ValueError for a port that is not one
        if parts.path not in ("", "/"):
            raise ValueError(f"{url!r}: a TCP listener has no path")
    return parts


async def open_listener(url: str, tls: ssl.SSLContext | None = None) -> Listening:
    """Bind the listener ``url`` names (raises :class:`OSError` if it cannot be bound).

    ``tls`` is the server's TLS context, used by ``mqcores://`` and
    ``https://`` listeners (:class:`ValueError` if one is asked for without
    it) and by no other.
    """
    parts = parse_url(url)
    if parts.scheme in TLS_SCHEMES:
        if tls is None:
            raise ValueError(f"{url}: a TLS listener needs --tls-cert and --tls-key")
        if parts.scheme == "https":
            return await open_http(parts, tls)
        return await open_tcp(parts, tls)
    return await TRANSPORTS[parts.scheme](parts)

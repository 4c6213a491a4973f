"""Server addresses: ``mqcore://host:port``, ``unix:///path/to.sock``, or ``host:port``.

One parser for the library (:func:`mqcore_client.connect`) and the command
line (``--url``, ``MQCORE_URL``), so both accept the same spellings:

- ``mqcore://HOST[:PORT]``: TCP (the port defaults to 7000); an IPv6 host
  goes in brackets, ``mqcore://[::1]:7000``;
- ``mqcores://HOST[:PORT]``: the same over TLS;
- ``mqcore://USER:PASSWORD@HOST`` (either scheme): credentials for ``hello``,
  percent-encoded in the URL; they are never part of ``str()``, ``url`` or a repr;
- ``unix:///PATH`` (or ``unix:PATH``): a Unix-domain socket;
- ``HOST:PORT``, ``HOST`` or ``:PORT``: TCP, a shorthand without a scheme.

Several servers (nodes of one cluster, or a server and its standby) are a
list of such addresses, or one string of them separated by commas
(:func:`parse_urls`); a comma inside credentials is written ``%2C``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Address", "parse_url", "parse_urls"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7000


@dataclass(frozen=True)
class Address:
    """Where a server listens: a TCP ``host`` and ``port`` (``tls``?), or a Unix socket ``path``.

    ``user`` and ``password`` are credentials given in the URL (never shown).
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    path: str | None = None
    tls: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: A ``ws://HOST:PORT/PATH`` URL: the protocol over a server's WebSocket listener.
    websocket: str | None = None

    @property
    def url(self) -> str:
        """The address as a URL that :func:`parse_url` reads back (without credentials)."""
        if self.websocket is not None:
            return self.websocket
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqcores' if self.tls else 'mqcore'}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.websocket is not None:
            return self.websocket
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> Address:
    """Read a server address; raise :class:`ValueError` saying what is wrong with it."""
    text = url.strip()
    if not text:
        raise ValueError("empty server address")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if text.startswith("unix:"):
            return _unix(text.removeprefix("unix:"), url)
        return _tcp(text, url)
    scheme = scheme.lower()
    if scheme == "unix":
        return _unix(rest, url)
    if scheme in ("mqcore", "tcp", "mqcores", "tls"):
        userinfo, at, hostport = rest.rpartition("@")
        if "/" in hostport.rstrip("/") or "?" in hostport or "#" in hostport:
            raise ValueError(f"{_safe(url)!r}: an {scheme}:// address has no path")
        address = _tcp(hostport.rstrip("/"), _safe(url))
        user = password = None
        if at:
            name, colon, secret = userinfo.partition(":")
            user = urllib.parse.unquote(name) or None
            password = urllib.parse.unquote(secret) if colon else None
        return Address(
            address.host,
            address.port,
            tls=scheme in ("mqcores", "tls"),
            user=user,
            password=password,
        )
    if scheme in ("ws", "wss"):
        parts = urllib.parse.urlsplit(text)
        if not parts.hostname:
            raise ValueError(f"{_safe(url)!r}: a {scheme}:// address needs a host")
        tls = scheme == "wss"
        # The WebSocket stream (_ws) connects to the URL itself, TLS for wss://.
        return Address(parts.hostname, parts.port or (443 if tls else 80), tls=tls, websocket=text)
    raise ValueError(
        f"{_safe(url)!r}: unknown scheme {scheme!r}"
        " (use mqcore://, mqcores://, unix://, ws:// or wss://)"
    )


def parse_urls(urls: str | Address | Sequence[str | Address]) -> list[Address]:
    """Read one or more addresses: a list, or a string of them separated by commas.

    Raise :class:`ValueError` for an empty list, an empty entry or a bad address.
    """
    if isinstance(urls, Address):
        return [urls]
    entries = urls.split(",") if isinstance(urls, str) else list(urls)
    if not entries:
        raise ValueError("no server address given")
    addresses = []
    for entry in entries:
        if isinstance(entry, Address):
            addresses.append(entry)
        elif not entry.strip():
            raise ValueError(f"empty server address in {_safe(str(urls))!r}")
        else:
            addresses.append(parse_url(entry))
    return addresses


def _safe(url: str) -> str:
    """``url`` without its credentials, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    return f"{scheme}{sep}***@{hostport}" if at and "/" not in userinfo else url


def _unix(path: str, url: str) -> Address:
    path = urllib.parse.unquote(path)
    if not path:
        raise ValueError(f"{url!r}: a unix:// address needs a path")
    return Address(path=path)


def _tcp(hostport: str, url: str) -> Address:
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"{url!r}: bad IPv6 address")
        port_text = after[1:] if after else ""
    elif hostport.count(":") > 1:
        raise ValueError(f"{url!r}: put an IPv6 address in brackets, e.g. [::1]:7000")
    else:
        host, _, port_text = hostport.partition(":")
    if not port_text:
        port = DEFAULT_PORT
    elif not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{url!r}: the port must be a number from 1 to 65535")
    else:
        port = int(port_text)
    return Address(host=host or DEFAULT_HOST, port=port)

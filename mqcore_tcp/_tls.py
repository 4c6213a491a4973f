"""TLS for listeners: ``mqcores://HOST:PORT``, its context, its handshake and who the peer is.

Rules (and where mqcore chooses):

- **Modern only.** TLS 1.2 is the oldest version offered; the cipher list is
  the ``ssl`` module's default for servers (no RC4, 3DES or export suites).
- **Fail at start, in one line.** :func:`server_context` reads the
  certificate chain and key at once; a missing or unreadable file, or a key
  that does not belong to the certificate, raises :class:`TLSConfigError`
  naming the file and the reason, which the command line prints as its one
  error line. Nothing is bound before it succeeds.
- **Mutual TLS** (``client_ca``): every client must present a certificate
  signed by that CA, or the handshake fails. The verified certificate's
  subject common name is the connection's *identity* (:func:`peer_identity`),
  which ``--auth`` may name as a user (see ``_auth``).
- **Bounded handshakes.** A handshake not finished within
  :data:`HANDSHAKE_TIMEOUT` closes the connection; a peer that speaks
  plaintext (or garbage) to a TLS port fails the handshake at its first bytes.
  Neither is registered with the hub, so neither counts against
  ``--max-connections`` nor reaches the broker; failures are logged at debug
  level only (a port scanner must not flood the log).
- ``https://`` is the HTTP listener (console, API, metrics, ``/ws``) with
  the same context, handshake bound and identity; ``wss://`` clients connect
  there.
- ``unix://`` listeners stay plaintext: the socket file's permissions guard them.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TLS_SCHEMES",
    "TLSConfigError",
    "handshake",
    "peer_identity",
    "server_context",
]

log = logging.getLogger("mqcore_tcp")

#: URL schemes that serve TLS.
TLS_SCHEMES: Final = frozenset({"mqcores", "tls", "https"})

#: How long a TLS handshake may take before the connection is closed.
HANDSHAKE_TIMEOUT: Final = 10.0


class TLSConfigError(ValueError):
    """A TLS certificate, key or CA file cannot be used; the message says which and why."""


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key``; with ``client_ca``, mutual TLS.

    Raises :class:`TLSConfigError` with a one-line reason.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    _readable(cert, "--tls-cert")
    _readable(key, "--tls-key")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"--tls-cert {cert} / --tls-key {key}: not a certificate and its matching "
            f"private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise TLSConfigError(f"--tls-cert {cert}: {exc.strerror or exc}") from None
    if client_ca is not None:
        _readable(client_ca, "--tls-client-ca")
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise TLSConfigError(
                f"--tls-client-ca {client_ca}: not a CA certificate ({reason})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _readable(path: str, option: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise TLSConfigError(f"{option} {path}: {exc.strerror or exc}") from None


def peer_identity(cert: object) -> str | None:
    """The subject common name of a verified peer certificate (``getpeercert()``), or None."""
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName" and isinstance(value, str):
                return value
    return None


async def handshake(
    stream: anyio.abc.ByteStream, context: ssl.SSLContext | None, peer: str
) -> tuple[anyio.abc.ByteStream, str | None] | None:
    """The server side of a TLS handshake on ``stream``: the TLS stream and the peer's identity.

    None (``stream`` closed, logged at debug level) if the peer does not
    complete a handshake within :data:`HANDSHAKE_TIMEOUT`. Without a
    ``context`` (a plaintext listener): ``stream`` itself, and no identity.
    """
    if context is None:
        return stream, None
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            wrapped = await TLSStream.wrap(
                stream, server_side=True, ssl_context=context, standard_compatible=False
            )
    except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        log.debug("%s: TLS handshake failed: %r", peer, exc)
        await anyio.aclose_forcefully(stream)
        return None
    return wrapped, peer_identity(wrapped.extra(TLSAttribute.peer_certificate))

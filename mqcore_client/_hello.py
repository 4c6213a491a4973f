"""What a connection says first and keeps saying: the ``hello`` command, and heartbeats.

- Every connection starts with a ``hello``: credentials (``token``, or
  ``user`` and ``password``) and a ``heartbeat`` request only when given,
  so a plain client's ``hello`` stays ``{"command": "hello"}``.
- A ``hello`` refused with ``Authentication failed``/``required`` is an
  :class:`AuthenticationError` (never retried); ``Too many connections`` a
  :class:`ConnectError` (retried with backoff when reconnecting).
- Heartbeats, once the server agreed on an interval: an empty line every
  quarter interval (the server only notes it heard us; no reply), and the
  connection ends once nothing was read for the whole interval: a dead
  server is noticed within it, and ``reconnect`` takes over.
"""

from __future__ import annotations

from typing import Final

import anyio
import msgspec

from mqcore import Hello, Reason

from ._connection import Connection
from ._errors import AuthenticationError, ConnectError, ConnectionLostError
from ._session import Session

__all__ = ["heartbeat", "hello_command", "refusal_of"]

#: Replies to ``hello`` that mean the credentials are refused or missing.
_AUTH_REASONS: Final = frozenset({Reason.AUTH_FAILED, Reason.AUTH_REQUIRED})

#: How often (per agreed interval) a heartbeat is written and the server's silence checked.
BEATS_PER_INTERVAL: Final = 4


def hello_command(
    *, token: str | None, user: str | None, password: str | None, heartbeat: float | None
) -> Hello:
    """The ``hello`` every connection starts with; ValueError for contradictory options."""
    if token is not None and user is not None:
        raise ValueError("give a token or a user and password, not both")
    if (user is None) != (password is None):
        raise ValueError("give both user and password")
    if heartbeat is not None and not heartbeat > 0:
        raise ValueError("heartbeat must be a positive number of seconds")
    unset = msgspec.UNSET
    return Hello(
        user=unset if user is None else user,
        password=unset if password is None else password,
        token=unset if token is None else token,
        heartbeat=unset if heartbeat is None else heartbeat,
    )


async def heartbeat(session: Session, conn: Connection, interval: float) -> None:
    """Beat every quarter ``interval``; end ``conn`` once nothing was read for ``interval``."""
    period = interval / BEATS_PER_INTERVAL
    reads, quiet = conn.reads, 0
    while conn.error is None:
        await anyio.sleep(period)
        session.out += b"\n"
        conn.kick()
        if conn.reads != reads:
            reads, quiet = conn.reads, 0
            continue
        quiet += 1
        if quiet >= BEATS_PER_INTERVAL:
            conn.end(
                ConnectionLostError(
                    f"{conn.address} sent nothing for {interval} s (heartbeat interval)"
                )
            )


def refusal_of(reason: str, address: object) -> ConnectionLostError | None:
    """The error a ``hello`` refused with ``reason`` means, or None (a reference server)."""
    if reason in _AUTH_REASONS:
        return AuthenticationError(reason, address)
    if reason == Reason.TOO_MANY_CONNECTIONS:
        return ConnectError(f"{address} refused the connection: {reason}")
    return None

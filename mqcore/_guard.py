"""The broker's half of authentication, permissions and heartbeats (rules: :mod:`mqcore._auth`).

:class:`Guarded` sits between :class:`~mqcore._commands.Commands` and
:class:`~mqcore.Broker`: it answers ``hello`` (credentials, heartbeats),
refuses what a connection may not do, holds a pending connection's input,
and takes the transport's answers (:meth:`Guarded.auth_result`,
:meth:`Guarded.set_permissions`). Without ``auth=True`` the only per-read
cost is one boolean test; with it, one dict lookup per read and one per
``send`` (the :class:`~mqcore._auth.Grant` cache).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ._auth import Credentials, Grant, HelloRequest, Pending, Permissions, agreed_heartbeat
from ._commands import Commands
from ._connection import Connection, ConnectionId
from ._protocol import (
    PROTOCOL_FEATURES,
    REFUSED,
    Command,
    Hello,
    Reason,
    Send,
    Subscribe,
    hello_reply,
)

__all__ = ["Guarded"]


SendFn = Callable[[Connection, Send, bytes], None]


class Guarded(Commands):
    """Authentication and permissions for :class:`~mqcore.Broker` (which sets the state up)."""

    _connections: dict[ConnectionId, Connection]
    _grants: dict[ConnectionId, Grant]
    _pending: dict[ConnectionId, Pending]
    _hellos: list[HelloRequest]

    @property
    def _line_limit(self) -> int:
        raise NotImplementedError

    # Provided by the Broker.
    def _line(self, conn: Connection, line: bytes) -> None:
        raise NotImplementedError

    def _end(self, conn: Connection) -> None:
        raise NotImplementedError

    def _hello_bytes(self, heartbeat: float | None = None) -> bytes | None:
        raise NotImplementedError

    def receive_data(self, cid: ConnectionId, data: bytes) -> None:
        raise NotImplementedError

    # -- the transport's side ----------------------------------------------------

    def auth_result(self, cid: ConnectionId, permissions: Permissions | None) -> None:
        """Answer a pending connection's credentials: its permissions, or ``None`` (refused).

        Granted: the ``hello`` reply is written, then the input held since is
        read. Refused: ``Authentication failed``, then the connection is
        closed (listed in :attr:`~mqcore.Output.close`). Ignored for a
        connection that is not pending (gone, or answered already).
        """
        pending = self._pending.pop(cid, None)
        conn = self._connections.get(cid)
        if pending is None or conn is None or conn.closing:
            return
        if permissions is None:
            self._fail(conn, REFUSED[Reason.AUTH_FAILED])
            self._end(conn)
            return
        self._grants[cid] = Grant(permissions)
        reply = self._hello_bytes(pending.heartbeat)
        assert reply is not None  # pending only after a hello the broker answers
        self._emit(conn, reply)
        if pending.held:
            self.receive_data(cid, bytes(pending.held))

    def set_permissions(self, cid: ConnectionId, permissions: Permissions | None) -> None:
        """Grant ``cid`` new permissions (a client certificate, a reloaded file), or end it.

        ``None`` closes the connection (its user is gone). New permissions
        replace the cached answers, and subscriptions they no longer allow,
        exact and pattern ones, are dropped at once.
        """
        conn = self._connections.get(cid)
        if conn is None or conn.closing:
            return
        if permissions is None:
            self._grants.pop(cid, None)
            self._end(conn)
            return
        grant = self._grants[cid] = Grant(permissions)
        for name in [name for name in conn.topics if not grant.may_subscribe(name)]:
            topic = self._topics.get(name)
            if topic is not None:
                self._table.unsubscribe(topic, conn)
        # Pattern subscriptions too: `orders.*` is checked as the pattern it is
        # (may_subscribe covers patterns), so a user restricted to `orders.eu`
        # no longer receives `orders.us` through it.
        patterns = self._table.patterns
        for pattern in sorted(patterns.by_connection.get(conn, ())):
            if not grant.may_subscribe(pattern):
                patterns.unsubscribe(conn, pattern)

    def authenticated(self, cid: ConnectionId) -> bool:
        """Whether ``cid`` may act (always true without ``auth``)."""
        return not self._auth_required or cid in self._grants

    def holds_partial_line(self, cid: ConnectionId) -> bool:
        """Whether ``cid`` has sent part of a line and not its end (the transport times it)."""
        conn = self._connections.get(cid)
        return conn is not None and not conn.closing and bool(conn.buffer or conn.discarding)

    def _forget_guard(self, cid: ConnectionId) -> None:
        self._grants.pop(cid, None)
        self._pending.pop(cid, None)

    # -- the lines -------------------------------------------------------------------

    def _checked_send(self, conn: Connection, send: SendFn) -> SendFn | None:
        """``send``, with the connection's permission check in front; None if it may not act."""
        grant = self._grants.get(conn.id)
        if grant is None:
            return None
        may_publish = grant.may_publish
        fail = self._fail

        def checked(conn: Connection, command: Send, line: bytes) -> None:
            if may_publish(command.topic):
                send(conn, command, line)
            else:
                fail(conn, REFUSED[Reason.PERMISSION_DENIED])

        return checked

    def _send_denial(self, conn: Connection, topic: str) -> bytes | None:
        """Why ``conn`` may not send to ``topic`` (auth only), or None."""
        grant = self._grants.get(conn.id)
        if grant is None:
            return REFUSED[Reason.AUTH_REQUIRED]
        return None if grant.may_publish(topic) else REFUSED[Reason.PERMISSION_DENIED]

    def _receive_guarded(self, conn: Connection, data: bytes) -> None:
        """Input of a connection that has not authenticated: line by line, until it is pending."""
        pending = self._pending.get(conn.id)
        if pending is not None:
            self._hold(conn, pending, data)
            return
        limit = self._line_limit
        lines, tail, first_too_long = conn.split(data, limit)
        if first_too_long:
            self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])
        for i, line in enumerate(lines):
            if len(line) > limit:
                self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])
                continue
            self._line(conn, line)
            if conn.closing:
                return
            pending = self._pending.get(conn.id)
            if pending is not None:
                # The rest waits for the verdict, exactly as it came.
                self._hold(conn, pending, b"\n".join([*lines[i + 1 :], tail]))
                return
        if conn.keep(tail, limit):
            self._fail(conn, REFUSED[Reason.LINE_TOO_LONG])

    def _hold(self, conn: Connection, pending: Pending, data: bytes) -> None:
        held = pending.held
        if len(held) + len(data) > self._line_limit:
            # More than a line's worth before the verdict: not a client that waits.
            self._pending.pop(conn.id, None)
            self._end(conn)
            return
        held += data

    def _refused(self, conn: Connection, command: Command) -> bool:
        """Answer (and return True) a command ``conn`` may not give; ``auth`` only."""
        if type(command) is Hello:
            return False
        grant = self._grants.get(conn.id)
        if grant is None:
            self._fail(conn, REFUSED[Reason.AUTH_REQUIRED])
            return True
        if type(command) is Subscribe and not grant.may_subscribe(command.topic):
            self._fail(conn, REFUSED[Reason.PERMISSION_DENIED])
            return True
        return False

    def _greet(self, conn: Connection, command: Hello) -> None:
        """Answer ``hello``: at once, or (credentials to check) once the transport answers."""
        heartbeat = (
            None if command.heartbeat is msgspec.UNSET else agreed_heartbeat(command.heartbeat)
        )
        credentials = _credentials(command)
        if credentials is not None and self._auth_required and conn.id not in self._grants:
            self._pending[conn.id] = Pending(heartbeat)
            self._hellos.append(HelloRequest(conn.id, credentials, heartbeat))
            return
        if heartbeat is None:
            reply = self._hello
        else:
            self._hellos.append(HelloRequest(conn.id, None, heartbeat))
            reply = self._hello_bytes(heartbeat)
        assert reply is not None  # _command calls us only when the broker answers hello
        self._emit(conn, reply)


def _credentials(command: Hello) -> Credentials | None:
    user = None if command.user is msgspec.UNSET else command.user
    password = None if command.password is msgspec.UNSET else command.password
    token = None if command.token is msgspec.UNSET else command.token
    if user is None and password is None and token is None:
        return None
    return Credentials(user, password, token)


def hello_for(
    epoch: str | None,
    *,
    cache_size: int,
    max_line_bytes: int,
    durable: bool,
    storage_available: bool,
    auth: bool,
    heartbeat: float | None,
    features: tuple[str, ...] = PROTOCOL_FEATURES,
) -> bytes | None:
    """The ``hello`` reply for a broker's settings (None: it does not answer ``hello``)."""
    if epoch is None:
        return None
    return hello_reply(
        epoch,
        cache_size=cache_size,
        max_line_bytes=max_line_bytes,
        durable=durable,
        storage_available=storage_available,
        auth=auth,
        heartbeat=heartbeat,
        features=features,
    )

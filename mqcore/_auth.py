"""Who may do what on a connection: permissions, per-connection grants, and the hello seam.

The core checks permissions; it never checks secrets (that needs a slow
hash, i.e. time and a thread, which the core does not have). The seam:

1. A ``hello`` carrying credentials on a broker built with ``auth=True``
   makes the connection *pending*: the broker lists a :class:`HelloRequest`
   in :attr:`mqcore.Output.hellos` and holds every byte the connection sends
   after that line (up to ``max_line_bytes``; past it the connection is
   closed), unread, so replies keep the order of the lines.
2. The transport verifies the credentials off the event loop and answers
   :meth:`mqcore.Broker.auth_result` with the user's :class:`Permissions`
   (the ``hello`` reply follows, then the held input is read) or ``None``
   (``Authentication failed``, then the connection closes: the transport
   delays that answer, so guessing is slow).

Rules, with ``auth=True``:

- Before a successful ``hello``, every command but ``hello`` is answered
  ``Authentication required``; ``hello`` without credentials is answered as
  usual (its reply says ``"auth": true``), so a client can learn what the
  server wants. Credentials in a ``hello`` on an authenticated connection
  are ignored: a connection authenticates once.
- A ``send`` outside ``publish`` (or inside ``deny_publish``) is answered
  ``Permission denied``, and nothing is delivered or cached; likewise a
  ``subscribe`` outside ``subscribe`` / inside ``deny_subscribe``. Deny
  wins. ``unsubscribe`` is always allowed.
- Patterns are :mod:`mqcore._subjects`'. A subscription to a pattern is
  allowed only if an allow pattern *covers* it (every topic it can match is
  allowed) and no deny pattern *overlaps* it (no topic matched by both).
- Each connection caches its answers per topic (:class:`Grant`), bounded by
  :data:`GRANT_CACHE_SIZE` entries per direction: a check on the hot path is
  one dict lookup. New permissions (a reloaded auth file) replace the grant,
  and with it the caches; the broker then drops subscriptions the
  connection may no longer hold.

Heartbeats (opt-in, any broker that answers ``hello``): ``"heartbeat": S``
in a ``hello`` asks for one; the broker agrees on S clamped to
[:data:`MIN_HEARTBEAT`, :data:`MAX_HEARTBEAT`], says so in its reply, and
lists a :class:`HelloRequest` so the transport keeps time (it has the clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ._connection import ConnectionId
from ._subjects import MULTI, SINGLE, covers

__all__ = [
    "GRANT_CACHE_SIZE",
    "MAX_HEARTBEAT",
    "MIN_HEARTBEAT",
    "Credentials",
    "Grant",
    "HelloRequest",
    "Permissions",
    "agreed_heartbeat",
    "covers",
    "overlaps",
]

#: Topics whose answer one connection remembers, per direction, before forgetting them all.
GRANT_CACHE_SIZE: Final = 4096
#: The bounds of an agreed heartbeat interval, in seconds.
MIN_HEARTBEAT: Final = 1.0
MAX_HEARTBEAT: Final = 3600.0


def agreed_heartbeat(asked: float) -> float:
    """The interval the broker agrees to for a ``hello`` that asks for ``asked`` seconds."""
    return min(max(float(asked), MIN_HEARTBEAT), MAX_HEARTBEAT)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a ``hello`` presented: ``token``, or ``user`` and ``password``. Never shown in reprs."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HelloRequest:
    """A ``hello`` the transport must act on (see the module docstring).

    ``credentials`` are set when the connection is pending: the transport must
    answer :meth:`~mqcore.Broker.auth_result`. ``heartbeat`` is the agreed
    interval, if the client asked for one.
    """

    cid: ConnectionId
    credentials: Credentials | None
    heartbeat: float | None


def overlaps(deny: str, wanted: str) -> bool:
    """Whether some topic is matched by both ``deny`` and ``wanted`` (topics or patterns)."""
    if deny == wanted:
        return True
    a = deny.split(".")
    b = wanted.split(".")
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == MULTI or y == MULTI:
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and SINGLE not in (x, y):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Permissions:
    """One user's pattern lists; deny wins over allow, and nothing is allowed unless listed."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()

    def may_publish(self, topic: str) -> bool:
        """Whether ``send`` to ``topic`` is allowed (uncached: see :class:`Grant`)."""
        return _allowed(topic, self.publish, self.deny_publish)

    def may_subscribe(self, topic: str) -> bool:
        """Whether ``subscribe`` to ``topic`` (a topic or a pattern) is allowed (uncached)."""
        return _allowed(topic, self.subscribe, self.deny_subscribe)


def _allowed(topic: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> bool:
    if any(overlaps(pattern, topic) for pattern in deny):
        return False
    return any(covers(pattern, topic) for pattern in allow)


class Grant:
    """An authenticated connection's permissions, with its answers cached per topic."""

    __slots__ = ("permissions", "published", "subscribed")

    def __init__(self, permissions: Permissions) -> None:
        self.permissions = permissions
        self.published: dict[str, bool] = {}
        self.subscribed: dict[str, bool] = {}

    def may_publish(self, topic: str) -> bool:
        """Cached :meth:`Permissions.may_publish`: the hot path's one dict lookup."""
        known = self.published.get(topic)
        if known is None:
            known = _remember(self.published, topic, self.permissions.may_publish(topic))
        return known

    def may_subscribe(self, topic: str) -> bool:
        """Cached :meth:`Permissions.may_subscribe`."""
        known = self.subscribed.get(topic)
        if known is None:
            known = _remember(self.subscribed, topic, self.permissions.may_subscribe(topic))
        return known


def _remember(cache: dict[str, bool], topic: str, answer: bool) -> bool:
    """Cache ``answer`` for ``topic``, forgetting every answer once the cache is full."""
    if len(cache) >= GRANT_CACHE_SIZE:
        cache.clear()
    cache[topic] = answer
    return answer


class Pending:
    """A connection whose credentials are being checked: its agreed heartbeat and held input."""

    __slots__ = ("heartbeat", "held")

    def __init__(self, heartbeat: float | None) -> None:
        self.heartbeat = heartbeat
        self.held = bytearray()

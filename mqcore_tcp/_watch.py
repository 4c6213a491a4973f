"""The hub's clock: line and authentication timeouts, heartbeats, and checking credentials.

The core has no clock, so the hub keeps time for it, coarsely: one sweep
every :data:`TICK` seconds (:meth:`Watch.run`) counts *ticks*, and every
deadline is a whole number of ticks. The hot path never reads a clock:
per read it stores the current tick (``heard``) and, only while the
connection is known to hold a partial line, looks for a newline.

- **Line timeout** (slowloris): a sweep that finds a connection holding a
  partial line (:meth:`mqcore.Broker.holds_partial_line`) notes the tick;
  a read with a newline clears it; a partial line noted ``line_timeout``
  ago closes the connection. So it closes between ``line_timeout`` and
  ``line_timeout + TICK`` after the line began. On a WebSocket a line is
  a frame: a connection whose ``holds_partial_frame`` is true is timed alike.
- **Authentication timeout** (``--auth``): a connection not authenticated
  ``auth_timeout`` after it was accepted is closed.
- **Heartbeats** (opt-in in ``hello``): the server writes an empty line
  (``\\r\\n``, which clients skip) when it wrote nothing for half the agreed
  interval, and closes a connection it heard nothing from for the whole
  interval. The client sends an empty line likewise (ignored by the core).
- **Credentials** from ``hello`` are checked in a worker thread (see
  ``_auth``); a failure is answered after :data:`FAILED_AUTH_DELAY`, so a
  guesser gets one try per connection per delay.

Closing for a timeout drops the connection (what it is owed is not sent:
a peer that stalls is not waited for) and logs one line, never a secret.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
import anyio.to_thread

from mqcore import ConnectionId, Credentials, HelloRequest

from ._auth import MAX_CONCURRENT, AuthFile

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["FAILED_AUTH_DELAY", "TICK", "Watch"]

log = logging.getLogger("mqcore_tcp")

#: The resolution of every timeout, in seconds.
TICK: Final = 0.5
#: How long a wrong password or token waits for its answer (and the close).
FAILED_AUTH_DELAY: Final = 1.0
#: The heartbeat line: an empty line, which every mqcore client skips.
HEARTBEAT: Final = b"\r\n"


def ticks(seconds: float) -> int:
    """``seconds`` as a whole number of ticks (at least one)."""
    return max(1, math.ceil(seconds / TICK))


class Watch:
    """Timeouts, heartbeats and credential checks for one hub's connections."""

    def __init__(
        self, hub: Hub, *, line_timeout: float, auth_timeout: float, auth: AuthFile | None
    ) -> None:
        self.hub = hub
        self.now = 0
        self.line_ticks = ticks(line_timeout)
        self.auth_ticks = ticks(auth_timeout)
        self.auth = auth
        self._limiter = anyio.CapacityLimiter(MAX_CONCURRENT)
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self) -> None:
        """Sweep every :data:`TICK` seconds and run credential checks, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    await anyio.sleep(TICK)
                    self.now += 1
                    self.sweep()
            finally:
                self._tg = None

    def sweep(self) -> None:
        """Close connections past a deadline; write heartbeats that are due."""
        hub = self.hub
        broker = hub.broker
        now = self.now
        auth = self.auth is not None
        for cid, link in list(hub.links.items()):
            if link.partial_since < 0:
                # A WebSocket's line is a frame: half a frame is a partial line too.
                if broker.holds_partial_line(cid) or getattr(
                    link.conn, "holds_partial_frame", False
                ):
                    link.partial_since = now
            elif now - link.partial_since >= self.line_ticks:
                hub.drop(cid, link, "a line was not finished within the line timeout")
                continue
            if (
                auth
                and link.user is None
                and now - link.born >= self.auth_ticks
                and not broker.authenticated(cid)
            ):
                hub.drop(cid, link, "did not authenticate within the authentication timeout")
                continue
            interval = link.heartbeat
            if interval:
                if now - link.heard >= interval:
                    hub.drop(cid, link, "silent for longer than its heartbeat interval")
                    continue
                if now - link.beat >= max(1, interval // 2):
                    link.beat = now
                    hub.write(cid, link, [HEARTBEAT])

    def hellos(self, requests: list[HelloRequest]) -> None:
        """Act on the ``hello`` commands of one output: note heartbeats, check credentials."""
        links = self.hub.links
        for request in requests:
            link = links.get(request.cid)
            if link is None:
                continue
            if request.heartbeat is not None:
                link.heartbeat = ticks(request.heartbeat)
                link.beat = self.now
            if request.credentials is not None:
                if self._tg is None or self.auth is None:
                    self.hub.broker.auth_result(request.cid, None)
                else:
                    self._tg.start_soon(self._verify, request.cid, request.credentials)

    async def _verify(self, cid: ConnectionId, credentials: Credentials) -> None:
        auth = self.auth
        assert auth is not None
        user = await anyio.to_thread.run_sync(auth.authenticate, credentials, limiter=self._limiter)
        hub = self.hub
        link = hub.links.get(cid)
        if link is None:
            return
        if user is None:
            log.info("connection %d from %s: authentication failed", cid, link.peer)
            await anyio.sleep(FAILED_AUTH_DELAY)
            hub.broker.auth_result(cid, None)
        else:
            # The file may have been reloaded while the hash was computed.
            permissions = None if self.auth is None else self.auth.permissions_of(user)
            link.user = user if permissions is not None else None
            hub.broker.auth_result(cid, permissions)
            log.debug("connection %d from %s: authenticated as %s", cid, link.peer, user)
        hub.flush()

    def identify(self, cid: ConnectionId, identity: str | None) -> None:
        """A verified client certificate names ``identity``: it stands for that user, if any."""
        if self.auth is None or identity is None:
            return
        permissions = self.auth.permissions_of(identity)
        link = self.hub.links.get(cid)
        if permissions is not None and link is not None:
            link.user = identity
            self.hub.broker.set_permissions(cid, permissions)

    def reload(self, auth: AuthFile) -> None:
        """Use ``auth`` from now on, for new connections and authenticated ones alike."""
        self.auth = auth
        hub = self.hub
        for cid, link in list(hub.links.items()):
            if link.user is not None:
                permissions = auth.permissions_of(link.user)
                if permissions is None:
                    log.info("connection %d from %s: its user was removed", cid, link.peer)
                    link.user = None
                hub.broker.set_permissions(cid, permissions)
        hub.flush()

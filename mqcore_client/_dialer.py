"""Which server a client connects to next, and how long it waits before trying.

Theory of operation:

- **Addresses.** A client has one or more server addresses, in the order
  given (several nodes of one cluster, or a server and its standby). Each
  has its own ``hello`` (credentials may differ per URL).
- **The first connection** tries each address once, in order, with no
  pause: the first to complete the handshake wins. If none does,
  :func:`~mqcore_client.connect` raises: with one address its error, as
  ever; with several a :class:`ConnectError` naming each failure (a
  :class:`ConnectTimeoutError` if every one timed out). A refused login
  ends the pass at once: the same credentials would be refused again.
- **Reconnecting** (``reconnect=True``) starts at the address after the one
  that failed, round-robin, so a dead node is tried last. Every attempt
  waits first (full jitter, between ``delay/2`` and ``delay``); ``delay``
  doubles, up to ``reconnect_max_delay``, after each full round of failed
  attempts, and is reset once a connection is established. With one
  address that is exactly the backoff of a single-server client.
- **One connection** is the client's (``serve``), after :func:`handshake`
  (a ``hello`` unanswered within ``connect_timeout`` ends it).
- **Resuming** is the session's business, whichever server the client lands
  on: each subscription resubscribes after its ``last_seen``, and a changed
  ``epoch`` is noticed (see ``_session``), so failover adds no rule of its own.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc

from mqcore import Hello, HelloReply

from ._connection import Connection, open_stream
from ._errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    ProtocolError,
    ServerError,
)
from ._hello import hello_command, refusal_of
from ._session import Request, Session
from ._url import Address

__all__ = ["Dialer", "handshake"]

#: Failures an error names one by one (a long list of addresses gives a short message).
_NAMED_FAILURES = 5

#: Runs one connection on a stream (``first``: no connection was ever up);
#: whether it got past the handshake, and why it ended.
Serve = Callable[[anyio.abc.ByteStream, bool], Awaitable[tuple[bool, ConnectionLostError]]]


class Dialer:
    """The addresses of a client's servers, the one in use, and the backoff between attempts."""

    def __init__(
        self,
        addresses: Address | Sequence[Address],
        *,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None,
        reconnect_delay: float,
        reconnect_max_delay: float,
        token: str | None,
        user: str | None,
        password: str | None,
        heartbeat: float | None,
    ) -> None:
        self.addresses = [addresses] if isinstance(addresses, Address) else list(addresses)
        if not self.addresses:
            raise ValueError("no server address given")
        self._hellos = [
            hello_command(
                token=token,
                user=user if user is not None else address.user,
                password=password if password is not None else address.password,
                heartbeat=heartbeat,
            )
            for address in self.addresses
        ]
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._base_delay = reconnect_delay
        self._max_delay = reconnect_max_delay
        self._delay = reconnect_delay
        self._current = 0
        #: Failed attempts since the last established connection.
        self._failed = 0
        #: The first pass's failures, for the error that names them all.
        self._first_errors: list[tuple[Address, ConnectionLostError]] = []

    @property
    def address(self) -> Address:
        """The address being tried, or in use."""
        return self.addresses[self._current]

    @property
    def hello(self) -> Hello:
        """The ``hello`` for :attr:`address`."""
        return self._hellos[self._current]

    async def run(
        self,
        serve: Serve,
        give_up: Callable[[ConnectionLostError], None],
        may_reconnect: Callable[[], bool],
    ) -> None:
        """Connect and :func:`serve` connections, one after another, until one must not follow.

        ``give_up(error)`` ends the client: after a refused login, a failed
        first pass, or a lost connection when ``may_reconnect()`` says no.
        """
        first = True
        while True:
            error: ConnectionLostError
            try:
                stream = await self.open()
            except ConnectionLostError as exc:
                error = exc
            else:
                established, error = await serve(stream, first)
                if established:
                    first = False
                    self.established()
            if isinstance(error, AuthenticationError):
                give_up(error)  # the same credentials would be refused again
                return
            if first:
                final = self.first_pass_failed(error)
                if final is None:
                    continue  # the next address of the first pass, at once
                give_up(final)
                return
            if not may_reconnect():
                give_up(error)
                return
            await self.next_attempt()

    async def open(self) -> anyio.abc.ByteStream:
        """Connect to :attr:`address` within ``connect_timeout``; raise ConnectionLostError."""
        address = self.address
        try:
            with anyio.fail_after(self._connect_timeout):
                return await open_stream(address, self._ssl_context)
        except TimeoutError:
            raise ConnectTimeoutError(
                f"timed out connecting to {address} after {self._connect_timeout} s"
            ) from None

    def established(self) -> None:
        """A connection is up: the next loss starts a fresh backoff."""
        self._delay = self._base_delay
        self._failed = 0
        self._first_errors.clear()

    def first_pass_failed(self, error: ConnectionLostError) -> ConnectionLostError | None:
        """The first connection failed on :attr:`address`: move on, or the error to raise.

        ``None`` while addresses of the first pass are left to try (it moved
        to the next); else the error :func:`connect` raises.
        """
        self._first_errors.append((self.address, error))
        if len(self._first_errors) < len(self.addresses):
            self._current += 1
            return None
        if len(self._first_errors) == 1:
            return error
        named = self._first_errors[:_NAMED_FAILURES]
        why = "; ".join(str(failure) for _, failure in named)
        if len(self._first_errors) > len(named):
            why += f"; and {len(self._first_errors) - len(named)} more"
        every_timeout = all(isinstance(e, ConnectTimeoutError) for _, e in self._first_errors)
        kind = ConnectTimeoutError if every_timeout else ConnectError
        combined = kind(f"no server of {len(self.addresses)} answered: {why}")
        combined.__cause__ = error
        return combined

    async def next_attempt(self) -> None:
        """After a failed or lost connection: move to the next address, after a pause."""
        self._current = (self._current + 1) % len(self.addresses)
        # Full jitter, so that many clients of one restarted server spread out.
        await anyio.sleep(random.uniform(self._delay / 2, self._delay))
        self._failed += 1
        if self._failed % len(self.addresses) == 0:
            self._delay = min(self._delay * 2, self._max_delay)


async def handshake(
    session: Session, conn: Connection, hello: Request, address: Address, within: float
) -> HelloReply | None:
    """Wait for ``hello``'s reply: the server's description, or ``None`` for a plain one.

    ``None`` too when the connection ended meanwhile (``conn.error`` says why:
    no reply within ``within`` seconds, refused credentials, not the protocol).
    """
    if not hello.done:
        done = anyio.Event()
        hello.notify = done.set
        with anyio.move_on_after(within):
            await done.wait()
    if not hello.done:
        conn.end(ConnectTimeoutError(f"{address} did not answer hello within {within} s"))
        return None
    if isinstance(hello.error, ConnectionLostError):
        return None  # conn.error says why.
    if isinstance(hello.error, ServerError):
        refusal = refusal_of(hello.error.reason, address)
        if refusal is not None:
            conn.end(refusal)
            # The server's reason, not how the stream then ended (it closes right after).
            conn.error = refusal
            return None
    try:
        return session.hello_reply(hello)
    except ProtocolError as exc:
        conn.end(exc)
        return None

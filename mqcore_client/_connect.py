"""``connect()``: build a :class:`Client` for an address, run it for the ``async with`` block.

The client's task runs in a task group owned by the block; the first
connection's outcome is awaited before the block's body runs, and every
error is raised outside the task group (never as an ``ExceptionGroup``).
Leaving the block flushes (bounded by ``timeout``), then closes.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial

import anyio

from ._client import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_TIMEOUT,
    Client,
)
from ._errors import ConnectionLostError
from ._url import DEFAULT_HOST, DEFAULT_PORT, Address, parse_urls

__all__ = ["connect", "resolve"]


def connect(
    host: str | Address | Sequence[str | Address] = DEFAULT_HOST,
    port: int | None = None,
    *,
    connect_timeout: float = 10.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    reconnect: bool = False,
    reconnect_delay: float = 0.1,
    reconnect_max_delay: float = 5.0,
    offline_timeout: float | None = 10.0,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    max_queued: int = DEFAULT_MAX_QUEUED,
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    on_disconnect: Callable[[ConnectionLostError], object] | None = None,
    on_reconnect: Callable[[], object] | None = None,
    ssl: ssl.SSLContext | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    heartbeat: float | None = None,
) -> AbstractAsyncContextManager[Client]:
    """Connect to a server: ``async with connect(host, port) as client: ...``.

    ``host`` may also be a URL: ``connect("mqcore://host:7000")``,
    ``connect("unix:///run/mq.sock")`` (then give no ``port``), or several
    servers: a list of URLs or one string of them separated by commas
    (``connect(["mqcore://a:7000", "mqcore://b:7001"], reconnect=True)``).
    The first connection tries them in order; a reconnection tries the next
    after the one that failed, round-robin, and resumes every subscription
    there (see ``mqcore_client._dialer``).
    ``connect_timeout`` bounds the connect plus the ``hello`` handshake
    (:class:`ConnectTimeoutError`, both a :class:`ConnectError` and an
    :class:`MQTimeoutError`); a refused connection raises :class:`ConnectError`.
    ``timeout`` bounds every later wait on the server (:class:`MQTimeoutError`;
    ``None``: no bound), leaving the block included.

    With ``reconnect=True`` a lost connection (not the first attempt: that
    one raises, so a misconfigured address fails fast) is re-established with
    exponential backoff (``reconnect_delay`` doubling up to
    ``reconnect_max_delay``, with jitter) and every subscription resumes where
    it stopped; meanwhile ``send``, ``publish`` and ``subscribe`` wait up to
    ``offline_timeout`` seconds (``None``: forever, ``0``: not at all) for the
    connection, then raise :class:`ConnectionLostError`. Without it, a lost
    connection ends the client: later calls raise, and subscriptions end with
    :class:`ConnectionLostError` once their queued messages are consumed.

    ``on_disconnect(error)`` and ``on_reconnect()`` are called synchronously,
    from the client's task, when the connection drops and when it is back
    (its resubscriptions are then sent, ahead of any later command, but not
    yet answered). ``max_in_flight`` bounds the commands awaiting a reply
    before ``publish`` waits; ``max_queued`` and ``max_queued_bytes`` are the
    default bounds of a subscription's queue. Leaving the block normally
    waits for the replies to everything published (:meth:`Client.flush`,
    whose errors it raises).

    ``mqcores://`` and ``wss://`` URLs connect over TLS, verifying the server with ``ssl``
    (default: :func:`ssl.create_default_context`). ``token``, or ``user`` and
    ``password`` (also ``mqcore://user:password@host``), authenticate in
    every connection's ``hello``; refused credentials raise
    :class:`AuthenticationError`, never retried. ``heartbeat`` (seconds)
    asks for heartbeats: a server silent for that long is taken for dead
    (and, with ``reconnect``, reconnected to).
    """
    addresses = resolve(host, port)
    return _run_client(
        partial(
            Client,
            addresses,
            connect_timeout=connect_timeout,
            timeout=timeout,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            offline_timeout=offline_timeout,
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
            on_disconnect=on_disconnect,
            on_reconnect=on_reconnect,
            ssl_context=ssl,
            token=token,
            user=user,
            password=password,
            heartbeat=heartbeat,
        )
    )


def resolve(host: str | Address | Sequence[str | Address], port: int | None) -> list[Address]:
    """``connect``'s ``host`` and ``port`` as addresses: URLs, or a host and a port."""
    if isinstance(host, str) and not ("," in host or "://" in host or host.startswith("unix:")):
        return [Address(host=host, port=DEFAULT_PORT if port is None else port)]
    if port is not None:
        raise ValueError("give either URLs or a host and a port, not both")
    return parse_urls(host)


@asynccontextmanager
async def _run_client(make: Callable[[], Client]) -> AsyncIterator[Client]:
    # Built here, not in connect(): its events belong to the running event loop,
    # and a SyncClient calls connect() from a thread without one.
    client = make()
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.run)
        await client.started.wait()
        if client.start_error is None:
            try:
                yield client
                await client.flush()
            except Exception as exc:
                # Raised again below, outside the task group, which would
                # otherwise wrap it in an ExceptionGroup.
                error = exc
            finally:
                client.shut(ConnectionLostError("the client is closed"))
                tg.cancel_scope.cancel()
    if client.start_error is not None:
        raise client.start_error
    if error is not None:
        raise error

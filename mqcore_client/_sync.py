"""The blocking client: the async client, run by an event loop in a background thread.

Wrapping rather than re-implementing keeps one copy of the protocol handling
(reply matching, resume, the epoch rule) for both clients.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from types import TracebackType
from typing import Any, Generic, NoReturn, Protocol, TypeVar, overload

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from mqcore import Delivery, HelloReply

from ._client import Client
from ._connect import connect
from ._errors import MQError, MQTimeoutError
from ._protocol import Received
from ._subscription import Subscription
from ._url import DEFAULT_HOST, Address

__all__ = ["SyncClient", "SyncSubscription"]

T = TypeVar("T")


class _ExitsOnce:
    """Leaves, once, the context manager that ``__enter__`` stored in ``_entered``.

    Leaving again (e.g. :meth:`SyncClient.close` after the ``with`` block) does nothing.
    """

    _entered: AbstractContextManager[object] | None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entered, self._entered = self._entered, None
        if entered is not None:
            entered.__exit__(exc_type, exc, tb)


class _Wrapper(Protocol):
    def _async(self) -> object: ...


class _Forwarded(Generic[T]):
    """A read-only attribute of a blocking wrapper: the same-named one of the async object it
    wraps (``_async()``), documented by that one's docstring, so each is written once."""

    def __init__(self, doc: str | None) -> None:
        self.__doc__ = doc
        self._name = ""

    def __set_name__(self, owner: type[object], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, wrapper: None, owner: type[object]) -> _Forwarded[T]: ...
    @overload
    def __get__(self, wrapper: _Wrapper, owner: type[object]) -> T: ...
    def __get__(self, wrapper: _Wrapper | None, owner: type[object]) -> _Forwarded[T] | T:
        if wrapper is None:
            return self
        value: T = getattr(wrapper._async(), self._name)
        return value

    def __set__(self, wrapper: _Wrapper, value: NoReturn) -> NoReturn:
        raise AttributeError(f"{self._name} is read-only")


class SyncClient(_ExitsOnce):
    """A blocking client for scripts and REPLs: ``with SyncClient(host, port) as client:``.

    ``host`` may be a URL, or several (a list, or URLs separated by commas:
    see :func:`mqcore_client.connect`). Takes the same keyword options as
    :func:`mqcore_client.connect` (``connect_timeout``, ``timeout``,
    ``reconnect``, ``offline_timeout``, ...) and raises the same errors. It is
    safe to use from several threads.
    """

    def __init__(
        self,
        host: str | Address | Sequence[str | Address] = DEFAULT_HOST,
        port: int | None = None,
        **options: Any,
    ) -> None:
        self.host = host
        self.port = port
        self._options = options
        self._entered = None
        self._portal: BlockingPortal | None = None
        self._client: Client | None = None

    server = _Forwarded[HelloReply | None](Client.server.__doc__)
    epoch = _Forwarded[str | None](Client.epoch.__doc__)

    def __enter__(self) -> SyncClient:
        stack = ExitStack()
        try:
            self._portal = stack.enter_context(start_blocking_portal())
            self._client = stack.enter_context(
                self._portal.wrap_async_context_manager(
                    connect(self.host, self.port, **self._options)
                )
            )
        except BaseException:
            stack.close()
            raise
        self._entered = stack
        return self

    def close(self) -> None:
        """Flush what was published and disconnect (what leaving the ``with`` block does)."""
        self.__exit__(None, None, None)

    def send(self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True) -> None:
        """Send a message; return once the server has acknowledged it."""
        client = self._async()
        self._call(partial(client.send, topic, msg, delivery, cache))

    def publish(self, topic: str, msg: str, delivery: Delivery = "all", cache: bool = True) -> None:
        """Queue a message without waiting for its reply; see :meth:`flush`."""
        client = self._async()
        self._call(partial(client.publish, topic, msg, delivery, cache))

    def flush(self) -> None:
        """Wait for the replies to everything published; raise if any failed."""
        self._call(self._async().flush)

    # Client.subscribe's parameters (plus timeout) spelled out, not forwarded: typed, documented.
    def subscribe(
        self,
        topic: str,
        last_seen: int | None = None,
        cache: bool = True,
        *,
        epoch: str | None = None,
        timeout: float | None = None,
        max_queued: int | None = None,
        max_queued_bytes: int | None = None,
    ) -> SyncSubscription:
        """Return a subscription: ``with client.subscribe(topic) as sub: for msg in sub:``.

        Iteration stops when no message arrives for ``timeout`` seconds
        (``None``: never). The other arguments are those of
        :meth:`mqcore_client.Client.subscribe`.
        """
        client = self._async()
        sub = client.subscribe(
            topic,
            last_seen,
            cache,
            epoch=epoch,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
        )
        return SyncSubscription(self._portal_or_raise(), sub, timeout)

    def _async(self) -> Client:
        if self._client is None or self._entered is None:
            raise RuntimeError("use `with SyncClient(...) as client:` first")
        return self._client

    def _portal_or_raise(self) -> BlockingPortal:
        self._async()
        assert self._portal is not None
        return self._portal

    def _call(self, func: Callable[[], Awaitable[T]]) -> T:
        return self._portal_or_raise().call(func)


class SyncSubscription(_ExitsOnce):
    """A subscription for blocking code: a context manager and an iterator.

    ``for msg in sub`` yields :class:`mqcore_client.Received` messages and
    stops after ``timeout`` seconds without one; :meth:`get` raises
    :class:`mqcore_client.MQTimeoutError` instead.
    """

    def __init__(self, portal: BlockingPortal, sub: Subscription, timeout: float | None) -> None:
        self._portal = portal
        self._sub = sub
        self._entered = None
        self.timeout = timeout
        #: The subscribed topic.
        self.topic = sub.topic

    epoch = _Forwarded[str | None](Subscription.epoch.__doc__)
    last_index = _Forwarded[int | None](Subscription.last_index.__doc__)

    def _async(self) -> Subscription:
        return self._sub

    def __enter__(self) -> SyncSubscription:
        self._entered = entered = self._portal.wrap_async_context_manager(self._sub)
        entered.__enter__()
        return self

    def get(self, timeout: float | None = None) -> Received:
        """Return the next message; wait at most ``timeout`` seconds (``None``: forever).

        Raises :class:`MQTimeoutError` on timeout, the subscription's error if
        it failed (e.g. :class:`SubscriptionOverflowError`), and
        :class:`MQError` once it has ended.
        """
        message = self._portal.call(self._next, timeout)
        if message is None:
            raise MQError(f"the subscription to {self.topic!r} has ended")
        return message

    def __iter__(self) -> Iterator[Received]:
        while True:
            try:
                message = self._portal.call(self._next, self.timeout)
            except MQTimeoutError:
                return
            if message is None:
                return
            yield message

    async def _next(self, seconds: float | None) -> Received | None:
        try:
            with anyio.fail_after(seconds):
                return await self._sub.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise MQTimeoutError(f"no message on {self.topic!r} within {seconds} s") from None

"""The application's handle on a subscription: an async context manager and an async iterator.

It owns nothing of the protocol: the session decides what is queued (see
``_subscription_state``); this only waits for it. Entering calls the
client's ``open`` (which waits for a connection and writes the subscribe),
then waits for the first reply; leaving calls ``close``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ._errors import MQTimeoutError
from ._notified import Notified
from ._protocol import Received
from ._subscription_state import SubscriptionState, SubState

__all__ = ["Subscription"]


class Subscription(Notified):
    """One subscription to a topic: ``async with`` it, then ``async for`` over it.

    Leaving the ``async with`` block unsubscribes (when it is the
    connection's last subscription to that topic). Iterating yields
    :class:`Received` messages in index order, without duplicates, across
    reconnections. At most ``max_queued`` messages (and ``max_queued_bytes``
    of message text) wait for the application; one more and the subscription
    ends: iteration yields what was queued, then raises
    :class:`SubscriptionOverflowError`.
    """

    def __init__(
        self,
        state: SubscriptionState,
        open: Callable[[SubscriptionState], Awaitable[None]],
        close: Callable[[SubscriptionState], None],
        timeout: float | None,
    ) -> None:
        super().__init__("client.subscribe(...)")
        self.topic = state.topic
        self._state = state
        self._open = open
        self._close = close
        self._timeout = timeout
        state.notify = self._wake

    @property
    def epoch(self) -> str | None:
        """The epoch of the last message yielded (of the subscription, before any)."""
        return self._state.epoch

    @property
    def last_index(self) -> int | None:
        """The index of the last message yielded (before any: the ``last_seen`` it
        started after), to save for resuming."""
        return self._state.last_index

    @property
    def state(self) -> SubState:
        """Where the subscription is in its life."""
        return self._state.state

    async def __aenter__(self) -> Subscription:
        self._enter()
        state = self._state
        try:
            await self._open(state)
            with anyio.move_on_after(self._timeout):
                while not state.answered and state.state is not SubState.CLOSED:
                    await self._wait()
            if not state.answered and state.state is not SubState.CLOSED:
                raise MQTimeoutError(
                    f"no reply to the subscribe to {self.topic!r} within {self._timeout} s"
                )
        except BaseException:
            self._close(state)
            raise
        if state.error is not None:
            self._close(state)
            raise state.error
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close(self._state)

    async def __anext__(self) -> Received:
        """Return the next message, waiting for one if need be."""
        self._check_entered()
        state = self._state
        while True:
            # No checkpoint when a message is ready (as asyncio.Queue.get):
            # draining a backlog should not cost an event-loop turn per message.
            message = state.take()
            if message is not None:
                return message
            if state.error is not None:
                raise state.error
            if state.state is SubState.CLOSED:
                raise StopAsyncIteration
            await self._wait()

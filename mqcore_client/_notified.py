"""What a subscription and a consumer share: entered once, then woken by their state.

The session fills a state object (a subscription's or a consumer's) and calls
its ``notify``; the application's handle waits in ``__anext__`` until then.
One waiter at a time: an async iterator is consumed by one task.
"""

from __future__ import annotations

from typing import TypeVar

import anyio

__all__ = ["Notified"]

_Self = TypeVar("_Self", bound="Notified")


class Notified:
    """An async context manager and iterator, entered once, waiting for :meth:`_wake`."""

    def __init__(self, how: str) -> None:
        #: How to enter it, for the error when iterating first: ``client.subscribe(...)``.
        self._how = how
        self._entered = False
        self._waiter: anyio.Event | None = None

    def __aiter__(self: _Self) -> _Self:
        return self

    def _enter(self) -> None:
        if self._entered:
            raise RuntimeError(f"a {type(self).__name__} can be entered only once")
        self._entered = True

    def _check_entered(self) -> None:
        if not self._entered:
            raise RuntimeError(f"use `async with {self._how}` before iterating")

    async def _wait(self) -> None:
        self._waiter = waiter = anyio.Event()
        await waiter.wait()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

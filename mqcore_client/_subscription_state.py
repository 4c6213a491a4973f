"""One subscription's state, without I/O: its position, its queue, and where it is in its life.

States (:class:`SubState`)::

    NEW --start--> SUBSCRIBING --answered--> ACTIVE <--fence/unfence--> FENCED
                        ^                      |                          |
                        +------resume------ OFFLINE <--connection lost----+
    any --fail/close--> CLOSED

Only ``ACTIVE`` queues deliveries. The *position* is the index of the last
message queued (``None``: none yet and no ``last_seen``; ``-1``: the whole
cache is wanted); a delivery at or below it is a duplicate and dropped.
``gap`` marks the next message queued with ``gap=True``.

The queue is bounded by count (``max_queued``) and by the bytes of message
text it holds (``max_queued_bytes``): one more and the subscription ends
with :class:`SubscriptionOverflowError` (what is queued is still yielded).
A single message larger than the byte bound is still queued when the queue
is empty, so such a subscription can make progress.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Final

import msgspec

from ._errors import MQError, SubscriptionOverflowError
from ._protocol import Received

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_MAX_QUEUED_BYTES", "SubState", "SubscriptionState"]

#: Messages a subscription holds for the application before it overflows.
DEFAULT_MAX_QUEUED: Final = 10_000
#: Bytes of message text a subscription holds before it overflows.
DEFAULT_MAX_QUEUED_BYTES: Final = 16 << 20


class SubState(enum.Enum):
    """Where a subscription is in its life (see the module docstring)."""

    NEW = "new"
    SUBSCRIBING = "subscribing"
    ACTIVE = "active"
    FENCED = "fenced"
    OFFLINE = "offline"
    CLOSED = "closed"


class _EpochMark:
    """Queued before the first message of a new epoch, so ``epoch`` follows what is yielded."""

    __slots__ = ("epoch",)

    def __init__(self, epoch: str | None) -> None:
        self.epoch = epoch


_ACTIVE = SubState.ACTIVE


class SubscriptionState:
    """What the session knows of one local subscription."""

    __slots__ = (
        "answered",
        "cache",
        "epoch",
        "error",
        "expected_epoch",
        "gap",
        "last_index",
        "last_seen",
        "max_queued",
        "max_queued_bytes",
        "notify",
        "position",
        "queue",
        "queued_bytes",
        "state",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        last_seen: int | None = None,
        cache: bool = True,
        *,
        epoch: str | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        if max_queued < 1 or max_queued_bytes < 1:
            raise ValueError("max_queued and max_queued_bytes must be >= 1")
        self.topic = topic
        self.last_seen = last_seen
        self.cache = cache
        self.expected_epoch = epoch
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.state = SubState.NEW
        #: Whether its subscribe has been answered once (entering is over).
        self.answered = False
        self.position: int | None = None
        self.gap = False
        self.queue: deque[Received | _EpochMark] = deque()
        self.queued_bytes = 0
        #: Why it ended, if it did not end by being closed.
        self.error: MQError | None = None
        #: The epoch and the index of the last message taken (see :meth:`take`).
        self.epoch: str | None = None
        self.last_index: int | None = last_seen
        #: Called when there is something new to take, or it has ended.
        self.notify: Callable[[], object] | None = None

    # -- driven by the session ---------------------------------------------------

    def start(self, last_seen: int | None) -> None:
        """Its subscribe is written, asking for what follows ``last_seen``."""
        self.last_index = last_seen
        self.position = last_seen if last_seen is not None else (-1 if self.cache else None)
        self.state = SubState.SUBSCRIBING

    def deliver(self, message: Received) -> bool:
        """Queue ``message`` unless it is a duplicate; return True if that overflowed the queue."""
        if self.state is not _ACTIVE:
            return False
        position = self.position
        if position is not None and message.index <= position:
            # A replay for another subscription of this topic: already queued,
            # or older than this subscription.
            return False
        size = len(message.msg)
        queue = self.queue
        if queue and (
            len(queue) >= self.max_queued or self.queued_bytes + size > self.max_queued_bytes
        ):
            self.fail(SubscriptionOverflowError(self.topic, position, self._queue_epoch()))
            return True
        if self.gap:
            self.gap = False
            message = msgspec.structs.replace(message, gap=True)
        self.position = message.index
        queue.append(message)
        self.queued_bytes += size
        self._wake()
        return False

    def activate(self, epoch: str | None, floor: int | None) -> None:
        """Its subscribe was accepted; ``floor`` is what the connection has seen of the topic."""
        if self.state is SubState.CLOSED:
            return
        if self.position is None:
            self.position = floor
        self.state = _ACTIVE
        if not self.answered:
            self.answered = True
            self.epoch = epoch
            self._wake()

    def fence(self) -> None:
        """Another subscription's replay comes next: ignore it if it cannot be told apart."""
        if self.state is _ACTIVE and self.position is None:
            self.state = SubState.FENCED

    def unfence(self, floor: int | None) -> None:
        """That replay is over."""
        if self.state is SubState.FENCED:
            self.state = _ACTIVE
            if self.position is None:
                self.position = floor

    def offline(self) -> None:
        """The connection dropped."""
        if self.state is not SubState.CLOSED:
            self.state = SubState.OFFLINE

    def resume(self, epoch: str | None, *, epoch_changed: bool) -> None:
        """It is about to be subscribed again, after a reconnection."""
        if self.state is SubState.CLOSED:
            return
        self.state = SubState.SUBSCRIBING
        if epoch_changed:
            # The server's numbering started over: replay its whole cache, flag the gap.
            self.position = -1
            self.gap = True
            if self.answered:
                self.queue.append(_EpochMark(epoch))
            else:
                self.epoch = epoch
        elif self.position is None:
            # No position to resume from: what was sent meanwhile is lost.
            self.gap = True

    def fail(self, error: MQError) -> None:
        """End it with ``error``, raised once what is queued has been taken."""
        if self.state is not SubState.CLOSED:
            self.error = error
            self.close()

    def close(self) -> None:
        """End it."""
        if self.state is not SubState.CLOSED:
            self.state = SubState.CLOSED
            self._wake()

    # -- driven by the application ----------------------------------------------

    def take(self) -> Received | None:
        """The next queued message, or ``None`` if there is none (yet)."""
        queue = self.queue
        while queue:
            item = queue.popleft()
            if isinstance(item, _EpochMark):
                self.epoch = item.epoch
                continue
            self.queued_bytes -= len(item.msg)
            self.last_index = item.index
            return item
        return None

    def _queue_epoch(self) -> str | None:
        for item in reversed(self.queue):
            if isinstance(item, _EpochMark):
                return item.epoch
        return self.epoch

    def _wake(self) -> None:
        if self.notify is not None:
            self.notify()

"""A subscription to a pattern (``orders.*``, ``orders.>``): gapless resume per topic.

A pattern subscription receives the messages of every matching topic, each
naming its own topic and index; indices are per topic, so one position
cannot say where it is. :class:`PatternSubscriptionState` keeps one position
per topic it has queued a message of (the index of the last one), and drops a
delivery at or below its topic's position. Rules:

- It is subscribed with a replay (``cache=True``) or without; never with
  ``last_seen`` (the server refuses ``last_seen`` with a pattern).
- **Resume.** After a reconnection it is subscribed again *with* a replay
  (the server replays every matching cached topic) and drops, per topic,
  what it already has: nothing missed that the server still caches, nothing
  twice. A topic it has no position in yet is taken from the start of the
  replay (so a ``cache=False`` subscription may, after a reconnection, get
  older cached messages of a topic it had not heard from).
- **Epoch change.** If the server's numbering started over, every position
  is forgotten, the whole replay is taken and its first message is flagged
  ``gap=True``, as for a plain subscription.
- It is never *fenced* (see :mod:`mqcore_client._session`): its position
  (the base class's) stays ``-1``, "everything", and its own per-topic
  positions do the work.
"""

from __future__ import annotations

from mqcore._subjects import is_pattern

from ._protocol import Received
from ._subscription_state import (
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_QUEUED_BYTES,
    SubscriptionState,
    SubState,
)

__all__ = ["PatternSubscriptionState"]


class PatternSubscriptionState(SubscriptionState):
    """What the session knows of one subscription to a pattern."""

    __slots__ = ("positions",)

    def __init__(
        self,
        pattern: str,
        cache: bool = True,
        *,
        epoch: str | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        super().__init__(
            pattern,
            None,
            cache,
            epoch=epoch,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
        )
        #: Per topic, the index of the last message queued.
        self.positions: dict[str, int] = {}

    def start(self, last_seen: int | None) -> None:
        """Its subscribe is written (``last_seen`` is ``None``: none with a pattern)."""
        super().start(None)
        self.position = -1

    def deliver(self, message: Received) -> bool:
        """Queue ``message`` unless its topic already has it; True if the queue overflowed."""
        if self.state is not SubState.ACTIVE:
            return False
        topic = message.topic
        if message.index <= self.positions.get(topic, -1):
            return False
        overflowed = super().deliver(message)
        if not overflowed:
            self.positions[topic] = message.index
        self.position = -1
        return overflowed

    def resume(self, epoch: str | None, *, epoch_changed: bool) -> None:
        """About to be subscribed again: replay, and per topic keep what is new."""
        super().resume(epoch, epoch_changed=epoch_changed)
        if epoch_changed and self.state is not SubState.CLOSED:
            self.positions.clear()


def new_state(
    topic: str,
    last_seen: int | None,
    cache: bool,
    *,
    epoch: str | None,
    max_queued: int,
    max_queued_bytes: int,
) -> SubscriptionState:
    """The state of a new subscription to ``topic``: a pattern's, or a plain topic's."""
    if not is_pattern(topic):
        return SubscriptionState(
            topic,
            last_seen,
            cache,
            epoch=epoch,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
        )
    # Resumes per topic; no last_seen.
    if last_seen is not None:
        raise ValueError("last_seen is not allowed with a pattern: indices are per topic")
    return PatternSubscriptionState(
        topic, cache, epoch=epoch, max_queued=max_queued, max_queued_bytes=max_queued_bytes
    )

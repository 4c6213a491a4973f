"""Acknowledged consumption: ``client.consume(topic)`` yields jobs to ack or nack.

Rules (the server's are in :mod:`mqcore._acks`):

- A client has at most one consumer per topic (the server keeps one
  acknowledging subscription per connection and topic). It subscribes with
  ``"ack": true, "prefetch": N, "cache": false``: it gets the topic's jobs
  (``one`` messages, with ``attempt``), not the replay of ``all`` messages.
  Deliveries carrying ``attempt`` go to the consumer of their topic, never
  to plain subscriptions.
- ``async with job:`` acks when the block ends normally and nacks (with the
  exception's text as reason) when it raises; ``await job.ack()`` and
  ``await job.nack(delay=...)`` do it by hand (then the block does nothing).
  Each waits for the server's reply, unless ``wait=False``: then it is
  pipelined like ``publish`` and a refusal is reported by ``flush()``.
- A lost connection hands every unacked job back (the server redelivers it,
  ``attempt`` + 1, to some consumer). So the jobs queued and not yet yielded
  are dropped, and acking or nacking a job from before the loss does nothing
  (:attr:`Job.stale`). After a reconnection the consumer subscribes again.
- Leaving the ``async with client.consume(...)`` block unsubscribes, which
  hands back every job not acked yet.
- At most ``prefetch`` jobs are queued locally: the server never sends more
  than that unacked, so the queue is bounded by it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mqcore import Ack, Nack, Reply, Subscribe

from ._errors import ConnectionLostError, MQError, ServerError
from ._notified import Notified
from ._protocol import Received

if TYPE_CHECKING:
    from ._session import Request, Session

__all__ = ["Consumer", "ConsumerLink", "ConsumerState", "Job"]

#: A nack's reason is the exception's text, cut to this many characters.
MAX_REASON = 200


class ConsumerState:
    """What the session knows of one consumer: its jobs waiting to be yielded."""

    __slots__ = ("error", "generation", "notify", "prefetch", "queue", "topic")

    def __init__(self, topic: str, prefetch: int) -> None:
        self.topic = topic
        self.prefetch = prefetch
        self.queue: deque[Received] = deque()
        #: Bumped on every lost connection: jobs from before are handed back.
        self.generation = 0
        self.error: MQError | None = None
        self.notify: Callable[[], object] | None = None

    def command(self) -> Subscribe:
        """The subscribe line that makes (or remakes) this consumer on the server."""
        return Subscribe(self.topic, cache=False, ack=True, prefetch=self.prefetch)

    def deliver(self, job: Received) -> None:
        self.queue.append(job)
        if self.notify is not None:
            self.notify()

    def offline(self) -> None:
        """The connection is lost: the server hands every job back."""
        self.generation += 1
        self.queue.clear()

    def answered(self, outcome: Reply | ConnectionLostError, line: bytes) -> None:
        """A resubscription's reply: a refusal ends the consumer."""
        if isinstance(outcome, Reply) and not outcome.success:
            self.fail(ServerError(outcome.reason))

    def fail(self, error: MQError) -> None:
        self.error = error
        if self.notify is not None:
            self.notify()


@dataclass(frozen=True, slots=True)
class ConsumerLink:
    """What a :class:`Consumer` needs of its client, as the client's own callables."""

    _session: Session
    #: Waits for a connection with room for a command.
    _writable: Callable[[], Awaitable[object]]
    #: Waits for a request's reply; raises a refusal.
    _reply: Callable[[Request, str], Awaitable[bytes]]
    #: Wakes the connection's writer.
    _kick: Callable[[], None]
    #: Why the client ended for good (None while it runs).
    closed: Callable[[], ConnectionLostError | None]

    async def command(self, command: Ack | Nack | Subscribe, wait: bool) -> None:
        """Write ``command``; with ``wait``, wait for its reply and raise a refusal."""
        await self._writable()
        if not wait:
            self._session.enqueue(command, None)
            self._kick()
            return
        request = self._session.request(command)
        self._kick()
        await self._reply(request, f"the {type(command).__name__.lower()}")

    async def attach(self, state: ConsumerState) -> None:
        """Register ``state`` as the topic's consumer and subscribe; raise a refusal."""
        await self._writable()
        request = self._session.add_consumer(state)
        self._kick()
        try:
            await self._reply(request, f"the subscribe to {state.topic!r}")
        except BaseException:
            self.detach(state)
            raise

    def detach(self, state: ConsumerState) -> None:
        """Forget ``state`` and unsubscribe (nothing waits for the reply)."""
        if self._session.remove_consumer(state):
            self._kick()


class Job:
    """One delivery of a job: ``async with`` it to ack on success, nack on an exception."""

    __slots__ = ("_consumer", "_generation", "message", "settled")

    def __init__(self, consumer: Consumer, message: Received, generation: int) -> None:
        self._consumer = consumer
        self._generation = generation
        #: The delivery itself: ``topic``, ``msg``, ``index``, ``attempt``.
        self.message = message
        #: True once acked or nacked.
        self.settled = False

    @property
    def msg(self) -> str:
        return self.message.msg

    @property
    def index(self) -> int:
        return self.message.index

    @property
    def attempt(self) -> int:
        """Which delivery of this message this is, from 1."""
        return self.message.attempt

    @property
    def stale(self) -> bool:
        """True if the connection it came on was lost: the server has handed it back."""
        return self._generation != self._consumer.state.generation

    async def ack(self, *, wait: bool = True) -> None:
        """The job is done. ``wait=False`` pipelines it (a refusal shows in ``flush()``)."""
        await self._settle(Ack(self.message.topic, self.message.index), wait)

    async def nack(self, delay: float = 0.0, reason: str = "nack", *, wait: bool = True) -> None:
        """Hand the job back, to be redelivered after ``delay`` seconds."""
        command = Nack(self.message.topic, self.message.index, delay, reason[:MAX_REASON])
        await self._settle(command, wait)

    async def _settle(self, command: Ack | Nack, wait: bool) -> None:
        """Send ``command`` for this job, unless its connection is gone."""
        if self.settled:
            raise RuntimeError(f"job {self.index} of {self.message.topic!r} is already settled")
        self.settled = True
        if self.stale:
            return  # handed back with its connection: it will come again
        await self._consumer.command(command, wait)

    async def __aenter__(self) -> Job:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.settled:
            return
        if exc is None:
            await self.ack()
        elif isinstance(exc, Exception):
            await self.nack(reason=f"{type(exc).__name__}: {exc}")
        # Cancelled or interrupted: nothing is written; the job comes back
        # when the consumer leaves or its ack wait is over.


class Consumer(Notified):
    """``async with client.consume(topic) as jobs: async for job in jobs: ...``."""

    def __init__(self, link: ConsumerLink, topic: str, prefetch: int) -> None:
        super().__init__("client.consume(...)")
        self.topic = topic
        self.state = ConsumerState(topic, prefetch)
        self.state.notify = self._wake
        self._link = link

    async def set_prefetch(self, prefetch: int) -> None:
        """Change how many jobs may be unacked at once; 0 pauses (no new jobs come)."""
        self.state.prefetch = prefetch
        await self.command(self.state.command(), True)

    async def command(self, command: Ack | Nack | Subscribe, wait: bool) -> None:
        await self._link.command(command, wait)

    async def __aenter__(self) -> Consumer:
        self._enter()
        await self._link.attach(self.state)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._link.detach(self.state)

    async def __anext__(self) -> Job:
        self._check_entered()
        state = self.state
        while True:
            if state.queue:
                return Job(self, state.queue.popleft(), state.generation)
            if state.error is not None:
                raise state.error
            closed = self._link.closed()
            if closed is not None:
                raise ConnectionLostError(str(closed))
            await self._wait()

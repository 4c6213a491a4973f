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
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from mqcore import Ack, Nack, Reply, Subscribe, Unsubscribe

from ._errors import ConnectionLostError, MQError, ServerError
from ._protocol import Received

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["Consumer", "ConsumerState", "Job"]

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settled:
            return
        if exc is None:
            await self.ack()
        elif isinstance(exc, Exception):
            await self.nack(reason=f"{type(exc).__name__}: {exc}")
        # Cancelled or interrupted: nothing is written; the job comes back
        # when the consumer leaves or its ack wait is over.


class Consumer:
    """``async with client.consume(topic) as jobs: async for job in jobs: ...``."""

    def __init__(self, client: Client, topic: str, prefetch: int) -> None:
        self.topic = topic
        self.state = ConsumerState(topic, prefetch)
        self.state.notify = self._wake
        self._client = client
        self._entered = False
        self._waiter: anyio.Event | None = None

    async def set_prefetch(self, prefetch: int) -> None:
        """Change how many jobs may be unacked at once; 0 pauses (no new jobs come)."""
        self.state.prefetch = prefetch
        await self.command(self.state.command(), True)

    async def command(self, command: Ack | Nack | Subscribe, wait: bool) -> None:
        client = self._client
        conn = await client._writable()
        session = client._session
        if not wait:
            session.enqueue(command, None)
            conn.kick()
            return
        request = session.request(command)
        conn.kick()
        await client._reply(request, f"the {type(command).__name__.lower()}")

    async def __aenter__(self) -> Consumer:
        if self._entered:
            raise RuntimeError("a Consumer can be entered only once")
        self._entered = True
        client = self._client
        session = client._session
        if self.topic in session.consumers:
            raise ValueError(f"this client already consumes {self.topic!r}")
        conn = await client._writable()
        session.consumers[self.topic] = self.state
        request = session.request(self.state.command())
        conn.kick()
        try:
            await client._reply(request, f"the subscribe to {self.topic!r}")
        except BaseException:
            self._leave()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        client = self._client
        session = client._session
        if session.consumers.get(self.topic) is not self.state:
            return
        del session.consumers[self.topic]
        self.state.offline()
        if session.online and self.topic not in session.subs:
            # Hands back every job not acked. (With a plain subscription to
            # the topic left, they come back at their ack wait instead.)
            session.enqueue(Unsubscribe(self.topic), _ignore)
            if client._conn is not None:
                client._conn.kick()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Job:
        if not self._entered:
            raise RuntimeError("use `async with client.consume(...)` before iterating")
        state = self.state
        while True:
            if state.queue:
                return Job(self, state.queue.popleft(), state.generation)
            if state.error is not None:
                raise state.error
            if self._client._closed is not None:
                raise ConnectionLostError(str(self._client._closed))
            self._waiter = waiter = anyio.Event()
            await waiter.wait()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()


def _ignore(outcome: Reply | ConnectionLostError, line: bytes) -> None:
    """The reply to a consumer's unsubscribe: nothing waits for it."""

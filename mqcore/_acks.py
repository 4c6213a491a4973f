"""Acknowledged delivery: work queues with prefetch, redelivery and dead letters.

An mqcore extension; a connection that never subscribes with ``ack`` sees no
change. Rules, including those chosen where the issue is silent:

- **Consumers.** A connection has at most one acknowledging subscription (a
  *consumer*) per topic. ``subscribe`` with ``"ack": true`` makes it, or sets
  the ``prefetch`` of the one it has; a ``subscribe`` without ``ack`` replays
  as usual and leaves it acknowledging; ``unsubscribe`` ends it. A consumer is
  also a plain subscriber of its topic, so it gets ``all`` messages (with no
  ``attempt``, needing no ack). Not allowed on a pattern, nor on a topic
  whose ``T + ".dead"`` would be over the topic name limit.
- **Jobs.** While a topic has a consumer, every ``one`` message sent to it
  becomes a *job* of the topic's work queue, whatever plain subscribers the
  topic also has. Without consumers, ``one`` messages behave as the
  reference's (one subscriber, or cached, consumed by a replay). An
  acknowledging ``subscribe`` claims every cached ``one`` message of its topic
  as a job, whatever ``last_seen`` and ``cache`` say (they are work, not
  history); ``all`` messages replay as for any ``subscribe``.
- **Hand-out.** Ready jobs go out oldest first (jobs handed back go first),
  round robin among the consumers with room (fewer than ``prefetch`` pending).
  A job's delivery is its message plus ``"attempt": k``, k = 1, 2, ...
- **Handing back.** A pending job goes back, its attempt counted, when its
  consumer nacks it (after ``delay`` seconds, else at once), unsubscribes,
  disconnects (end of input too), or lets ``ack_wait`` pass. Once a job has
  been delivered ``max_deliver`` times (default 5) it goes, instead of
  back, to topic ``T + ".dead"``: a ``one`` message with the original's
  ``msg`` plus ``"dead_index"`` (its index in T), ``"attempts"`` and
  ``"reason"`` (the last failure: the nack's reason, ``ack wait expired``,
  ``consumer disconnected``, ``consumer unsubscribed``). There it is what any
  ``one`` message is: a job if T.dead has consumers, else given to one
  subscriber, else cached. Never dropped silently; if T.dead cannot be made
  (too many topics), the job waits ``ack_wait`` and tries again.
- **No consumer left.** A queue's jobs wait (ready) for the next consumer;
  meanwhile new ``one`` messages go the plain way.
- **ack / nack** answer like every command: ``Not an acknowledging subscriber
  of this topic`` if the connection has no consumer of the topic, ``Not
  pending: ...`` for an index not pending on that consumer (unknown, already
  acked, or another's). ``delay`` is 0 to 86,400 s (``Invalid delay``).
- **Bounds.** ``prefetch`` 0 to 10,000 (default 10; ``Invalid prefetch``);
  0 pauses the consumer (it keeps its pending jobs but gets no more), so a
  client that wants exactly N jobs sets it to 0 before its N-th ack.
  Broker-wide at most ``max_jobs`` jobs and ``max_job_bytes`` bytes: past
  either a ``one`` send that would become a job is refused ``Work queue
  full``, and an acknowledging subscribe claims cached messages only up to it.
- **Time.** The core has no clock: :meth:`WorkQueues.advance` (monotonic
  seconds) sets the time deadlines count from and hands back what is due;
  :meth:`WorkQueues.next_deadline` says when it is next needed. A delivery's
  deadline is the last time given plus ``ack_wait``, so the transport
  advances the clock before it feeds input.
- **Cost.** Pending jobs sit in one ordered dict in delivery order, which is
  deadline order (``ack_wait`` is one constant and time never goes back): an
  ack is O(1), expiry O(expired). Nack delays vary: a heap. The consumers
  with room are an ordered dict per queue: handing a job out is O(1).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from ._connection import Connection, ConnectionId
from ._journal import Journal
from ._limits import AckLimits
from ._protocol import REFUSED, SUCCESS, Reason
from ._records import JobState

__all__ = [
    "DEAD_SUFFIX",
    "DEFAULT_ACK_WAIT",
    "DEFAULT_MAX_DELIVER",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_JOB_BYTES",
    "DEFAULT_PREFETCH",
    "MAX_NACK_DELAY",
    "MAX_PREFETCH",
    "Consumer",
    "Job",
    "WorkQueue",
    "WorkQueues",
]

DEFAULT_PREFETCH: Final = 10
MAX_PREFETCH: Final = 10_000
DEFAULT_ACK_WAIT: Final = 30.0
DEFAULT_MAX_DELIVER: Final = 5
DEFAULT_MAX_JOBS: Final = 100_000
DEFAULT_MAX_JOB_BYTES: Final = 64 << 20
MAX_NACK_DELAY: Final = 86_400.0
DEAD_SUFFIX: Final = ".dead"

EXPIRED: Final = "ack wait expired"
DISCONNECTED: Final = "consumer disconnected"
UNSUBSCRIBED: Final = "consumer unsubscribed"


class Job:
    """A ``one`` message of a work queue, from its arrival until acked or dead-lettered."""

    __slots__ = ("attempts", "consumer", "data", "deadline", "index", "queue")

    def __init__(self, queue: WorkQueue, index: int, data: bytes, attempts: int) -> None:
        self.queue = queue
        self.index = index
        # The delivery's bytes without "attempt": it is spliced in per delivery.
        self.data = data
        self.attempts = attempts
        self.consumer: Consumer | None = None
        self.deadline = 0.0


@dataclass(slots=True, eq=False)
class Consumer:
    """One connection's acknowledging subscription to one topic."""

    conn: Connection
    queue: WorkQueue
    prefetch: int
    #: Pending on it, by index, in delivery order.
    jobs: dict[int, Job] = field(default_factory=dict)


class WorkQueue:
    """One topic's jobs and consumers."""

    __slots__ = ("consumers", "held", "name", "ready", "room")

    def __init__(self, name: str) -> None:
        self.name = name
        self.consumers: dict[ConnectionId, Consumer] = {}
        # Consumers with fewer than `prefetch` jobs pending, next to serve first.
        self.room: OrderedDict[Consumer, None] = OrderedDict()
        # Jobs waiting for a consumer with room, next first.
        self.ready: deque[Job] = deque()
        # Jobs of this queue anywhere: ready, pending or delayed.
        self.held = 0


#: Turns a job given up on into a dead letter; False if it could not be sent.
DeadLetter = Callable[[str, Job, str], bool]


class WorkQueues:
    """Every work queue of a broker, the deadlines of their jobs and their bounds."""

    def __init__(
        self,
        limits: AckLimits,
        journal: Journal | None,
        emit: Callable[[Connection, bytes], None],
        dead_letter: DeadLetter,
    ) -> None:
        self.limits = limits
        self._journal = journal
        self._emit = emit
        self._dead_letter = dead_letter
        self.queues: dict[str, WorkQueue] = {}
        self._by_conn: dict[ConnectionId, dict[str, Consumer]] = {}
        # Pending jobs in delivery order, which is deadline order.
        self._pending: OrderedDict[Job, None] = OrderedDict()
        # (due, tie-breaker, job) of nacked jobs with a delay.
        self._delayed: list[tuple[float, int, Job]] = []
        self._sequence = 0
        self.now = 0.0
        self.jobs = 0
        self.job_bytes = 0

    # -- queries --------------------------------------------------------------------

    def consuming(self, name: str) -> WorkQueue | None:
        """``name``'s work queue, if the topic has consumers (its ``one`` messages are jobs)."""
        queue = self.queues.get(name)
        return queue if queue is not None and queue.consumers else None

    def has_room(self, size: int) -> bool:
        """Whether one more job of ``size`` bytes fits the broker-wide bounds."""
        limits = self.limits
        return self.jobs < limits.max_jobs and self.job_bytes + size <= limits.max_job_bytes

    def next_deadline(self) -> float | None:
        """When :meth:`advance` must next be called (None: nothing is waiting)."""
        pending = self._pending
        first = next(iter(pending)).deadline if pending else None
        if self._delayed:
            due = self._delayed[0][0]
            return due if first is None or due < first else first
        return first

    def pending(self, conn: ConnectionId, name: str) -> list[int]:
        """The indices pending on ``conn``'s consumer of ``name`` (for tests)."""
        consumer = self._by_conn.get(conn, {}).get(name)
        return [] if consumer is None else sorted(consumer.jobs)

    # -- jobs -----------------------------------------------------------------------

    def add(self, queue: WorkQueue, index: int, data: bytes, attempts: int = 0) -> None:
        """Make message ``index`` a ready job of ``queue`` (call :meth:`dispatch` after)."""
        self._hold(queue, index, data, attempts)
        if self._journal is not None:
            self._journal.job_added(queue.name, index, data, attempts)

    def restore(self, jobs: Iterable[JobState]) -> None:
        """Load jobs a store kept: ready, for the next consumer of their topic."""
        for job in sorted(jobs, key=lambda j: (j.topic, j.index)):
            self._hold(self._queue(job.topic), job.index, job.data, job.attempts)

    def _hold(self, queue: WorkQueue, index: int, data: bytes, attempts: int) -> None:
        queue.ready.append(Job(queue, index, data, attempts))
        queue.held += 1
        self.jobs += 1
        self.job_bytes += len(data)

    def dispatch(self, queue: WorkQueue) -> None:
        """Hand ready jobs to consumers with room, round robin."""
        ready = queue.ready
        room = queue.room
        while ready and room:
            consumer = next(iter(room))
            self._deliver(consumer, ready.popleft())
            if len(consumer.jobs) >= consumer.prefetch:
                del room[consumer]
            else:
                room.move_to_end(consumer)

    def _deliver(self, consumer: Consumer, job: Job) -> None:
        job.attempts += 1
        job.consumer = consumer
        job.deadline = self.now + self.limits.ack_wait
        consumer.jobs[job.index] = job
        self._pending[job] = None
        # data ends with "}\r\n": splice the attempt in before it.
        self._emit(consumer.conn, job.data[:-3] + b', "attempt": %d}\r\n' % job.attempts)
        if self._journal is not None:
            self._journal.job_attempts(job.queue.name, job.index, job.attempts)

    # -- consumers ------------------------------------------------------------------

    def subscribe(self, conn: Connection, name: str, prefetch: int) -> WorkQueue:
        """Make (or re-set the prefetch of) ``conn``'s consumer of ``name``."""
        queue = self._queue(name)
        consumers = self._by_conn.setdefault(conn.id, {})
        consumer = consumers.get(name)
        if consumer is None:
            consumer = consumers[name] = queue.consumers[conn.id] = Consumer(conn, queue, prefetch)
        consumer.prefetch = prefetch
        self._opened(consumer)
        return queue

    def unsubscribe(self, conn: ConnectionId, name: str) -> None:
        """``conn`` left ``name``: its jobs there go back."""
        consumers = self._by_conn.get(conn)
        consumer = None if consumers is None else consumers.pop(name, None)
        if consumer is not None:
            self._remove(consumer, UNSUBSCRIBED)

    def drop_connection(self, conn: ConnectionId) -> None:
        """``conn`` is gone (or will read nothing more): every job pending on it goes back."""
        for consumer in self._by_conn.pop(conn, {}).values():
            self._remove(consumer, DISCONNECTED)

    def _remove(self, consumer: Consumer, reason: str) -> None:
        queue = consumer.queue
        del queue.consumers[consumer.conn.id]
        queue.room.pop(consumer, None)
        jobs = sorted(consumer.jobs.values(), key=lambda job: job.index)
        consumer.jobs.clear()
        for job in jobs:
            del self._pending[job]
        self._hand_back(queue, jobs, reason)
        self._settle(queue)

    def _opened(self, consumer: Consumer) -> None:
        """``consumer`` may have room again: put it in line (at the back) if so."""
        queue = consumer.queue
        if (
            len(consumer.jobs) < consumer.prefetch
            and consumer not in queue.room
            and queue.consumers.get(consumer.conn.id) is consumer
        ):
            queue.room[consumer] = None

    # -- ack and nack -----------------------------------------------------------------

    def ack(self, conn: ConnectionId, name: str, index: int) -> bytes:
        """The reply to an ``ack``: the job is done."""
        job = self._take(conn, name, index)
        if isinstance(job, bytes):
            return job
        self._done(job)
        self.dispatch(job.queue)
        self._settle(job.queue)
        return SUCCESS

    def nack(self, conn: ConnectionId, name: str, index: int, delay: float, reason: str) -> bytes:
        """The reply to a ``nack``: the job goes back, after ``delay`` seconds."""
        if not 0 <= delay <= MAX_NACK_DELAY:
            return REFUSED[Reason.BAD_DELAY]
        job = self._take(conn, name, index)
        if isinstance(job, bytes):
            return job
        if delay > 0 and job.attempts < self.limits.max_deliver:
            self._sequence += 1
            heapq.heappush(self._delayed, (self.now + delay, self._sequence, job))
        else:
            self._hand_back(job.queue, [job], reason)
        self.dispatch(job.queue)
        return SUCCESS

    def _take(self, conn: ConnectionId, name: str, index: int) -> Job | bytes:
        """Take job ``index`` off ``conn``'s consumer of ``name``, or the failure reply."""
        consumer = self._by_conn.get(conn, {}).get(name)
        if consumer is None:
            return REFUSED[Reason.NOT_ACKING]
        job = consumer.jobs.pop(index, None)
        if job is None:
            return REFUSED[Reason.NOT_PENDING]
        del self._pending[job]
        job.consumer = None
        self._opened(consumer)
        return job

    # -- time -----------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """The time is ``now``: hand back every job whose ack wait or nack delay is over."""
        if now > self.now:
            self.now = now
        now = self.now
        pending = self._pending
        while pending:
            job = next(iter(pending))
            if job.deadline > now:
                break
            del pending[job]
            consumer = job.consumer
            if consumer is not None:
                del consumer.jobs[job.index]
                job.consumer = None
                self._opened(consumer)
            self._hand_back(job.queue, [job], EXPIRED)
            self.dispatch(job.queue)
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            job = heapq.heappop(delayed)[2]
            job.queue.ready.appendleft(job)
            self.dispatch(job.queue)

    # -- the end of a job -----------------------------------------------------------

    def _hand_back(self, queue: WorkQueue, jobs: list[Job], reason: str) -> None:
        """Put ``jobs`` (not pending any more) back first in line, or dead-letter them."""
        for job in reversed(jobs):
            if job.attempts < self.limits.max_deliver:
                queue.ready.appendleft(job)
            elif self._dead_letter(queue.name, job, reason):
                self._done(job)
            else:
                # T.dead could not be made: keep it, and try again later.
                self._sequence += 1
                heapq.heappush(
                    self._delayed, (self.now + self.limits.ack_wait, self._sequence, job)
                )
        self.dispatch(queue)

    def _done(self, job: Job) -> None:
        queue = job.queue
        queue.held -= 1
        self.jobs -= 1
        self.job_bytes -= len(job.data)
        if self._journal is not None:
            self._journal.job_done(queue.name, job.index)

    def _queue(self, name: str) -> WorkQueue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = WorkQueue(name)
        return queue

    def _settle(self, queue: WorkQueue) -> None:
        """Forget ``queue`` once it has neither consumers nor jobs."""
        if not queue.consumers and not queue.held:
            self.queues.pop(queue.name, None)

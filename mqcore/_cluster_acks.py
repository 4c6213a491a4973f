"""Acknowledged delivery in cluster mode: the node's work queues over the backend's pending state.

The rules are single-node acknowledged delivery's (:mod:`mqcore._acks`: ack,
nack, ``ack_wait``, ``max_deliver``, dead letters, ``prefetch``, bounds),
with the backend holding what must survive a node:

- **Jobs.** A ``one`` message the backend routed to this node stays pending
  there (for this node) until its job is *done*: acked, or sent to ``T.dead``
  (:class:`ClusterWorkQueues` reports each done job, and the node confirms it
  to the backend). While this node has a consumer of the topic, such a
  message becomes a job here; if the node dies, the backend re-routes its
  pending jobs to another node (attempt counting starts again there).
- **Nack, ack wait** hand a job back to this node's queue, as on one node:
  redelivered here (its attempts counted, dead-lettered at ``max_deliver``).
- **No consumer left here.** When the last consumer of a topic on this node
  leaves, the topic's ready jobs go back to the backend (returned ``one``
  messages): re-routed to another node, or cached (consumed once) if no node
  has a subscriber. Jobs delayed by a nack stay until due, then go back too.
- **A full queue.** A ``one`` that arrives while this node holds ``max_jobs``
  jobs (or ``max_job_bytes``) is returned to the backend instead (a send in
  cluster mode is accepted by the backend, before any node sees it: there is
  no ``Work queue full`` reply).
- **Subscribe** with ``ack`` validates as on one node, then joins the
  topic's mirror like any subscribe; the cached ``one`` messages the load
  claimed (pending for this node from then on) become jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._ack_commands import prefetch_of
from ._acks import Job, WorkQueue, WorkQueues
from ._broker import Broker
from ._connection import Connection
from ._protocol import Subscribe

if TYPE_CHECKING:
    from ._cluster_batch import ClusterWork, Delivered

__all__ = ["ClusterAcks", "ClusterWorkQueues"]

class ClusterWorkQueues(WorkQueues):
    """:class:`WorkQueues` that report each job done, and give back a queue's ready jobs."""

    def __init__(self, base: WorkQueues, done: Callable[[str, int], None]) -> None:
        super().__init__(base.limits, None, base._emit, base._dead_letter)
        self._on_done = done

    def _done(self, job: Job) -> None:
        super()._done(job)
        self._on_done(job.queue.name, job.index)

    def orphaned(self, name: str) -> list[Job]:
        """The ready jobs of ``name`` if no consumer of it is left here: taken off this node."""
        queue: WorkQueue | None = self.queues.get(name)
        if queue is None or queue.consumers or not queue.ready:
            return []
        jobs = list(queue.ready)
        queue.ready.clear()
        for job in jobs:
            # Not done: going back to the backend, still pending there.
            queue.held -= 1
            self.jobs -= 1
            self.job_bytes -= len(job.data)
        self._settle(queue)
        return jobs

    def with_orphans(self) -> list[str]:
        """Topics with ready jobs and no consumer here (after a nack delay ran out)."""
        return [name for name, q in self.queues.items() if q.ready and not q.consumers]


class ClusterAcks(Broker):
    """The part of :class:`~mqcore._cluster.ClusterBroker` that runs its work queues.

    A link in the chain of bases (single inheritance keeps the core
    compilable by mypyc, which allows one non-trait base).
    """

    _jobs: ClusterWorkQueues  # the same object as _acks
    _work: ClusterWork
    _node_bytes: bytes

    # Provided by mqcore._cluster.ClusterBroker.
    def _return(self, name: str, ones: list[Delivered]) -> None:
        raise NotImplementedError

    def _consumer(self, conn: Connection, name: str, command: Subscribe) -> WorkQueue | None:
        """Make ``conn``'s consumer of ``name`` if ``command`` asks for one: its queue."""
        if command.ack is not True:
            return None
        return self._jobs.subscribe(conn, name, prefetch_of(command))

    def _claim(self, queue: WorkQueue, ones: list[Delivered]) -> bool:
        """The cached ``one``s the load claimed become jobs (pending for this node); True if any."""
        acks = self._jobs
        for index, _, line in ones:
            acks.add(queue, index, line)
        acks.dispatch(queue)
        return bool(ones)

    def _job_done(self, name: str, index: int) -> None:
        """A job was acked or dead-lettered: the node confirms it to the backend."""
        self._work.confirms.append((name, [index]))

    def _return_jobs(self, name: str) -> None:
        """No consumer of ``name`` left here: its ready jobs go back to the backend."""
        kind = b"p" + self._node_bytes
        self._return(name, [(job.index, kind, job.data) for job in self._jobs.orphaned(name)])

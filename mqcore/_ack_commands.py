"""The commands of acknowledged delivery: ``subscribe`` with ``ack``, ``ack``, ``nack``.

:class:`AckCommands` is the part of :class:`~mqcore.Broker` that turns those
commands into calls on its :class:`~mqcore._acks.WorkQueues` (whose docstring
holds the rules) and replies, makes dead letters, and lets the transport pass
time in (:meth:`AckCommands.advance`, :meth:`AckCommands.next_deadline`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from ._acks import DEAD_SUFFIX, DEFAULT_PREFETCH, MAX_PREFETCH, Job, WorkQueues
from ._connection import Connection, ConnectionId
from ._journal import Journal
from ._protocol import REFUSED, SUCCESS, Ack, Nack, Reason, Send, Subscribe
from ._records import JobState
from ._state import Topic
from ._subjects import is_pattern
from ._topics import TopicTable

__all__ = ["AckCommands"]

_ENCODER: Final = msgspec.json.Encoder()


def prefetch_of(command: Subscribe) -> int:
    """The prefetch an acknowledging ``subscribe`` asks for (the default if none)."""
    return DEFAULT_PREFETCH if command.prefetch is msgspec.UNSET else command.prefetch


class AckCommands:
    """Acknowledged delivery's commands; :class:`~mqcore.Broker` sets the state up."""

    _acks: WorkQueues
    _journal: Journal | None
    _table: TopicTable
    _topics: dict[str, Topic]

    # Provided by mqcore._commands.Commands.
    def _emit(self, conn: Connection, chunk: bytes) -> None:
        raise NotImplementedError

    def _fail(self, conn: Connection, reply: bytes) -> None:
        raise NotImplementedError

    def _join(self, conn: Connection, name: str) -> Topic | None:
        raise NotImplementedError

    def _send(self, conn: Connection, command: Send, line: bytes) -> None:
        raise NotImplementedError

    # -- the transport's side ----------------------------------------------------------

    def advance(self, now: float) -> None:
        """The time is ``now`` (monotonic seconds): redeliver what is due.

        Call it before feeding input (a delivery's ack wait counts from the
        last ``now``) and at :meth:`next_deadline`; then take the output.
        """
        self._acks.advance(now)

    def next_deadline(self) -> float | None:
        """When :meth:`advance` must next be called, or None if nothing waits."""
        return self._acks.next_deadline()

    def restore_jobs(self, jobs: Iterable[JobState]) -> None:
        """Load the unacknowledged jobs a store kept (after :meth:`Broker.restore`)."""
        self._acks.restore(jobs)

    def pending(self, cid: ConnectionId, topic: str) -> list[int]:
        """The indices pending on ``cid``'s acknowledging subscription to ``topic``."""
        return self._acks.pending(cid, topic)

    # -- the commands ---------------------------------------------------------------------

    def _ack_refusal(self, command: Subscribe) -> bytes | None:
        """The reply refusing the acknowledging subscribe ``command`` as such, or None."""
        if not 0 <= prefetch_of(command) <= MAX_PREFETCH:
            return REFUSED[Reason.BAD_PREFETCH]
        if is_pattern(command.topic):
            return REFUSED[Reason.ACK_PATTERN]
        if self._table.name_too_long(command.topic + DEAD_SUFFIX):
            # Its dead letters would have nowhere to go.
            return REFUSED[Reason.TOPIC_TOO_LONG]
        return None

    def _subscribe_ack(self, conn: Connection, command: Subscribe) -> None:
        name = command.topic
        refusal = self._ack_refusal(command)
        if refusal is not None:
            self._fail(conn, refusal)
            return
        prefetch = prefetch_of(command)
        topic = self._join(conn, name)
        if topic is None:
            return
        acks = self._acks
        queue = acks.subscribe(conn, name, prefetch)
        self._emit(conn, SUCCESS)
        if topic.cache:
            if command.cache:
                last_seen = command.last_seen
                for entry in topic.cache:
                    if not entry.one and entry.index > last_seen:
                        self._emit(conn, entry.data)
            claimed = []
            for entry in topic.cache:
                if entry.one:
                    if not acks.has_room(len(entry.data)):
                        break
                    claimed.append(entry)
                    acks.add(queue, entry.index, entry.data)
            if claimed:
                if self._journal is not None:
                    self._journal.claimed(name, claimed)
                self._table.consume(topic, claimed)
        acks.dispatch(queue)

    def _ack(self, conn: Connection, command: Ack) -> None:
        reply = self._acks.ack(conn.id, command.topic, command.index)
        if reply is SUCCESS:
            self._emit(conn, reply)
        else:
            self._fail(conn, reply)

    def _nack(self, conn: Connection, command: Nack) -> None:
        reply = self._acks.nack(
            conn.id, command.topic, command.index, command.delay, command.reason
        )
        if reply is SUCCESS:
            self._emit(conn, reply)
        else:
            self._fail(conn, reply)

    def _dead_letter(self, name: str, job: Job, reason: str) -> bool:
        """Send ``job`` to ``name + ".dead"`` as a ``one`` message; False if refused."""
        dead = name + DEAD_SUFFIX
        msg = msgspec.json.decode(job.data, type=dict[str, object]).get("msg")
        text = msg if isinstance(msg, str) else ""
        line = _ENCODER.encode(
            {
                "command": "send",
                "topic": dead,
                "msg": text,
                "delivery": "one",
                "dead_index": job.index,
                "attempts": job.attempts,
                "reason": reason,
            }
        )
        # The broker itself is the sender: its reply goes to a connection
        # nobody reads, and says whether the message went in.
        sink = Connection(ConnectionId(-1))
        self._send(sink, Send(dead, text, "one"), line)
        sent = sink.out == [SUCCESS]
        sink.out = None  # so take_output() skips it
        return sent

"""A commit that spans loop turns: outputs held for one store commit, and when it must end.

Theory of operation. The store's cost per commit is mostly per *topic*
(a chunk row, a topic row, the planner's and the mirror's bookkeeping), not
per message: with 1,000 topics each loop turn brings one or two messages
per topic, so committing every turn pays the per-topic cost for every one
or two messages. The inline committer therefore holds a turn's outputs in a
:class:`Span` while reads keep arriving, and stores them together with the
following turns', one chunk per topic for all of them.

A span ends, and its records are stored and its outputs released in order,
as soon as any of these holds:

- no read followed: an output arrived and then a check (two scheduler
  passes later, after the loop polled its sockets) found no new output, so
  a client waiting for its reply (an idle sender, a request/reply loop)
  never waits for more than a couple of loop iterations;
- it holds :data:`MAX_SPAN_OUTPUTS` outputs, :data:`MAX_SPAN_RECORDS`
  records, or :data:`MAX_SPAN_BYTES` bytes (written bytes and stored message
  bytes): the memory held is bounded whatever the load;
- it has been open for :data:`SPAN_FACTOR` times as long as the previous
  commit took (at most :data:`MAX_SPAN_SECONDS`): spans stay short where
  commits are cheap (light load, small batches), so acknowledgements move
  later only by a small multiple of what the store costs anyway, and only
  while the server is busy.

This only moves acknowledgements later under load: nothing is released
before its records are stored, so the durability contract is unchanged.
"""

from __future__ import annotations

from typing import Final

from mqcore import CacheAdd, JobAdd, Output

__all__ = [
    "MAX_SPAN_BYTES",
    "MAX_SPAN_OUTPUTS",
    "MAX_SPAN_RECORDS",
    "MAX_SPAN_SECONDS",
    "SPAN_FACTOR",
    "Span",
]

#: Outputs (about one per loop turn) one span holds at most.
MAX_SPAN_OUTPUTS: Final = 64
#: Records one span holds at most (one per message, plus one or two per topic per turn).
MAX_SPAN_RECORDS: Final = 65_536
#: Bytes one span holds at most: bytes to write plus stored message bytes.
MAX_SPAN_BYTES: Final = 16 << 20
#: A span stays open at most this many times as long as the previous commit took...
SPAN_FACTOR: Final = 4.0
#: ...and never longer than this (seconds).
MAX_SPAN_SECONDS: Final = 0.5


class Span:
    """Outputs waiting for one commit, in the order submitted, and what they hold."""

    __slots__ = ("bytes", "outputs", "records", "started")

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.records = 0
        self.bytes = 0
        #: When the first output of this span came (``time.monotonic()``).
        self.started = 0.0

    def add(self, output: Output, now: float) -> bool:
        """Hold ``output``; True if the span reached a bound and must be committed now."""
        outputs = self.outputs
        if not outputs:
            self.started = now
        outputs.append(output)
        records = output.records
        self.records += len(records)
        size = 0
        for chunks in output.writes.values():
            size += sum(map(len, chunks))
        for record in records:
            # Most records are messages; a topic's NextIndex or CacheTrim hold no data.
            if type(record) is CacheAdd or type(record) is JobAdd:
                size += len(record.data)
        self.bytes += size
        return (
            len(outputs) >= MAX_SPAN_OUTPUTS
            or self.records >= MAX_SPAN_RECORDS
            or self.bytes >= MAX_SPAN_BYTES
        )

    def due(self, now: float, last_commit_seconds: float) -> bool:
        """Whether the span has been open long enough, given what the last commit took."""
        return now - self.started >= min(SPAN_FACTOR * last_commit_seconds, MAX_SPAN_SECONDS)

    def take(self) -> list[Output]:
        """The held outputs, in order; the span is empty again."""
        outputs, self.outputs = self.outputs, []
        self.records = self.bytes = 0
        return outputs

"""Jobs of work queues in the store: their table, their write plan, their loading.

Layout (added to schema 2 by ``CREATE TABLE IF NOT EXISTS`` at every open, so
an older mqcore still opens the file and only ignores the table)::

    jobs(topic, idx, attempts, data, crc)  -- one row per unacknowledged job;
                                              crc covers topic, idx and data

Rules: a batch's :class:`~mqcore.JobAdd`, :class:`~mqcore.JobAttempts` and
:class:`~mqcore.JobDone` records are folded per job, in order, into one write
each (a job added and done in the same batch never reaches the file), so
the cost is one row per job per batch, whatever its records. A row that
fails its checksum at load is dropped and counted as lost, like a damaged
chunk. Jobs are independent of topics: :class:`~mqcore.DropTopic` leaves
them alone.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from mqcore import JobAdd, JobAttempts, JobDone, JobState, Record

from ._sql import transaction

__all__ = ["CREATE_JOBS", "JobWrites", "load_jobs", "plan_jobs", "split_jobs"]

CREATE_JOBS: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    topic TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (topic, idx)
) WITHOUT ROWID
"""

_JOB_RECORDS: Final = (JobAdd, JobAttempts, JobDone)
_JOB_TYPES: Final[frozenset[type]] = frozenset(_JOB_RECORDS)


def _crc(topic: str, index: int, data: bytes) -> int:
    # Not over attempts: an attempt is one UPDATE, no read; a damaged count
    # only changes when the job is dead-lettered.
    return zlib.crc32(b"%s\x00%d\x00%s" % (topic.encode(), index, data))


JobRecord = JobAdd | JobAttempts | JobDone


def split_jobs(records: Sequence[Record]) -> tuple[Sequence[Record], list[JobRecord]]:
    """The batch without its job records, and its job records (in order)."""
    # Most batches hold no job record: one pass in C (map, set) tells.
    if _JOB_TYPES.isdisjoint(map(type, records)):
        return records, []
    jobs: list[JobRecord] = [r for r in records if isinstance(r, _JOB_RECORDS)]
    return [r for r in records if not isinstance(r, _JOB_RECORDS)], jobs


@dataclass
class JobWrites:
    """The rows one batch writes: new rows, attempt updates, deletions."""

    added: dict[tuple[str, int], tuple[int, bytes]] = field(default_factory=dict)
    attempts: dict[tuple[str, int], int] = field(default_factory=dict)
    deleted: set[tuple[str, int]] = field(default_factory=set)

    def write(self, conn: sqlite3.Connection) -> None:
        if self.deleted:
            conn.executemany("DELETE FROM jobs WHERE topic = ? AND idx = ?", list(self.deleted))
        if self.added:
            conn.executemany(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?)",
                [(t, i, a, d, _crc(t, i, d)) for (t, i), (a, d) in self.added.items()],
            )
        if self.attempts:
            conn.executemany(
                "UPDATE jobs SET attempts = ? WHERE topic = ? AND idx = ?",
                [(a, t, i) for (t, i), a in self.attempts.items()],
            )


def plan_jobs(records: Sequence[JobRecord]) -> JobWrites:
    """Fold job records, in order, into one write per job."""
    writes = JobWrites()
    added, attempts, deleted = writes.added, writes.attempts, writes.deleted
    for record in records:
        key = (record.topic, record.index)
        if isinstance(record, JobAdd):
            added[key] = (record.attempts, record.data)
            deleted.discard(key)
        elif isinstance(record, JobAttempts):
            new = added.get(key)
            if new is not None:
                added[key] = (record.attempts, new[1])
            else:
                attempts[key] = record.attempts
        else:
            attempts.pop(key, None)
            if added.pop(key, None) is None:
                deleted.add(key)
    return writes


def load_jobs(conn: sqlite3.Connection) -> tuple[list[JobState], int]:
    """Every intact stored job, and how many rows were dropped as damaged."""
    jobs: list[JobState] = []
    damaged: list[tuple[object, object]] = []
    for topic, index, attempts, data, crc in conn.execute(
        "SELECT topic, idx, attempts, data, crc FROM jobs ORDER BY topic, idx"
    ):
        if (
            isinstance(topic, str)
            and isinstance(index, int)
            and isinstance(attempts, int)
            and attempts >= 0
            and isinstance(data, bytes)
            and data.endswith(b"}\r\n")
            and crc == _crc(topic, index, data)
        ):
            jobs.append(JobState(topic, index, data, attempts))
        else:
            damaged.append((topic, index))
    if damaged:
        with transaction(conn):
            conn.executemany("DELETE FROM jobs WHERE topic = ? AND idx = ?", damaged)
    return jobs, len(damaged)

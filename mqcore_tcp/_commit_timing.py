"""How long store commits take: a histogram of plain integers, for ``mqcore_store_commit_seconds``.

Theory of operation. :class:`TimedStore` wraps the hub's store and times
each ``apply`` (one per group commit, never per message) into fixed buckets.
The commit thread of the threaded pipeline is the only writer; a scrape reads
the integers whenever it comes, without a lock (a scrape racing a commit may
see that commit in the count but not yet in the sum: harmless for monitoring).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import Final

from mqcore import Record, Snapshot, Store

__all__ = ["COMMIT_BUCKETS", "CommitTiming", "TimedStore"]

#: Upper bounds (seconds) of the histogram's buckets; +Inf is implied.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CommitTiming:
    """Counts of commits per bucket (the last one is +Inf) and the total seconds."""

    def __init__(self) -> None:
        self.counts = [0] * (len(COMMIT_BUCKETS) + 1)
        self.total_seconds = 0.0

    def add(self, seconds: float) -> None:
        """Count one commit that took ``seconds``."""
        self.counts[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1
        self.total_seconds += seconds


class TimedStore:
    """A :class:`mqcore.Store` that times every ``apply`` of the store it wraps."""

    def __init__(self, store: Store, timing: CommitTiming) -> None:
        self.store = store
        self.timing = timing
        self.commit_in_thread = store.commit_in_thread

    def load(self) -> Snapshot:
        return self.store.load()

    def apply(self, records: Sequence[Record]) -> None:
        start = time.perf_counter()
        try:
            self.store.apply(records)
        finally:
            self.timing.add(time.perf_counter() - start)

    def close(self) -> None:
        self.store.close()

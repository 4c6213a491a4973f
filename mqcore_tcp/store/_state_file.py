"""The state file next to the store (``mqcore.state``): what the store last committed.

SQLite can lose its last commits without noticing: power loss with
``--fsync batch`` or ``off`` may drop the end of the write-ahead log, and an
operator may restore an old copy of the file or delete it. Indices handed
out again under the same epoch would then be taken by clients for messages
they already saw. So the store counts its commits (``meta.commits``, in the
same transaction as the records) and, after each commit, overwrites this
small file with the epoch and the count: one ``pwrite`` of a fixed-size
record on a descriptor kept open, no fsync (enough for a killed process; for
power loss it is a best-effort check, as the file's own write may be lost).

On open, the store compares: a file with the same epoch and a higher count
than the database means the database went back in time (commits were lost);
a state file without a database (missing or empty) means the store was lost.
Either way the store starts a new epoch and logs what may be lost.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Final

__all__ = ["StateFile"]

_MAGIC: Final = "mqcore-state"
_VERSION: Final = 1
#: Records are padded to this size so an overwrite never leaves an old tail.
_RECORD_BYTES: Final = 128


class StateFile:
    """Read and overwrite the state file at ``path``; writing never raises."""

    def __init__(self, path: Path) -> None:
        self.path: Final = path
        self._fd: int | None = None

    def read(self) -> tuple[str, int] | None:
        """The (epoch, commits) last written, or None if there is no readable record."""
        try:
            text = self.path.read_bytes()[: 4 * _RECORD_BYTES].decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        parts = text.split()
        if len(parts) != 4 or parts[0] != _MAGIC or parts[1] != str(_VERSION):
            return None
        epoch, commits = parts[2], parts[3]
        if not commits.isdigit():
            return None
        return epoch, int(commits)

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, epoch: str, commits: int) -> None:
        """Overwrite the record; a failure (disk full, read-only) only weakens the next check."""
        record = f"{_MAGIC} {_VERSION} {epoch} {commits}\n".encode().ljust(_RECORD_BYTES)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            if hasattr(os, "pwrite"):
                os.pwrite(self._fd, record, 0)
            else:  # pragma: no cover - Windows
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.write(self._fd, record)
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

"""Accepting connections when the process runs out of file descriptors.

At the open-file limit (``EMFILE``, or ``ENFILE`` system-wide) ``accept()``
fails while the listening socket stays readable, so a plain accept loop
spins: it burns a core and, under asyncio, logs a traceback per attempt.
Every accept loop of the server therefore waits after such a failure,
longer each time up to :data:`MAX_BACKOFF`, and logs once per episode: a
warning when it starts and a note when accepting works again. Connections
already served are not affected; a waiting client is accepted once a
descriptor is free.
"""

from __future__ import annotations

import errno
import logging
from typing import Final

__all__ = ["MAX_BACKOFF", "AcceptBackoff", "out_of_descriptors"]

log = logging.getLogger("mqcore_tcp")

#: First and longest wait after accept() failed for want of resources.
MIN_BACKOFF: Final = 0.01
MAX_BACKOFF: Final = 1.0

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def out_of_descriptors(exc: BaseException) -> OSError | None:
    """The resource error behind ``exc`` (itself or its cause), if it is one."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, OSError) and candidate.errno in _RESOURCE_ERRNOS:
            return candidate
    return None


class AcceptBackoff:
    """How long one listener waits after a failed accept, with one log line per episode."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._delay = 0.0

    def failed(self, exc: OSError) -> float:
        """Note a failed accept; return how long to wait before the next."""
        if not self._delay:
            log.warning(
                "%s: cannot accept connections: %s; retrying with back-off until one is free",
                self.name,
                exc.strerror or exc,
            )
            self._delay = MIN_BACKOFF
        else:
            self._delay = min(self._delay * 2, MAX_BACKOFF)
        return self._delay

    def succeeded(self) -> None:
        """Note an accepted connection (ending an episode, if one was under way)."""
        if self._delay:
            self._delay = 0.0
            log.warning("%s: accepting connections again", self.name)

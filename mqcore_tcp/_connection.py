"""What the hub needs from one connection, whatever carries it: the :class:`Connection` protocol.

A transport (asyncio Protocols, anyio byte streams, ...) makes one object per
accepted connection that satisfies :class:`Connection`, registers it with
:meth:`mqcore_tcp._hub.Hub.connect`, and reports to the hub what happens to it
(bytes read, end of input, bytes handed to the kernel, the end). The hub never
touches a socket; a transport never touches the broker.

The one number a connection keeps for the hub is :attr:`Connection.queued`:
the bytes written to it that have not yet been handed to the operating
system. The hub compares it with ``max_queued_bytes`` (a subscriber that does
not read is dropped) and, since it counts every byte it wrote, knows from it
how many bytes actually left: a ``one`` message is recorded as consumed only
once its bytes did.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Connection"]


class Connection(Protocol):
    """The write side of one connection, as the hub drives it."""

    @property
    def queued(self) -> int:
        """Bytes written to it and not yet handed to the operating system."""
        ...

    def write(self, chunks: list[bytes]) -> int:
        """Send ``chunks``, in order, after everything written before (never blocks).

        Return :attr:`queued` after the write (one call instead of two on the hot path).
        """
        ...

    def close_when_flushed(self) -> None:
        """Send what is queued, end the write side, then close (within a bounded time)."""
        ...

    def abort(self) -> None:
        """Close now, dropping anything unsent."""
        ...

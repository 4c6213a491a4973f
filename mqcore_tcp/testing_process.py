"""A child process stopped by pid: what the mqcore and redis-server launchers share.

Stop is graceful first: :meth:`ChildProcess.stop` sends SIGTERM, waits up to
``grace`` seconds, then SIGKILLs; :meth:`~ChildProcess.kill` is a crash.
Every wait has a bound; the ``async`` variants wait in a worker thread, so
they work under asyncio and trio alike.
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import suppress
from functools import partial

import anyio
import anyio.to_thread

__all__ = ["DEFAULT_TIMEOUT", "ChildProcess"]

#: Seconds to wait for a server to be ready, or to exit once stopped.
DEFAULT_TIMEOUT = 30.0


class ChildProcess:
    """A started child process; a subclass says where its ``Popen`` is (:attr:`_process`)."""

    @property
    def _process(self) -> subprocess.Popen[str] | subprocess.Popen[bytes]:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """Its process id."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has exited (negative: killed by that signal), else ``None``."""
        return self._process.poll()

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to it, unless it has already exited."""
        self._process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL it: a crash, not a graceful stop."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM it: a graceful stop."""
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Wait for it to exit; its exit status. Raises ``subprocess.TimeoutExpired``."""
        return self._process.wait(timeout)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM it, wait up to ``grace`` seconds, then SIGKILL it; its exit status."""
        if self.returncode is None:
            self.terminate()
            with suppress(subprocess.TimeoutExpired):
                return self.wait(grace)
            self.kill()
        return self.wait(DEFAULT_TIMEOUT)

    def reap(self) -> None:
        """After a failed start: SIGKILL it if it still runs, and wait for it to exit."""
        if self.returncode is None:
            self.kill()
        self.wait(DEFAULT_TIMEOUT)

    async def wait_async(self) -> int:
        """:meth:`wait` without a bound, without blocking the event loop."""
        return await anyio.to_thread.run_sync(partial(self.wait, None), abandon_on_cancel=True)

    async def stop_async(self, grace: float = 10.0) -> int:
        """:meth:`stop` without blocking the event loop."""
        return await anyio.to_thread.run_sync(partial(self.stop, grace), abandon_on_cancel=True)

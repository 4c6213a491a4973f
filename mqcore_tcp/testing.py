"""Run ``python -m mqcore_tcp`` as a subprocess: the one launcher of tests and benchmarks.

Theory of operation:

- **Start.** :func:`launch` runs ``python -m mqcore_tcp [--port PORT] ARGS``
  with this interpreter (or ``python=``), its log on a pipe. ``port`` 0 (the
  default) lets the server bind any free port, so nothing races for a port
  chosen in advance; with a ``--listen`` in ``ARGS`` no ``--port`` is added.
- **Ready.** A daemon thread reads the log line by line into
  :attr:`ServerProcess.log`. The server is ready once it has logged
  ``mqcore listening on ADDRESS`` (``HOST:PORT``, ``[V6]:PORT`` or
  ``unix:///path``) once per listener it was asked for (one per
  ``--listen``, else one). Waiting is on that event, never a sleep, and
  bounded by ``ready_within`` seconds; a server that exits first, or stays silent too
  long, is killed and raises :class:`ServerStartError` with its log. The
  line is logged at ``INFO``, so a ``--log-level`` above it is refused.
- **Running.** The thread keeps draining the log (so a chatty server never
  blocks on a full pipe) unless ``keep_stderr`` hands the rest of the pipe
  to the caller, for a test that reads it itself.
- **Stop.** By pid, as :mod:`mqcore_tcp.testing_process` says:
  :meth:`ServerProcess.stop` sends SIGTERM (a graceful stop), waits up to
  ``grace`` seconds, then SIGKILLs; :meth:`~ServerProcess.kill` is a crash.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from .testing_process import DEFAULT_TIMEOUT, ChildProcess

__all__ = [
    "DEFAULT_TIMEOUT",
    "ServerProcess",
    "ServerStartError",
    "launch",
    "launch_async",
    "listening_address",
    "listening_port",
    "running",
    "running_async",
    "server_command",
]

_LISTENING = re.compile(r"mqcore listening on (\S+)\s*$")
_QUIET_LEVELS = {"warning", "error", "critical"}


class ServerStartError(RuntimeError):
    """The server exited, or stayed silent, before it listened; the message holds its log."""


def listening_address(log_line: str) -> str | None:
    """The address a ``mqcore listening on ADDRESS`` log line names; ``None`` for other lines.

    ``ADDRESS`` is ``HOST:PORT``, ``[V6]:PORT`` or ``unix:///path``, as logged.
    """
    found = _LISTENING.search(log_line)
    return found.group(1) if found else None


def listening_port(log_line: str) -> int | None:
    """The TCP port a listening log line names; ``None`` for other lines and Unix sockets."""
    address = listening_address(log_line)
    if address is None or address.startswith("unix:"):
        return None
    return int(address.rsplit(":", 1)[1])


def server_command(*args: str, python: str | None = None) -> list[str]:
    """The command line of ``python -m mqcore_tcp *args`` (this interpreter by default)."""
    return [python or sys.executable, "-m", "mqcore_tcp", *args]


def _expected_listeners(args: Sequence[str]) -> int:
    listens = sum(1 for a in args if a == "--listen" or a.startswith("--listen="))
    return max(listens, 1)


def _check_log_level(args: Sequence[str]) -> None:
    for i, arg in enumerate(args):
        if arg == "--log-level" and i + 1 < len(args):
            level = args[i + 1]
        elif arg.startswith("--log-level="):
            level = arg.split("=", 1)[1]
        else:
            continue
        if level.lower() in _QUIET_LEVELS:
            raise ValueError(
                f"--log-level {level} hides the INFO line the launcher waits for; use INFO or DEBUG"
            )


class ServerProcess(ChildProcess):
    """A running ``python -m mqcore_tcp``: its process, its listeners and its log so far."""

    def __init__(
        self, popen: subprocess.Popen[str], command: str, listeners: int, keep_stderr: bool
    ) -> None:
        self.popen = popen
        #: The command line, for messages.
        self.command = command
        #: The log lines read so far, without their line ends (appended by the reader thread).
        self.log: list[str] = []
        #: Every ``listening on`` address, in the order logged.
        self.addresses: list[str] = []
        self._listeners = listeners
        self._keep_stderr = keep_stderr
        self._settled = threading.Event()  # listening, or the log ended first
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    @property
    def _process(self) -> subprocess.Popen[str]:
        return self.popen

    @property
    def port(self) -> int:
        """The port of its first TCP listener."""
        for address in self.addresses:
            if not address.startswith("unix:"):
                return int(address.rsplit(":", 1)[1])
        raise LookupError(f"no TCP listener among {self.addresses}")

    @property
    def url(self) -> str:
        """Its first listener as a client URL: ``mqcore://HOST:PORT`` or ``unix:///path``."""
        first = self.addresses[0]
        return first if first.startswith("unix:") else f"mqcore://{first}"

    def _read_log(self) -> None:
        stream = self.popen.stderr
        assert stream is not None
        for raw in stream:
            text = raw.rstrip("\n")
            self.log.append(text)
            address = listening_address(text)
            if address is not None:
                self.addresses.append(address)
                if len(self.addresses) >= self._listeners:
                    self._settled.set()
                    if self._keep_stderr:
                        return  # the caller reads the rest of the pipe
        self._settled.set()
        stream.close()

    def wait_listening(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once it listens; else kill it and raise :class:`ServerStartError`."""
        self._settled.wait(timeout)
        if len(self.addresses) >= self._listeners:
            return
        if self._settled.is_set():
            why = f"exited with status {self.wait(timeout)} before listening"
        else:
            self.kill()
            self.wait(timeout)
            why = f"did not log 'mqcore listening on' within {timeout:g} s"
        log = "\n".join(self.log[-20:])
        raise ServerStartError(f"{self.command}: {why}; its log:\n{log}")

    def wait(self, timeout: float | None = DEFAULT_TIMEOUT) -> int:
        """Wait for it to exit; its exit status. Raises ``subprocess.TimeoutExpired``."""
        status = super().wait(timeout)
        if not self._keep_stderr:
            self._reader.join(timeout)
        return status


def _popen(
    args: Sequence[str],
    port: int | None,
    env: Mapping[str, str] | None,
    cwd: str | Path | None,
    keep_stderr: bool,
    python: str | None,
) -> ServerProcess:
    _check_log_level(args)
    listeners = _expected_listeners(args)
    if port is not None and not any(a.startswith("--listen") for a in args):
        args = ["--port", str(port), *args]
    command = server_command(*args, python=python)
    popen = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        cwd=cwd,
    )
    return ServerProcess(popen, " ".join(command), listeners, keep_stderr)


def launch(
    *args: str,
    port: int | None = 0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_within: float = DEFAULT_TIMEOUT,
    keep_stderr: bool = False,
    python: str | None = None,
) -> ServerProcess:
    """Start ``python -m mqcore_tcp [--port PORT] *args``; return it once it listens.

    ``port`` ``None`` passes ``args`` as they are (for the reference's
    positional form); ``env`` replaces the environment; the caller stops it
    (or use :func:`running`).
    """
    server = _popen(args, port, env, cwd, keep_stderr, python)
    try:
        server.wait_listening(ready_within)
    except BaseException:
        server.reap()
        raise
    return server


@contextmanager
def running(
    *args: str,
    port: int | None = 0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    grace: float = 10.0,
) -> Iterator[ServerProcess]:
    """:func:`launch` it; on leaving, :meth:`~ServerProcess.stop` it (SIGTERM, then SIGKILL)."""
    server = launch(*args, port=port, env=env, cwd=cwd)
    try:
        yield server
    finally:
        server.stop(grace)


async def launch_async(
    *args: str,
    port: int | None = 0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_within: float = DEFAULT_TIMEOUT,
    python: str | None = None,
) -> ServerProcess:
    """:func:`launch` from async code: the wait for its log line does not block the loop."""
    server = _popen(args, port, env, cwd, False, python)
    try:
        await anyio.to_thread.run_sync(
            partial(server.wait_listening, ready_within), abandon_on_cancel=True
        )
    except BaseException:
        if server.returncode is None:
            server.kill()
        with anyio.CancelScope(shield=True):
            await server.wait_async()
        raise
    return server


@asynccontextmanager
async def running_async(
    *args: str,
    port: int | None = 0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    grace: float = 10.0,
) -> AsyncIterator[ServerProcess]:
    """:func:`launch_async` it; on leaving, stop it (SIGTERM, then SIGKILL)."""
    server = await launch_async(*args, port=port, env=env, cwd=cwd)
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop_async(grace)

"""One real ``redis-server`` process: start on a free port, wait until it answers, stop by pid.

The rules (ports, readiness, files, stop) are described in
:mod:`mqcore_tcp.testing_redis`, which re-exports everything here.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from .testing_process import DEFAULT_TIMEOUT, ChildProcess
from .testing_redis_probe import RedisError, RedisReply, free_port, redis_command

__all__ = [
    "DEFAULT_TIMEOUT",
    "RedisNotInstalled",
    "RedisServer",
    "RedisStartError",
    "redis_available",
    "require_redis",
    "running_redis",
    "running_redis_async",
    "start_redis",
    "start_redis_async",
]

#: Attempts at a free port before giving up (another process took it in between).
_PORT_ATTEMPTS = 5
#: How often the readiness check polls.
_POLL = 0.02
_IN_USE = ("Address already in use", "bind:")


class RedisNotInstalled(RuntimeError):
    """``redis-server`` (or ``redis-cli``) is not on ``PATH``."""


class RedisStartError(RuntimeError):
    """The server exited, or never answered ``PING``; the message holds its log."""


def redis_available(cluster: bool = False) -> str | None:
    """``None`` when the Redis programs are on ``PATH``; else why not, for a skip or an error."""
    needed = ["redis-server", "redis-cli"] if cluster else ["redis-server"]
    missing = [name for name in needed if shutil.which(name) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} not on PATH (apt-get install redis-server)"


def require_redis(cluster: bool = False) -> None:
    why = redis_available(cluster)
    if why is not None:
        raise RedisNotInstalled(why)


class RedisServer(ChildProcess, AbstractContextManager["RedisServer"]):
    """A running ``redis-server`` on ``127.0.0.1``: its process, port, directory and log."""

    def __init__(
        self, port: int, directory: Path, own_directory: bool, extra_args: Sequence[str]
    ) -> None:
        #: Its port (kept across :meth:`restart`).
        self.port = port
        #: Its ``--dir``: the AOF and the log live there.
        self.directory = directory
        self._own_directory = own_directory
        self._extra_args = list(extra_args)
        self.popen: subprocess.Popen[bytes] | None = None

    # -- what it is ----------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``: what ``--cluster`` takes."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as ``redis-cli --cluster`` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Its log file."""
        return self.directory / "redis.log"

    def log(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> RedisReply:
        """:func:`redis_command` on this server."""
        return redis_command(self.port, *args, timeout=timeout)

    @property
    def _process(self) -> subprocess.Popen[bytes]:
        if self.popen is None:
            raise RuntimeError("redis-server was never started")
        return self.popen

    # -- start ---------------------------------------------------------------

    def _command_line(self) -> list[str]:
        return [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            *self._extra_args,
        ]  # fmt: skip

    def _spawn(self) -> None:
        self.popen = subprocess.Popen(
            self._command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _lost_port(self) -> bool:
        """Whether it exited because another process holds its port."""
        return self.returncode is not None and any(s in self.log() for s in _IN_USE)

    def _answers_as_itself(self) -> bool:
        """Whether ``PING`` answers and the answering server is this process, not a squatter."""
        if self.command("PING", timeout=1.0) != b"PONG":
            return False
        info = self.command("INFO", "server", timeout=1.0)
        assert isinstance(info, bytes)
        return f"process_id:{self.pid}\r\n".encode() in info

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once it answers ``PING``; else kill it and raise :class:`RedisStartError`."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise RedisStartError(
                    f"redis-server on port {self.port} exited with status {self.returncode}"
                    f" before answering; its log:\n{self.log()}"
                )
            try:
                if self._answers_as_itself():
                    return
                last_error = "another process answers on its port"
            except (OSError, RedisError) as error:  # not listening yet, or -LOADING
                last_error = str(error)
            time.sleep(_POLL)
        self.kill()
        self.wait(DEFAULT_TIMEOUT)
        raise RedisStartError(
            f"redis-server on port {self.port} did not answer PING within {timeout:g} s"
            f" ({last_error}); its log:\n{self.log()}"
        )

    def start(self, ready_within: float = DEFAULT_TIMEOUT) -> None:
        """Start it on its port and wait until it answers (used by :meth:`restart`)."""
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"redis-server on port {self.port} is still running")
        with suppress(FileNotFoundError):
            self.log_path.unlink()
        self._spawn()
        try:
            self.wait_ready(ready_within)
        except BaseException:
            self.reap()
            raise

    # -- stop ----------------------------------------------------------------

    def stop(self, grace: float = 10.0, *, cleanup: bool = False) -> int:
        """SIGTERM it, wait up to ``grace`` seconds, then SIGKILL it; its exit status.

        ``cleanup`` also removes its directory when the launcher made it.
        """
        status = super().stop(grace)
        if cleanup:
            self.cleanup()
        return status

    def restart(self, grace: float = 10.0, ready_within: float = DEFAULT_TIMEOUT) -> None:
        """Stop it (if running) and start it again on the same port and directory."""
        if self.popen is not None:
            self.stop(grace)
        self.start(ready_within)

    def cleanup(self) -> None:
        """Remove its directory if the launcher made it (once it has stopped)."""
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def restart_async(self, grace: float = 10.0) -> None:
        """:meth:`restart` without blocking the event loop."""
        await anyio.to_thread.run_sync(partial(self.restart, grace), abandon_on_cancel=True)

    def __exit__(self, *exc_info: object) -> None:
        self.stop(cleanup=True)


def _server_args(appendonly: bool, args: Sequence[str]) -> list[str]:
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else []
    return ["--save", "", "--appendonly", "no", *persistence, *args]


def start_redis(
    *args: str,
    appendonly: bool = False,
    directory: str | Path | None = None,
    port: int | None = None,
    ready_within: float = DEFAULT_TIMEOUT,
    cluster_bus: bool = False,
) -> RedisServer:
    """Start ``redis-server`` on a free loopback port; return it once it answers ``PING``.

    ``args`` are more ``redis-server`` options (``"--maxmemory", "10mb"``);
    ``appendonly`` turns the AOF on (in ``directory``, else a temporary
    directory); ``port`` a fixed port (no retry). The caller stops it, or uses
    it as a context manager (``with start_redis() as redis:``), or
    :func:`running_redis`.
    """
    require_redis()
    own_directory = directory is None
    where = Path(tempfile.mkdtemp(prefix="mqcore-redis-")) if directory is None else Path(directory)
    where.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    extra = _server_args(appendonly, args)
    try:
        for attempt in range(attempts):
            chosen = port if port is not None else free_port(cluster_bus)
            server = RedisServer(chosen, where, own_directory, extra)
            try:
                server.start(ready_within)
            except RedisStartError:
                if server._lost_port() and attempt + 1 < attempts:
                    continue  # another process took the port in between: another one
                raise
            return server
    except BaseException:
        if own_directory:
            shutil.rmtree(where, ignore_errors=True)
        raise
    raise AssertionError("unreachable")  # pragma: no cover


async def start_redis_async(
    *args: str,
    appendonly: bool = False,
    directory: str | Path | None = None,
    port: int | None = None,
    ready_within: float = DEFAULT_TIMEOUT,
) -> RedisServer:
    """:func:`start_redis` from async code: the readiness wait does not block the loop."""
    start = partial(
        start_redis,
        *args,
        appendonly=appendonly,
        directory=directory,
        port=port,
        ready_within=ready_within,
    )
    return await anyio.to_thread.run_sync(start)


@contextmanager
def running_redis(
    *args: str, appendonly: bool = False, grace: float = 10.0
) -> Iterator[RedisServer]:
    """:func:`start_redis`; on leaving, stop it and remove its directory."""
    server = start_redis(*args, appendonly=appendonly)
    try:
        yield server
    finally:
        server.stop(grace, cleanup=True)


@asynccontextmanager
async def running_redis_async(
    *args: str, appendonly: bool = False, grace: float = 10.0
) -> AsyncIterator[RedisServer]:
    """:func:`start_redis_async`; on leaving, stop it (without blocking the loop)."""
    server = await start_redis_async(*args, appendonly=appendonly)
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop_async(grace)
            server.cleanup()

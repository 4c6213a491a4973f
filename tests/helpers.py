"""Test helpers: drive a :class:`mqcore.Broker` synchronously, the way a transport would;
talk to a server line by line; run one in this event loop or as ``python -m mqcore_tcp``
(through :mod:`mqcore_tcp.testing`, the launcher benchmarks use too)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from mqcore import Broker, ConnectionId
from mqcore_tcp import TCPServer
from mqcore_tcp.testing import ServerProcess as LaunchedServer
from mqcore_tcp.testing import (
    launch,
    launch_async,
    listening_address,
    listening_port,
    running_async,
    server_command,
)

from .wire import line, parse, sub

__all__ = [
    "TIMEOUT",
    "AsyncProcess",
    "Ending",
    "Harness",
    "LineClient",
    "ServerProcess",
    "free_port",
    "in_process",
    "listening_address",
    "listening_port",
    "popen_server",
    "server_command",
    "server_process",
    "start_server",
    "subscribed",
]

#: How a connection ends, as the core hears of it (see :meth:`Harness.end`).
Ending = Literal["eof", "lost", "quit"]


class Harness:
    """A broker and its output, collected per connection, for tests."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else Broker()
        self.written: dict[ConnectionId, list[bytes]] = {}
        self.closed: list[ConnectionId] = []

    def connect(self) -> ConnectionId:
        """Open a connection."""
        cid = self.broker.open_connection()
        self.written[cid] = []
        return cid

    def feed(self, cid: ConnectionId, data: bytes) -> None:
        """Feed raw bytes and collect the output."""
        self.broker.receive_data(cid, data)
        self.collect()

    def collect(self) -> None:
        """Take the broker's output into ``written`` and ``closed``."""
        output = self.broker.take_output()
        for target, chunks in output.writes.items():
            self.written[target].extend(chunks)
        self.closed.extend(output.close)

    def send(self, cid: ConnectionId, *objs: Any) -> None:
        """Feed JSON command lines."""
        self.feed(cid, b"".join(line(o) for o in objs))

    def take(self, cid: ConnectionId) -> list[Any]:
        """Return and forget what was written to ``cid``, parsed."""
        out = parse(self.written[cid])
        self.written[cid] = []
        return out

    def take_bytes(self, cid: ConnectionId) -> bytes:
        """Return and forget what was written to ``cid``, raw."""
        out = b"".join(self.written[cid])
        self.written[cid] = []
        return out

    def subscriber(self, *subscriptions: str | dict[str, Any]) -> ConnectionId:
        """Open a connection subscribed to each of ``subscriptions`` (a topic or a
        ``sub()`` command), its replies and replays taken."""
        cid = self.connect()
        self.send(cid, *(sub(s) if isinstance(s, str) else s for s in subscriptions))
        self.take(cid)
        return cid

    def subscribers(self, n: int, topic: str) -> list[ConnectionId]:
        """``n`` connections subscribed to ``topic``, in turn (see :meth:`subscriber`)."""
        return [self.subscriber(topic) for _ in range(n)]

    def advance(self, now: float) -> None:
        """Move the broker's clock to ``now``; collect what its timers sent."""
        self.broker.advance(now)
        self.collect()

    def end(self, cid: ConnectionId, how: Ending) -> None:
        """End ``cid`` as the core hears of it: its end of input (``eof``), a broken
        connection (``lost``) or a ``quit`` line; collect the output."""
        if how == "eof":
            self.broker.receive_eof(cid)
        elif how == "lost":
            self.broker.connection_lost(cid)
        else:
            self.broker.receive_data(cid, b"quit\n")
        self.collect()


def subscribed(
    *subscriptions: str | dict[str, Any], broker: Broker | None = None
) -> tuple[Harness, ConnectionId, ConnectionId]:
    """A :class:`Harness`, a connection subscribed to ``subscriptions`` (see
    :meth:`Harness.subscriber`) and a second connection to publish from."""
    h = Harness(broker)
    return h, h.subscriber(*subscriptions), h.connect()


# -- talking to a server ------------------------------------------------------------

#: Generous: only reached if something is broken (then the test fails, not hangs).
TIMEOUT = 30
#: The longest line a :class:`LineClient` reads.
MAX_LINE_BYTES = 1 << 20


class LineClient:
    """A raw protocol client over anyio: write JSON lines, read JSON objects.

    ``stream`` is the socket itself, for what a test writes as raw bytes
    (``quit``, undecodable input) or for a half close.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> LineClient:
        """Connect to ``host:port``."""
        return cls(await anyio.connect_tcp(host, port))

    async def __aenter__(self) -> LineClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def write(self, *objs: Any) -> None:
        """Send ``objs`` as JSON command lines, in one write."""
        await self.stream.send(b"".join(line(o) for o in objs))

    async def read_line(self) -> bytes:
        """Return the next line the server wrote, raw, without its ``\\r\\n``.

        Raises :class:`anyio.EndOfStream` if the connection ends first.
        """
        try:
            return await self._reader.receive_until(b"\r\n", MAX_LINE_BYTES)
        except anyio.IncompleteRead as exc:
            raise anyio.EndOfStream from exc

    async def read(self) -> Any:
        """Return the next object the server wrote."""
        return json.loads(await self.read_line())

    async def read_n(self, n: int) -> list[Any]:
        """Return the next ``n`` objects the server wrote."""
        return [await self.read() for _ in range(n)]

    async def request(self, obj: Any) -> Any:
        """Send one command and return the next object read (its reply, if nothing else is due)."""
        await self.write(obj)
        return await self.read()

    async def aclose(self) -> None:
        """Close the connection."""
        await self.stream.aclose()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (now: it may be taken later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- a server in this event loop ----------------------------------------------------


@asynccontextmanager
async def in_process(**options: Any) -> AsyncIterator[TCPServer]:
    """Run a :class:`TCPServer` (on 127.0.0.1, a free port) in this event loop; yield it.

    ``options`` go to :class:`TCPServer`. The body gets :data:`TIMEOUT`
    seconds; leaving asks the server to shut down and waits until it has.
    """
    server = TCPServer(port=0, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        try:
            with anyio.fail_after(TIMEOUT):
                yield server
        finally:
            server.shutdown()


# -- the server as a subprocess: python -m mqcore_tcp -------------------------------
#
# One launcher for tests and benchmarks: mqcore_tcp.testing. What follows keeps
# the names tests have always used, as thin views of it.


@contextmanager
def popen_server(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``python -m mqcore_tcp *args`` (as given: no ``--port`` added); yield it once it listens.

    For blocking tests. The rest of its log stays in its ``stderr`` (text)
    for the test to read. On leaving, it is killed if it still runs.
    """
    server = launch(*args, port=None, keep_stderr=True, ready_within=TIMEOUT)
    try:
        yield server.popen
    finally:
        if server.returncode is None:
            server.kill()
        server.wait(TIMEOUT)
        assert server.popen.stderr is not None
        server.popen.stderr.close()


@dataclass
class AsyncProcess:
    """The server process seen as an :class:`anyio.abc.Process`: the part tests use
    (its pid, its status, waiting for it); to signal it, use :class:`ServerProcess`."""

    server: LaunchedServer
    #: Fixed for the process's life, so a plain value.
    pid: int

    @property
    def returncode(self) -> int | None:
        return self.server.returncode

    async def wait(self) -> int:
        return await self.server.wait_async()

    async def aclose(self) -> None:
        """Wait for it to exit (killing it if cancelled meanwhile), as anyio's does."""
        try:
            await self.wait()
        except BaseException:
            self.server.kill()
            with anyio.CancelScope(shield=True):
                await self.wait()
            raise

    async def __aenter__(self) -> AsyncProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass
class ServerProcess:
    """A running ``python -m mqcore_tcp``: its process, its port and its log so far."""

    server: LaunchedServer

    @property
    def process(self) -> AsyncProcess:
        return AsyncProcess(self.server, self.server.pid)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def log(self) -> list[str]:
        return self.server.log

    def kill(self) -> None:
        """SIGKILL it: a crash, not a graceful stop."""
        self.server.kill()


async def start_server(tg: anyio.abc.TaskGroup, *args: str, port: int = 0) -> ServerProcess:
    """Start ``python -m mqcore_tcp --port PORT *args``; return once it listens.

    ``port`` 0 is any free one (then ``.port`` says which). ``tg`` is kept
    for the callers' sake: the launcher drains the log in a thread of its
    own. The caller stops the process and closes it.
    """
    del tg
    return ServerProcess(await launch_async(*args, port=port, ready_within=TIMEOUT))


@asynccontextmanager
async def server_process(*args: str) -> AsyncIterator[ServerProcess]:
    """Run ``python -m mqcore_tcp --port 0 *args`` (see :func:`start_server`); yield it.

    On leaving it gets SIGTERM if it still runs, and is waited for.
    """
    async with running_async(*args, grace=TIMEOUT) as server:
        yield ServerProcess(server)

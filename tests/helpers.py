"""Test helpers: drive a :class:`mqcore.Broker` synchronously, the way a transport would;
talk to a server line by line; run one in this event loop or as ``python -m mqcore_tcp``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from subprocess import PIPE
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mqcore import Broker, ConnectionId
from mqcore_tcp import TCPServer

from .wire import line, parse


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


def server_command(*args: str) -> list[str]:
    """The command line of ``python -m mqcore_tcp *args``, with this interpreter."""
    return [sys.executable, "-m", "mqcore_tcp", *args]


def listening_port(log_line: str) -> int | None:
    """The port a server's ``... listening on HOST:PORT`` log line names; ``None`` for others."""
    if "listening on" not in log_line:
        return None
    return int(log_line.rsplit(":", 1)[1])


@contextmanager
def popen_server(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``python -m mqcore_tcp *args``; yield it once it logs that it listens.

    For blocking tests. Waiting reads its log line, never sleeps; the rest of
    its log stays in its ``stderr`` (text) for the test to read. On leaving,
    it is killed if it still runs.
    """
    proc = subprocess.Popen(server_command(*args), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for text in proc.stderr:
            if listening_port(text) is not None:
                break
        else:
            pytest.fail(f"server exited with {proc.wait()} before listening")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@dataclass
class ServerProcess:
    """A running ``python -m mqcore_tcp``: its process, its port and its log so far."""

    process: anyio.abc.Process
    port: int
    log: list[str]

    def kill(self) -> None:
        """SIGKILL it: a crash, not a graceful stop."""
        self.process.send_signal(signal.SIGKILL)


async def start_server(tg: anyio.abc.TaskGroup, *args: str, port: int = 0) -> ServerProcess:
    """Start ``python -m mqcore_tcp --port PORT *args``; return once it listens.

    ``port`` 0 is any free one (then ``.port`` says which). Waiting reads its
    log line, never sleeps, for at most :data:`TIMEOUT` seconds; then a task in
    ``tg`` keeps reading the log into ``.log``, so the server never blocks on
    a full pipe. The caller stops the process and closes it.
    """
    command = server_command("--port", str(port), *args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await anyio.open_process(command, stdout=PIPE, stderr=PIPE, env=env)
    assert process.stderr is not None
    stderr = BufferedByteReceiveStream(process.stderr)
    log: list[str] = []
    bound = None
    try:
        with anyio.fail_after(TIMEOUT):
            while bound is None:
                try:
                    text = (await stderr.receive_until(b"\n", 1 << 16)).decode()
                except anyio.IncompleteRead:
                    pytest.fail(
                        f"server exited with {await process.wait()} before listening: {log}"
                    )
                log.append(text)
                bound = listening_port(text)
    except BaseException:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with suppress(ProcessLookupError):  # it may have exited meanwhile
                    process.kill()
            await process.aclose()
        raise

    async def drain() -> None:
        try:
            while True:
                log.append((await stderr.receive_until(b"\n", 1 << 16)).decode())
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
            pass

    tg.start_soon(drain)
    return ServerProcess(process, bound, log)


@asynccontextmanager
async def server_process(*args: str) -> AsyncIterator[ServerProcess]:
    """Run ``python -m mqcore_tcp --port 0 *args`` (see :func:`start_server`); yield it.

    On leaving it gets SIGTERM if it still runs, and is waited for.
    """
    async with anyio.create_task_group() as tg:
        server = await start_server(tg, *args)
        async with server.process:
            try:
                yield server
            finally:
                if server.process.returncode is None:
                    server.process.terminate()
                with anyio.fail_after(TIMEOUT):
                    await server.process.wait()

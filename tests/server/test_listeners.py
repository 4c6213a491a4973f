"""Listeners as URLs: TCP and Unix sockets served by one broker, in process and from the CLI."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mqcore_tcp import TRANSPORTS, TCPServer, parse_args

from ..conftest import BOTH_BACKENDS
from ..helpers import TIMEOUT, LineClient, in_process, popen_server, server_command
from ..wire import OK, delivered, send, sub, unsub

pytestmark = pytest.mark.anyio


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A Unix socket path short enough for sun_path (108 bytes), in a fresh directory."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        yield Path(tmp) / "mq.sock"


async def unix_client(path: Path) -> LineClient:
    return LineClient(await anyio.connect_unix(path))


@BOTH_BACKENDS
async def test_tcp_and_unix_listeners_share_one_broker(socket_path: Path) -> None:
    async with in_process(listen=(f"unix://{socket_path}", "mqcore://127.0.0.1:0")) as server:
        assert server.port != 0  # the TCP listener's bound port
        async with (
            await unix_client(socket_path) as local,
            await LineClient.open(server.port) as remote,
        ):
            assert await local.request(sub("t")) == OK
            assert await remote.request(send("t", "over tcp")) == OK
            assert await local.read() == delivered("t", "over tcp", 0)
            await local.write(send("t", "over unix"))
            # Its own delivery first, then the reply: the broker's order.
            assert await local.read_n(2) == [delivered("t", "over unix", 1), OK]
            # quit over a Unix socket: replies owed, then the end.
            await local.stream.send(b'{"command": "unsubscribe", "topic": "t"}\nquit\n')
            assert await local.read() == OK
            with pytest.raises(anyio.EndOfStream):
                await local.read()
    assert not await anyio.Path(socket_path).exists()  # the listener removed its socket file


async def test_a_stale_socket_file_is_replaced_and_a_live_one_is_not(socket_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nothing listens: what a killed server leaves
    async with in_process(listen=(f"unix://{socket_path}",)):
        async with await unix_client(socket_path) as c:
            assert await c.request(unsub("x")) == OK
        second = TCPServer(listen=(f"unix://{socket_path}",))
        with pytest.raises(OSError, match="Address already in use"):
            await second.bind()
        assert await anyio.Path(socket_path).exists()  # the first still serves there
        async with await unix_client(socket_path) as c:
            assert await c.request(unsub("x")) == OK


def test_the_cli_serves_every_listen_url(socket_path: Path) -> None:
    with popen_server("--port", "0", "--listen", f"unix://{socket_path}") as proc:
        assert proc.stderr is not None
        # The TCP line came first (popen_server read it); then the Unix one.
        assert f"mqcore listening on unix://{socket_path}" in proc.stderr.readline()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(socket_path))
            s.sendall(b'{"command": "unsubscribe", "topic": "x"}\nquit\n')
            data = b""
            while chunk := s.recv(1024):
                data += chunk
        assert data == b'{"success": true}\r\n'


@pytest.mark.parametrize(
    ("argv", "urls"),
    [
        ([], ("mqcore://127.0.0.1:7000",)),
        (["7100"], ("mqcore://127.0.0.1:7100",)),
        (["--host", "::1", "--port", "0"], ("mqcore://[::1]:0",)),
        (["--listen", "unix:///run/mq.sock"], ("unix:///run/mq.sock",)),
        (
            ["--port", "7001", "--listen", "unix:///a", "--listen", "mqcore://0.0.0.0:7002"],
            ("mqcore://127.0.0.1:7001", "unix:///a", "mqcore://0.0.0.0:7002"),
        ),
    ],
)
def test_listen_urls_and_the_host_port_shorthand(argv: list[str], urls: tuple[str, ...]) -> None:
    assert parse_args(argv).listen == urls


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://127.0.0.1:80", "unknown scheme"),
        ("unix://", "no socket path"),
        ("mqcore://127.0.0.1:99999", "port"),
        ("mqcore://127.0.0.1:7000/x", "no path"),
    ],
)
def test_a_bad_listen_url_is_a_usage_error(url: str, says: str) -> None:
    result = subprocess.run(
        server_command("--listen", url), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_transports_are_registered_by_scheme() -> None:
    assert {"mqcore", "unix"} <= set(TRANSPORTS)

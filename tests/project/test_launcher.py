"""The one server launcher (mqcore_tcp.testing), shared by tests and benchmarks.

The real server for the happy paths; stand-in servers (a ``mqcore_tcp``
package in a scratch directory, which ``python -m`` finds first) for the
servers that never listen, die early, flood their log or listen twice.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import anyio
import pytest

from mqcore_tcp.testing import (
    ServerProcess,
    ServerStartError,
    launch,
    listening_address,
    listening_port,
    running,
    running_async,
)

from ..conftest import BOTH_BACKENDS
from ..wire import OK, line

LOG_LINES = [
    ("2024-01-01 INFO mqcore_tcp: mqcore listening on 127.0.0.1:7000", "127.0.0.1:7000", 7000),
    ("INFO mqcore listening on [::1]:7001", "[::1]:7001", 7001),
    ("INFO mqcore listening on unix:///run/mq.sock", "unix:///run/mq.sock", None),
    ("INFO mqcore listening on 0.0.0.0:65535\r", "0.0.0.0:65535", 65535),
    ("INFO durable: store /x/mqcore.db (fsync batch)", None, None),
    ("INFO stopping: flushing 3 connection(s)", None, None),
    ("", None, None),
]


@pytest.mark.parametrize(("text", "address", "port"), LOG_LINES)
def test_listening_lines_are_parsed(text: str, address: str | None, port: int | None) -> None:
    assert listening_address(text) == address
    assert listening_port(text) == port


def hello(port: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line({"command": "hello"}))
        reply: dict[str, object] = json.loads(sock.makefile("rb").readline())
    return reply


def test_a_real_server_listens_serves_and_stops_gracefully() -> None:
    with running("--cache-size", "3") as server:
        assert server.url == f"mqcore://127.0.0.1:{server.port}"
        assert hello(server.port)["cache_size"] == 3
    assert server.returncode == 0
    assert any("stopped" in text for text in server.log)


def test_kill_is_a_crash() -> None:
    server = launch()
    server.kill()
    assert server.wait() == -signal.SIGKILL


@BOTH_BACKENDS
@pytest.mark.anyio
async def test_the_async_launcher_on_both_backends() -> None:
    with anyio.fail_after(30):
        async with running_async("--in-memory") as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            async with stream:
                await stream.send(line({"command": "subscribe", "topic": "t"}))
                assert json.loads(await stream.receive()) == OK
    assert server.returncode == 0


def fake_server(tmp_path: Path, body: str) -> Path:
    """A directory where ``python -m mqcore_tcp`` runs ``body`` instead of the server."""
    package = tmp_path / "mqcore_tcp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("import signal, sys, time\n" + body)
    return tmp_path


def test_a_server_that_exits_early_raises_with_its_log() -> None:
    with pytest.raises(ServerStartError, match="exited with status 2") as raised:
        launch("--no-such-option")
    assert "usage:" in str(raised.value)


def test_a_silent_server_is_killed_after_the_deadline(tmp_path: Path) -> None:
    cwd = fake_server(tmp_path, "print('starting', file=sys.stderr, flush=True)\nsignal.pause()\n")
    with pytest.raises(ServerStartError, match="did not log") as raised:
        launch(cwd=cwd, ready_within=0.5)
    assert "starting" in str(raised.value)


@pytest.mark.parametrize("args", [["--log-level", "WARNING"], ["--log-level=error"]])
def test_a_log_level_that_hides_the_listening_line_is_refused(args: list[str]) -> None:
    with pytest.raises(ValueError, match="INFO"):
        launch(*args)


def test_a_chatty_server_never_blocks_on_its_log(tmp_path: Path) -> None:
    # 4 MiB of log before and after the line, far more than a pipe holds, then
    # exit: without a reader draining the pipe the stand-in would block forever.
    noise = "print('x' * 1023, file=sys.stderr)\n"
    body = (
        f"for _ in range(4096): {noise}"
        "print('INFO mqcore listening on 127.0.0.1:1', file=sys.stderr, flush=True)\n"
        f"for _ in range(4096): {noise}"
    )
    server = launch(cwd=fake_server(tmp_path, body))
    assert server.port == 1
    assert server.wait() == 0
    assert len(server.log) == 2 * 4096 + 1


def test_every_listener_is_waited_for(tmp_path: Path) -> None:
    body = (
        "print('INFO mqcore listening on unix:///tmp/x.sock', file=sys.stderr, flush=True)\n"
        "print('INFO not yet', file=sys.stderr, flush=True)\n"
        "print('INFO mqcore listening on 127.0.0.1:2', file=sys.stderr, flush=True)\n"
        "signal.pause()\n"
    )
    args = ["--listen", "unix:///tmp/x.sock", "--listen=mqcore://127.0.0.1:0"]
    server: ServerProcess
    with running(*args, cwd=fake_server(tmp_path, body), grace=0.1) as server:
        assert server.addresses == ["unix:///tmp/x.sock", "127.0.0.1:2"]
        assert server.url == "unix:///tmp/x.sock"
        assert server.port == 2
    # SIGTERM ends the stand-in (default action); stop() waited for it.
    assert server.returncode == -signal.SIGTERM


ARGV_CASES = [
    ({}, ["-x"], ["--port", "0", "-x"]),
    ({"port": 7}, ["-x"], ["--port", "7", "-x"]),
    ({"port": None}, ["-x"], ["-x"]),  # the reference's positional form
    ({"port": 5}, ["--listen", "mqcore://h:1"], ["--listen", "mqcore://h:1"]),
]


@pytest.mark.parametrize(("options", "args", "argv"), ARGV_CASES)
def test_the_port_is_added_unless_listen_or_none(
    tmp_path: Path, options: dict[str, int | None], args: list[str], argv: list[str]
) -> None:
    body = (
        "print('INFO mqcore listening on 127.0.0.1:3', file=sys.stderr)\n"
        "print(sys.argv[1:], file=sys.stderr)\n"
    )
    server = launch(*args, cwd=fake_server(tmp_path, body), port=options.get("port", 0))
    assert server.wait() == 0
    assert server.log[-1] == repr(argv)
    assert server.command.startswith(sys.executable)

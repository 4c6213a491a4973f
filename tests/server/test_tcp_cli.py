"""The standalone server, ``python -m mqcore_tcp``, run as a real process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from typing import Any

import pytest

from mqcore_tcp import parse_args

from ..helpers import LineClient, free_port, popen_server, server_command, server_process


def request(port: int, *lines: bytes) -> list[Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(lines) + b"quit\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(x) for x in data.split(b"\r\n")[:-1]]


def test_reference_positional_form_and_sigterm() -> None:
    port = free_port()
    with popen_server(str(port), "2") as proc:
        sends = [
            b'{"command":"send","topic":"t","msg":"%d","delivery":"all"}\n' % i for i in range(4)
        ]
        assert request(port, *sends) == [{"success": True}] * 4
        replay = request(port, b'{"command":"subscribe","topic":"t"}\n')
        # CACHE_SIZE 2: only the two newest are replayed.
        assert [m.get("index") for m in replay] == [None, 2, 3]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_sigint_stops_with_status_zero() -> None:
    port = free_port()
    with popen_server("--port", str(port), "--log-level", "debug") as proc:
        assert request(port) == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "stopped" in proc.stderr.read()


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            server_command("--port", str(port)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    errors = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert len(errors) == 1
    assert str(port) in errors[0]
    assert "Traceback" not in result.stderr


def test_help_explains_every_option() -> None:
    result = subprocess.run(server_command("--help"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for option in [
        "--host",
        "--port",
        "--cache-size",
        "--max-line-bytes",
        "--log-level",
        "--max-queued-bytes",
        "PORT",
        "CACHE_SIZE",
    ]:
        assert option in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--cache-size", "-1"],
        ["7000", "--port", "7001"],
        ["x"],
        ["--max-line-bytes", "0"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_defaults_and_forms() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.cache_size) == ("127.0.0.1", 7000, 100)
    args = parse_args(["7100", "5"])
    assert (args.port, args.cache_size) == (7100, 5)
    args = parse_args(["--port", "0", "--cache-size", "0"])
    assert (args.port, args.cache_size) == (0, 0)


@pytest.mark.anyio
async def test_refused_commands_are_logged_at_debug_level_with_reason_and_connection() -> None:
    async with (
        server_process("--in-memory", "--log-level", "DEBUG") as server,
        await LineClient.open(server.port) as client,
    ):
        await client.stream.send(b"nope\n")
        assert (await client.read())["reason"] == "Could not parse json"
    # The server has stopped: its whole log has been read.
    refusals = [text for text in server.log if "refused:" in text]
    assert len(refusals) == 1, server.log
    assert '"Could not parse json"' in refusals[0]
    assert "connection " in refusals[0]
    assert "127.0.0.1:" in refusals[0]

"""``stats`` and ``ping`` (mqcore_client._web_cli) against a server, a dead port, a silent one."""

from __future__ import annotations

import argparse
import io
import json
import socket
from functools import partial

import anyio
import pytest

from mqcore_client._web_cli import add_web_commands, ping, run_web_command, stats

from ..helpers import LineClient, free_port
from ..wire import OK, send
from .support import web_server

pytestmark = pytest.mark.anyio


async def test_ping_and_stats_against_a_server() -> None:
    async with web_server() as web, await LineClient.open(web.tcp_port) as client:
        assert await client.request(send("t", "m")) == OK
        url = f"http://127.0.0.1:{web.http_port}"
        out = io.StringIO()
        assert await anyio.to_thread.run_sync(partial(ping, url, 5.0, out)) == 0
        assert out.getvalue() == "ok\n"
        out = io.StringIO()
        assert await anyio.to_thread.run_sync(partial(stats, url, 5.0, False, out)) == 0
        assert out.getvalue().startswith("mqcore ")
        assert "  sends: 1\n" in out.getvalue()
        out = io.StringIO()
        assert await anyio.to_thread.run_sync(partial(stats, url, 5.0, True, out)) == 0
        assert json.loads(out.getvalue())["counters"]["topics"] == 1


async def test_ping_exit_status_when_nothing_or_something_silent_listens() -> None:
    out = io.StringIO()
    dead = f"127.0.0.1:{free_port()}"
    assert await anyio.to_thread.run_sync(partial(ping, dead, 5.0, out)) == 3
    assert "cannot connect" in out.getvalue()
    with socket.socket() as silent:  # the kernel accepts for it; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out = io.StringIO()
        assert await anyio.to_thread.run_sync(partial(ping, url, 0.3, out)) == 4
    assert "no answer" in out.getvalue()


def test_the_subcommands_parse_and_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_web_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ping", "--web-url", f"http://127.0.0.1:{free_port()}"])
    assert run_web_command(args) == 3
    args = parser.parse_args(["stats", "--json", "--timeout", "1"])
    assert (args.json, args.timeout) == (True, 1.0)
    capsys.readouterr()


async def test_ping_and_stats_are_commands_of_the_client_cli() -> None:
    # Registered in `python -m mqcore_client` (the `mqcore` command): exit statuses for scripts.
    import sys

    async with web_server() as web:
        url = f"http://127.0.0.1:{web.http_port}"
        for argv, status in (
            (["ping", "--web-url", url], 0),
            (["stats", "--web-url", url, "--json"], 0),
            (["ping", "--web-url", f"http://127.0.0.1:{free_port()}"], 3),
        ):
            done = await anyio.run_process(
                [sys.executable, "-m", "mqcore_client", *argv], check=False
            )
            assert done.returncode == status, (argv, done.stderr)

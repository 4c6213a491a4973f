"""``python -m mqcore_client``: through subprocesses, and in-process for the exit-status matrix."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mqcore_client._cli import main

from ..helpers import free_port
from .support import serving

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "mqcore_client"]
DEADLINE = 20


def delivery(msg: str, index: int, topic: str = "news") -> dict[str, Any]:
    """A message as ``subscribe --json`` prints it."""
    return {"command": "send", "topic": topic, "msg": msg, "delivery": "all", "index": index}


async def run_main(*argv: str) -> int:
    """Run the command line in a worker thread (it runs its own event loop)."""
    return await anyio.to_thread.run_sync(main, list(argv))


async def test_send_and_subscribe_through_subprocesses() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            where = ["--port", str(port)]
            sent = await anyio.run_process([*CLI, "send", "news", "hello", *where])
            piped = await anyio.run_process(
                [*CLI, "send", "news", "-", *where], input=b"one\n\n  \ntwo\r\nthree"
            )
            printed = await anyio.run_process(
                [*CLI, "subscribe", "news", "--count", "4", "--json", *where]
            )
    assert sent.returncode == piped.returncode == printed.returncode == 0
    assert sent.stdout == piped.stdout == b""
    # Blank lines are skipped; a last line without a newline is sent.
    assert [json.loads(line) for line in printed.stdout.splitlines()] == [
        delivery("hello", 0),
        delivery("one", 1),
        delivery("two", 2),
        delivery("three", 3),
    ]


async def test_ctrl_c_ends_subscribe_with_130_and_no_traceback() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            await run_main("send", "news", "first", "--port", str(port))
            async with await anyio.open_process(
                [*CLI, "subscribe", "news", "--port", str(port)]
            ) as process:
                assert process.stdout is not None
                assert process.stderr is not None
                out = b""
                while b"\n" not in out:  # Subscribed: the cached message is printed.
                    out += await process.stdout.receive()
                process.send_signal(signal.SIGINT)
                status = await process.wait()
                errors = b"".join([chunk async for chunk in process.stderr])
    assert out == b"first\n"
    assert status == 130
    assert errors == b""


async def test_subscribe_options(capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            where = ("--port", str(port))
            for msg in ("a", "b", "c"):
                assert await run_main("send", "news", msg, *where) == 0
            assert await run_main("send", "news", "not cached", "--no-cache", *where) == 0
            assert await run_main("send", "work", "job", "--delivery", "one", *where) == 0
            assert capsys.readouterr().out == ""
            assert (
                await run_main("subscribe", "news", "--last-seen", "0", "--count", "2", *where) == 0
            )
            assert capsys.readouterr().out == "b\nc\n"
            assert await run_main("subscribe", "work", "--count", "1", "--json", *where) == 0
            assert json.loads(capsys.readouterr().out) == {
                **delivery("job", 0, "work"),
                "delivery": "one",
            }


async def test_failures_exit_non_zero_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    unused = str(free_port())
    with anyio.fail_after(DEADLINE):
        async with serving(max_line_bytes=100) as port:
            where = ("--port", str(port))
            statuses = [
                await run_main("send", "t", "x", "--port", unused),
                await run_main("send", "t", "x" * 200, *where),
                await run_main("subscribe", "t", "--no-cache", "--timeout", "0.05", *where),
            ]
    errors = capsys.readouterr().err.splitlines()
    assert statuses == [3, 1, 4]
    assert len(errors) == 3
    assert errors[0].startswith("python -m mqcore_client: error: cannot connect to 127.0.0.1:")
    assert errors[1] == "python -m mqcore_client: error: server error: Line too long"
    assert errors[2] == "python -m mqcore_client: error: no message within 0.05 s"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["send", "t"],
        ["send", "t", "x", "--delivery", "some"],
        ["subscribe", "t", "--count", "0"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["send", "--help"], ["subscribe", "--help"]])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out or "COMMAND" in out

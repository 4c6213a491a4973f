"""``python -m mqcore_client``: through subprocesses, and in-process for the exit-status matrix."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mqcore import __version__
from mqcore_client._cli import main

from ..helpers import free_port
from .support import scripted, serving

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


# -- where the server is, and global options anywhere ---------------------------------


@pytest.mark.parametrize(
    "where",
    [
        lambda port: (["--port", str(port)], [], {}),  # After the command (as before).
        lambda port: ([], ["--port", str(port)], {}),  # Before it.
        lambda port: ([], ["--url", f"mqcore://127.0.0.1:{port}"], {}),
        lambda port: (["--url", f"127.0.0.1:{port}"], [], {}),
        lambda port: (["--host", f"127.0.0.1:{port}"], [], {}),
        lambda port: ([], [], {"MQCORE_URL": f"127.0.0.1:{port}"}),
        # An explicit option wins over the environment.
        lambda port: (["--port", str(port)], [], {"MQCORE_URL": "127.0.0.1:1"}),
    ],
    ids=["after", "before", "url", "host-port-url", "host-port-host", "env", "flag-over-env"],
)
async def test_the_server_can_be_named_anywhere(
    where: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            after, before, env = where(port)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            assert await run_main(*before, "send", "news", "hi", *after) == 0
            assert await run_main(*before, "subscribe", "news", "--count", "1", *after) == 0
    assert capsys.readouterr().out == "hi\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "http://x:1", "send", "t", "m"],
        ["send", "t", "m", "--port", "abc"],
        ["send", "t", "m", "--request-timeout", "soon"],
        ["subscribe", "t", "--timeout", "1", "--until-idle", "1"],
    ],
)
def test_bad_addresses_and_options_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://x", "$MQCORE_URL"),
        # One bad entry in a list of servers refuses the list.
        ("mqcore://a:1,,b:2", "$MQCORE_URL: empty server address"),
    ],
    ids=["bad-scheme", "empty-entry"],
)
def test_a_bad_mqcore_url_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str, error: str
) -> None:
    monkeypatch.setenv("MQCORE_URL", url)
    with pytest.raises(SystemExit) as exit_:
        main(["send", "t", "m"])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


def test_version_and_the_installed_command_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/mqcore", "--version"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mqcore {__version__}\n"
    monkeypatch.setattr(sys, "argv", ["/x/mqcore_client/__main__.py", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith("usage: python -m mqcore_client ")


# -- subscribe's output and ending -----------------------------------------------------


async def test_until_idle_prints_what_is_there_then_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            where = ("--port", str(port))
            for msg in ("a", "b"):
                assert await run_main("send", "news", msg, *where) == 0
            status = await run_main("subscribe", "news", "--until-idle", "0.2", *where)
    assert status == 0
    assert capsys.readouterr().out == "a\nb\n"


async def test_each_message_stays_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    awkward = "two\nlines\r\nand a \\ backslash"
    with anyio.fail_after(DEADLINE):
        async with serving() as port:
            where = ("--port", str(port))
            assert await run_main("send", "news", awkward, *where) == 0
            assert await run_main("subscribe", "news", "--count", "1", *where) == 0
            text = capsys.readouterr().out
            assert await run_main("subscribe", "news", "--count", "1", "--json", *where) == 0
            as_json = json.loads(capsys.readouterr().out)
    assert text == "two\\nlines\\r\\nand a \\\\ backslash\n"
    assert as_json["msg"] == awkward


def test_count_warns_about_work_queues(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["subscribe", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "jobs past the N-th are consumed but not printed" in help_text


async def test_a_stalling_server_ends_send_with_status_4(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain_hello = b'{"success": false, "reason": "Malformed json message"}\r\n'
    with anyio.fail_after(DEADLINE):
        async with scripted([plain_hello]) as port:
            status = await run_main(
                "--request-timeout", "0.2", "send", "t", "x", "--port", str(port)
            )
    assert status == 4
    assert "waited 0.2 s for the reply to send" in capsys.readouterr().err

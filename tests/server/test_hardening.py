"""What a hostile or careless client must not do to the server (issue 8, server items).

Each test failed on the server before its fix: replay amplification
(item 2), the open-file limit (5), ``quit`` followed by more input (7) and
durable ``one`` jobs of a dropped consumer (8).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from ..conftest import BOTH_BACKENDS
from ..helpers import TIMEOUT, LineClient, free_port, in_process, popen_server, server_process
from ..wire import OK, line, lines, send, sub, unsub
from .support import connect, limit_open_files, peak_rss, request, reset_peak_rss

pytestmark = pytest.mark.anyio

MB = 1 << 20


# -- item 2: replay amplification -----------------------------------------------------


async def test_repeated_replays_of_a_large_cache_stay_within_the_queue_bound() -> None:
    """16 subscribes (about 700 bytes) to 100 cached 1 MB messages used to allocate ~3 GB."""
    payload = "x" * 1_000_000  # a line just under --max-line-bytes
    async with server_process("--cache-size", "100") as server:
        pid = server.process.pid
        async with (
            await LineClient.open(server.port) as pub,
            await LineClient.open(server.port) as bystander,
            await LineClient.open(server.port) as attacker,
        ):
            for _ in range(100):
                assert await pub.request(send("big", payload)) == OK
            assert await bystander.request(sub("b")) == OK
            reset_peak_rss(pid)
            before = peak_rss(pid)
            await attacker.stream.send(lines(*[sub("big")] * 16))
            # Its replies are owed, not read: past --max-queued-bytes it is dropped.
            received = 0
            try:
                while True:
                    received += len(await attacker.stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            assert received < 200 * MB  # far short of the 1.6 GB owed
            assert await pub.request(send("b", "still here")) == OK
            assert (await bystander.read())["msg"] == "still here"
            grown = peak_rss(pid) - before
    # The default bound is 64 MiB: the server may hold a few times that, never GBs.
    assert grown < 400 * MB, f"peak memory grew by {grown / MB:.0f} MB"


# -- item 5: the open-file limit ---------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_at_the_open_file_limit_the_server_backs_off_and_keeps_serving(backend: str) -> None:
    port = free_port()
    with popen_server("--port", str(port), "--backend", backend) as proc:
        limit_open_files(proc.pid, 64)
        with connect(port) as served:
            assert request(served, line(unsub("x"))) == b'{"success": true}\r\n'
            # More connections than descriptors left: the server accepts until it runs out.
            crowd = [connect(port) for _ in range(120)]
            try:
                for i in range(50):
                    reply = request(served, line(send("t", str(i))))
                    assert reply == b'{"success": true}\r\n'
            finally:
                for conn in crowd:
                    conn.close()
            # Descriptors are free again: a new client is served.
            with connect(port) as late:
                assert request(late, line(unsub("x"))) == b'{"success": true}\r\n'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
    assert "Traceback" not in log
    # One warning when it starts, at most a note when it ends: per episode, not per retry.
    about_accepting = [x for x in log.splitlines() if "accept" in x]
    assert 1 <= len(about_accepting) <= 4, about_accepting


# -- item 7: quit followed by more input -------------------------------------------------


@BOTH_BACKENDS
async def test_quit_followed_by_more_input_loses_no_reply_owed_before_it() -> None:
    garbage = b"after quit\n" * (800_000)  # ~9 MB: more than the socket buffers hold
    async with (
        in_process() as server,
        await LineClient.open(server.port) as c,
        anyio.create_task_group() as tg,
    ):

        async def write() -> None:
            await c.stream.send(lines(sub("q"), unsub("q")) + b"quit\n" + garbage)
            await c.stream.send_eof()

        tg.start_soon(write)
        assert await c.read_n(2) == [OK, OK]
        with pytest.raises(anyio.EndOfStream):
            await c.read()
        # The writer finished: the server read (and dropped) the input, sent no reset.


@BOTH_BACKENDS
async def test_a_peer_that_never_ends_its_side_after_quit_is_closed_in_bounded_time() -> None:
    async with in_process() as server, await LineClient.open(server.port) as c:
        await c.stream.send(line(unsub("q")) + b"quit\n")
        assert await c.read() == OK
        with pytest.raises(anyio.EndOfStream):  # FIN while our side stays open
            await c.read()
        await c.stream.send(b"more\n")  # still read and discarded, never answered
        assert server.broker.subscribers("q") == []


# -- item 8: durable `one` jobs of a dropped consumer -------------------------------------


async def test_one_jobs_of_a_consumer_dropped_as_slow_come_back_after_a_restart(
    data_dir: Path,
) -> None:
    n = 50_000
    payload = "j" * 400
    args = ("--data-dir", str(data_dir), "--cache-size", str(n))
    received: set[int] = set()
    async with server_process(*args, "--max-queued-bytes", str(MB)) as server:
        async with (
            await LineClient.open(server.port) as consumer,
            await LineClient.open(server.port) as producer,
        ):
            assert await consumer.request(sub("jobs")) == OK
            for _ in range(0, n, 1000):
                await producer.write(*[send("jobs", payload, "one")] * 1000)
                assert await producer.read_n(1000) == [OK] * 1000
            # The consumer never read: it was dropped. Read what reached its socket.
            try:
                while True:
                    received.add((await consumer.read())["index"])
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        assert any("disconnected" in x for x in server.log)
    assert len(received) < n
    async with server_process(*args) as server, await LineClient.open(server.port) as late:
        await late.write(sub("jobs"), unsub("marker"))
        assert await late.read() == OK
        replayed: set[int] = set()
        # The replay comes between the two replies.
        while (message := await late.read()) != OK:
            replayed.add(message["index"])
    lost = set(range(n)) - received - replayed
    assert not lost, f"{len(lost)} acknowledged jobs lost"


# -- item 17 and the rest: the command line ---------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqcore_tcp", *args], capture_output=True, text=True, timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--port", "abc"], "argument --port: 'abc' is not a whole number"),
        (["--port", "-1"], "argument --port: must be 0..65535, got -1"),
        (["--cache-size", "x"], "argument --cache-size: 'x' is not a whole number"),
        (["--max-queued-bytes", "0"], "must be >= 1, got 0"),
    ],
)
def test_bad_numbers_are_named_clearly(args: list[str], says: str) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert says in result.stderr
    assert "_port" not in result.stderr
    assert "invalid" not in result.stderr


def _read_only_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o555)
    try:
        (directory / "probe").touch()
    except OSError:
        return directory
    pytest.skip("running as root: permissions do not stop writes")


def _file(tmp_path: Path) -> Path:
    file = tmp_path / "file"
    file.write_text("")
    return file


@pytest.mark.parametrize(
    ("make", "says", "not_said"),
    [
        (_file, "not a directory", "File exists"),
        (_read_only_dir, "not writable", "database"),
        # A directory no one, not even root, may create files in.
        (lambda _: Path("/proc/self"), "not writable", "database"),
    ],
    ids=["file", "read-only", "proc"],
)
def test_a_data_dir_that_cannot_be_one_is_named_as_such(
    tmp_path: Path, make: Callable[[Path], Path], says: str, not_said: str
) -> None:
    directory = make(tmp_path)
    result = _run("--port", "0", "--data-dir", str(directory))
    assert result.returncode == 1
    assert f"--data-dir {directory}: {says}" in result.stderr
    assert not_said not in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help_name_the_program() -> None:
    from mqcore import __version__

    version = _run("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"python -m mqcore_tcp (mqcore) {__version__}"
    assert _run("--help").stdout.startswith("usage: python -m mqcore_tcp ")
    script = Path(sys.executable).parent / "mqcore-server"
    if script.exists():
        result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.stdout.startswith("usage: mqcore-server ")


# -- keepalive -----------------------------------------------------------------------------


@BOTH_BACKENDS
async def test_accepted_connections_have_tcp_keepalive() -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("no ss(8) to read socket timers")
    async with in_process() as server, await LineClient.open(server.port) as c:
        assert await c.request(unsub("x")) == OK
        shown = (
            await anyio.run_process(
                [ss, "-tno", "state", "established", f"( sport = :{server.port} )"]
            )
        ).stdout.decode()
    assert "keepalive" in shown, shown

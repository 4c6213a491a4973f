"""A durable server on a disk that fills up, then gets room again (issue 8, item 9).

The data directory sits on a real, tiny tmpfs (root mounts it; CI runs as
root). When the disk is full the server must not die: it refuses new sends
with ``Storage unavailable``, keeps serving subscriptions and replays,
acknowledges nothing it did not store, logs the episode once, says so in
``hello``, and recovers by itself once the filesystem is given room. What it
acknowledged survives a SIGKILL afterwards.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ..helpers import TIMEOUT, LineClient, server_process
from ..wire import OK, fail, send, sub

pytestmark = pytest.mark.anyio

#: Big enough for SQLite's file, its log and a few hundred messages; small
#: enough that the test fills it in a second.
SMALL = "768k"
MESSAGE = "x" * 4000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A mounted tmpfs of :data:`SMALL` bytes; unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow(mount_point: Path) -> None:
    """Give the filesystem room again, as an operator freeing space would."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)


async def storage_state(port: int) -> Any:
    """What ``hello`` says of the store, asked on a new connection."""
    async with await LineClient.open(port) as client:
        reply = await client.request({"command": "hello"})
    assert reply["success"] is True
    return reply["storage"]


async def wait_for_storage(port: int, state: str) -> None:
    """Ask ``hello`` until it reports ``state`` (each answer is awaited, never slept for).

    A new connection each time, given up after a second: a connection whose
    output was in the very batch the store refused waits, in order, for the
    store to come back (only connections with output in flight do).
    """
    while True:
        with anyio.move_on_after(1):
            if await storage_state(port) == state:
                return


@pytest.mark.parametrize("fsync", ["batch", "always"])  # the inline and threaded committers
async def test_a_full_disk_refuses_sends_keeps_serving_and_recovers(
    small_disk: Path, fsync: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        await full_disk_scenario(small_disk / "data", ["--fsync", fsync])


async def full_disk_scenario(data_dir: Path, options: list[str]) -> None:
    small_disk = data_dir.parent
    acked: list[int] = []  # message numbers the producer got {"success": true} for
    refused: list[int] = []
    args = ("--data-dir", str(data_dir), "--cache-size", "10000", *options)
    async with server_process(*args) as server:
        port = server.port
        async with (
            await LineClient.open(port) as subscriber,
            await LineClient.open(port) as producer,
        ):
            assert await subscriber.request(sub("t")) == OK
            assert await storage_state(port) == "ok"
            total = 600  # 2.4 MB of messages: far more than the disk holds

            async def produce() -> None:
                await producer.write(*(send("t", f"{n}:{MESSAGE}") for n in range(total)))
                for n in range(total):
                    reply = await producer.read()
                    if reply == OK:
                        acked.append(n)
                    else:
                        assert reply == fail("Storage unavailable"), reply
                        refused.append(n)

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                await wait_for_storage(port, "unavailable")
                # New sends are refused at once, and change nothing...
                async with await LineClient.open(port) as bystander:
                    assert await bystander.request(send("u", "m")) == fail("Storage unavailable")
                # ...while subscriptions and replays go on.
                async with await LineClient.open(port) as late:
                    assert await late.request(sub("t", last_seen=-1)) == OK
                    first = await late.read()
                    assert first["topic"] == "t"
                    assert first["msg"].startswith("0:")
                grow(small_disk)
                await wait_for_storage(port, "ok")
            async with await LineClient.open(port) as bystander:
                assert await bystander.request(send("u", "after")) == OK
            # Every message acknowledged reached the subscriber, in order.
            received = [int((await subscriber.read())["msg"].split(":")[0]) for _ in acked]
            assert received == acked
        log = "".join(server.log)
        assert log.count("storage unavailable") == 1, log
        assert "storage available again" in log
        assert "Traceback" not in log
        assert server.process.returncode is None  # it never stopped
        assert acked, "nothing was stored before the disk filled"
        server.kill()
        await server.process.wait()
    # Everything acknowledged survived, with the index it was given.
    async with (
        server_process("--data-dir", str(data_dir), "--cache-size", "10000") as restarted,
        await LineClient.open(restarted.port) as reader,
    ):
        assert await reader.request(sub("t")) == OK
        replay = [await reader.read() for _ in acked]
        assert [int(m["msg"].split(":")[0]) for m in replay] == acked
        assert [m["index"] for m in replay] == list(range(len(acked)))


"""Gapless resume through ``mqcore_client`` across a server restart (SIGKILL).

With a data directory the restarted server keeps its index numbering and its
cache (same epoch), so a reconnecting subscription resumes from the last index
it saw: every message arrives exactly once, in order, none flagged as a gap.
Without one the numbering starts over (a new epoch): the client resubscribes
from the start of the cache and flags the first message after the restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

import mqcore_client

from ..helpers import TIMEOUT, ServerProcess, start_server

pytestmark = pytest.mark.anyio


class Servers:
    """Starts ``python -m mqcore_tcp`` processes and kills them with SIGKILL."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.server: ServerProcess | None = None

    async def start(self, port: int, *args: str) -> int:
        """Start a server on ``port`` (0: any free one); return the port it listens on."""
        self.server = await start_server(self.tg, *args, port=port)
        return self.server.port

    async def kill(self) -> None:
        """SIGKILL the running server: a crash, not a graceful stop."""
        server = self.server
        assert server is not None
        server.kill()
        await server.process.wait()
        await server.process.aclose()
        self.server = None


@asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    async with anyio.create_task_group() as tg:
        s = Servers(tg)
        try:
            yield s
        finally:
            if s.server is not None:
                with anyio.CancelScope(shield=True):
                    await s.kill()


async def produce(port: int, first: int, count: int) -> None:
    """Send ``m<first>`` ... with a connection of its own, each one acknowledged."""
    async with mqcore_client.connect("127.0.0.1", port) as producer:
        for n in range(first, first + count):
            await producer.send("t", f"m{n}")


async def read_until(
    sub: mqcore_client.Subscription, seen: list[mqcore_client.Received], msg: str
) -> None:
    async for message in sub:
        seen.append(message)
        if message.msg == msg:
            return


async def test_a_consumer_resumes_without_gap_or_duplicate_across_a_durable_restart(
    data_dir: Path,
) -> None:
    args = ("--data-dir", str(data_dir))
    seen: list[mqcore_client.Received] = []
    with anyio.fail_after(TIMEOUT):
        async with servers() as s:
            port = await s.start(0, *args)
            async with mqcore_client.connect(
                "127.0.0.1", port, reconnect=True, reconnect_delay=0.02, offline_timeout=None
            ) as client:
                epoch = client.epoch
                assert epoch is not None
                async with client.subscribe("t") as sub:
                    await produce(port, 0, 30)
                    await read_until(sub, seen, "m29")
                    # Acknowledged, perhaps not yet delivered when the server dies.
                    await produce(port, 30, 20)
                    await s.kill()
                    await s.start(port, *args)
                    # Sent before the consumer has reconnected, most likely: it
                    # finds them in the restored cache, after index 49.
                    await produce(port, 50, 30)
                    await read_until(sub, seen, "m79")
                    assert client.epoch == epoch  # the same numbering, restored
    assert [m.index for m in seen] == list(range(80))
    assert [m.msg for m in seen] == [f"m{n}" for n in range(80)]
    assert not any(m.gap for m in seen)


async def test_a_consumer_is_told_of_a_possible_gap_after_an_in_memory_restart() -> None:
    seen: list[mqcore_client.Received] = []
    with anyio.fail_after(TIMEOUT):
        async with servers() as s:
            port = await s.start(0, "--in-memory")
            async with mqcore_client.connect(
                "127.0.0.1", port, reconnect=True, reconnect_delay=0.02, offline_timeout=None
            ) as client:
                epoch = client.epoch
                async with client.subscribe("t") as sub:
                    await produce(port, 0, 30)
                    await read_until(sub, seen, "m29")
                    await s.kill()
                    await s.start(port, "--in-memory")
                    # The new server numbers from 0 again: without the epoch,
                    # resuming after index 29 would silently skip these.
                    await produce(port, 30, 10)
                    await read_until(sub, seen, "m39")
                    assert client.epoch != epoch
                    assert sub.epoch == client.epoch
    before, after = seen[:30], seen[30:]
    assert [m.index for m in before] == list(range(30))
    assert not any(m.gap for m in before)
    assert [(m.index, m.msg) for m in after] == [(n, f"m{30 + n}") for n in range(10)]
    assert [m.gap for m in after] == [True] + [False] * 9

"""``client.consume()`` and ``subscribe --ack``: jobs acked, nacked, handed back, resumed."""

from __future__ import annotations

import json
import sys

import anyio
import pytest

import mqcore_client
from mqcore import Ack, Reason
from mqcore_client import ServerError

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from .support import proxying

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "mqcore_client"]
DEADLINE = 20


@BOTH_BACKENDS
async def test_async_with_job_acks_on_success_and_nacks_on_an_exception() -> None:
    with anyio.fail_after(DEADLINE):
        async with in_process() as server, mqcore_client.connect("127.0.0.1", server.port) as c:
            for n in range(3):
                await c.send("jobs", f"job {n}", "one")
            seen: list[tuple[str, int]] = []
            async with c.consume("jobs", prefetch=2) as jobs:
                async for job in jobs:
                    try:
                        async with job:
                            seen.append((job.msg, job.attempt))
                            if job.msg == "job 1" and job.attempt == 1:
                                raise ValueError("flaky")
                    except ValueError:
                        pass
                    if len(seen) == 4:
                        break
            assert sorted(seen) == [("job 0", 1), ("job 1", 1), ("job 1", 2), ("job 2", 1)]
            assert server.broker.stats().failures == {}


async def test_explicit_ack_and_nack_with_delay_and_their_errors() -> None:
    with anyio.fail_after(DEADLINE):
        async with in_process() as server, mqcore_client.connect("127.0.0.1", server.port) as c:
            await c.send("jobs", "later", "one")
            async with c.consume("jobs") as jobs:
                job = await jobs.__anext__()
                await job.nack(delay=0.05, reason="not yet")
                with pytest.raises(RuntimeError):
                    await job.ack()  # settled already
                again = await jobs.__anext__()
                assert (again.index, again.attempt) == (0, 2)
                await again.ack()
                # Acking what is not pending is a server refusal, raised.
                with pytest.raises(ServerError) as refused:
                    await jobs.command(Ack("jobs", 0), True)
                assert refused.value.reason == Reason.NOT_PENDING
            with pytest.raises(ValueError, match="already consumes"):
                async with c.consume("jobs"), c.consume("jobs"):
                    pass


async def test_a_killed_workers_jobs_finish_on_another_client() -> None:
    with anyio.fail_after(DEADLINE):
        async with in_process() as server, proxying(server.port) as (proxy, port):
            async with mqcore_client.connect("127.0.0.1", server.port) as producer:
                for n in range(6):
                    await producer.publish("jobs", str(n), "one")
                await producer.flush()
            async with (
                mqcore_client.connect("127.0.0.1", server.port) as other,
                mqcore_client.connect("127.0.0.1", port) as crashed,
                crashed.consume("jobs", prefetch=3) as doomed,
            ):
                first = await doomed.__anext__()
                async with other.consume("jobs", prefetch=100) as survivor:
                    await first.ack()
                    # Two more are pending on it, not acked: then its connection dies.
                    proxy.drop()
                    with pytest.raises(mqcore_client.ConnectionLostError):
                        await _drain(doomed)
                    got: dict[int, int] = {}
                    while len(got) < 5:
                        job = await survivor.__anext__()
                        got[job.index] = job.attempt
                        await job.ack()
                    assert sorted(got) == [n for n in range(6) if n != first.index]
                    assert sorted(got.values()) == [1, 1, 1, 2, 2]


async def test_a_reconnected_consumer_resubscribes_and_stale_jobs_do_nothing() -> None:
    with anyio.fail_after(DEADLINE):
        async with in_process() as server, proxying(server.port) as (proxy, port):
            async with mqcore_client.connect("127.0.0.1", port, reconnect=True) as c:
                await c.send("jobs", "j", "one")
                async with c.consume("jobs") as jobs:
                    old = await jobs.__anext__()
                    assert old.attempt == 1
                    proxy.drop()
                    new = await jobs.__anext__()  # handed back, redelivered
                    assert (new.index, new.attempt) == (0, 2)
                    assert old.stale
                    assert not new.stale
                    await old.ack()  # does nothing: that delivery is gone
                    await new.ack()
                    await c.send("jobs", "k", "one")
                    assert (await jobs.__anext__()).msg == "k"
            assert server.broker.stats().failures == {}


async def test_cli_subscribe_ack_count_takes_exactly_what_it_prints() -> None:
    """The issue's new-user case: five jobs, --count 1 prints one, the four others stay."""
    with anyio.fail_after(DEADLINE):
        async with in_process() as server:
            where = ["--port", str(server.port)]
            async with mqcore_client.connect("127.0.0.1", server.port) as c:
                for n in range(5):
                    await c.send("jobs", f"job {n}", "one")
            printed = []
            for _ in range(5):
                done = await anyio.run_process(
                    [*CLI, "subscribe", "jobs", "--ack", "--count", "1", "--json", *where]
                )
                printed += [json.loads(line) for line in done.stdout.splitlines()]
            assert [(m["msg"], m["attempt"]) for m in printed] == [
                (f"job {n}", 1) for n in range(5)
            ]
            idle = await anyio.run_process(
                [*CLI, "subscribe", "jobs", "--ack", "--until-idle", "0.3", *where]
            )
            assert idle.stdout == b""


async def _drain(jobs: mqcore_client.Consumer) -> None:
    """Take jobs until the consumer ends (with its error)."""
    while True:
        await jobs.__anext__()

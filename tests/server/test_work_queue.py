"""Acknowledged work queues end to end: real sockets, the real server (in process or not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from mqcore import Reason

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient, in_process, server_process
from ..wire import OK, fail, send, sub

pytestmark = pytest.mark.anyio


def ack(topic: str, index: int) -> dict[str, Any]:
    return {"command": "ack", "topic": topic, "index": index}


def nack(topic: str, index: int, **extra: Any) -> dict[str, Any]:
    return {"command": "nack", "topic": topic, "index": index, **extra}


@BOTH_BACKENDS
async def test_a_killed_consumers_jobs_finish_on_another() -> None:
    async with in_process() as server, await LineClient.open(server.port) as producer:
        doomed = await LineClient.open(server.port)
        assert await doomed.request(sub("jobs", ack=True, prefetch=5)) == OK
        await producer.write(*[send("jobs", f"job {n}", "one") for n in range(8)])
        assert await producer.read_n(8) == [OK] * 8
        got = await doomed.read_n(5)
        assert [(m["index"], m["attempt"]) for m in got] == [(n, 1) for n in range(5)]
        await doomed.write(ack("jobs", 0), ack("jobs", 1))  # two done, five not
        refill = await doomed.read_n(4)  # each ack's freed room comes before its reply
        assert [m.get("index") for m in refill] == [5, None, 6, None]
        async with await LineClient.open(server.port) as survivor:
            assert await survivor.request(sub("jobs", ack=True, prefetch=100)) == OK
            first = await survivor.read_n(1)
            assert [m["index"] for m in first] == [7]
            await doomed.aclose()  # killed mid-batch
            again = await survivor.read_n(5)
            assert [(m["index"], m["attempt"]) for m in again] == [(n, 2) for n in range(2, 7)]
            await survivor.write(*[ack("jobs", m["index"]) for m in first + again])
            assert await survivor.read_n(6) == [OK] * 6
            assert server.broker.pending(server.broker.subscribers("jobs")[0], "jobs") == []


async def test_ack_wait_expiry_redelivers_through_the_hub_timer() -> None:
    async with in_process(ack_wait=0.2) as server, await LineClient.open(server.port) as worker:
        assert await worker.request(sub("jobs", ack=True)) == OK
        await worker.write(send("jobs", "slow", "one"))
        first = await worker.read()
        assert first["attempt"] == 1
        assert await worker.read() == OK
        # Nothing but the timer makes this come: no input is sent.
        second = await worker.read()
        assert (second["index"], second["attempt"]) == (0, 2)
        assert await worker.request(ack("jobs", 0)) == OK


async def test_a_nack_with_a_delay_wakes_the_timer() -> None:
    async with in_process(ack_wait=60) as server, await LineClient.open(server.port) as worker:
        assert await worker.request(sub("jobs", ack=True)) == OK
        await worker.write(send("jobs", "later", "one"))
        assert (await worker.read())["attempt"] == 1
        assert await worker.read() == OK
        assert await worker.request(nack("jobs", 0, delay=0.1)) == OK
        with anyio.fail_after(5):  # far below TICK * many and ack_wait
            again = await worker.read()
        assert again["attempt"] == 2


async def test_a_poison_message_reaches_dead_after_max_deliver() -> None:
    async with (
        server_process("--max-deliver", "3") as server,
        await LineClient.open(server.port) as worker,
    ):
        assert await worker.request(sub("jobs", ack=True)) == OK
        await worker.write(send("jobs", "poison", "one"))
        for attempt in (1, 2, 3):
            message = await worker.read()
            if message == OK:
                message = await worker.read()
            assert message["attempt"] == attempt
            await worker.write(nack("jobs", 0, reason=f"failed #{attempt}"))
        assert await worker.read() == OK
        async with await LineClient.open(server.port) as watcher:
            assert await watcher.request(sub("jobs.dead")) == OK
            dead = await watcher.read()
            assert dead["topic"] == "jobs.dead"
            assert (dead["msg"], dead["dead_index"], dead["attempts"]) == ("poison", 0, 3)
            assert dead["reason"] == "failed #3"
            assert "attempt" not in dead


async def test_garbage_acks_are_answered_and_the_server_keeps_serving() -> None:
    async with in_process() as server, await LineClient.open(server.port) as c:
        await c.write(
            ack("jobs", 0),
            {"command": "ack", "topic": "jobs", "index": 1, "extra": 1},
            sub("jobs", ack=True, prefetch=-5),
            sub("jobs", ack=True),
            nack("jobs", 99),
            *[ack("jobs", n) for n in range(500)],
        )
        replies = await c.read_n(505)
        assert replies[:5] == [
            fail(Reason.NOT_ACKING),
            fail(Reason.MALFORMED),
            fail(Reason.BAD_PREFETCH),
            OK,
            fail(Reason.NOT_PENDING),
        ]
        assert replies[5:] == [fail(Reason.NOT_PENDING)] * 500
        assert await c.request(send("jobs", "fine", "all")) == {
            **send("jobs", "fine", "all"),
            "index": 0,
        }


@BOTH_BACKENDS
async def test_10000_jobs_over_4_workers_each_done_exactly_once() -> None:
    total = 10_000
    done: list[int] = []
    async with in_process() as server:

        async def worker(ready: anyio.Event) -> None:
            async with await LineClient.open(server.port) as c:
                assert await c.request(sub("jobs", ack=True, prefetch=50)) == OK
                ready.set()
                while True:
                    message = await c.read()
                    if message == OK:
                        continue
                    if message["msg"] == "stop":
                        await c.write(ack("jobs", message["index"]))
                        return
                    assert message["attempt"] == 1
                    done.append(message["index"])
                    await c.write(ack("jobs", message["index"]))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                ready = anyio.Event()
                tg.start_soon(worker, ready)
                await ready.wait()
            async with await LineClient.open(server.port) as producer:
                batch = 500
                for start in range(0, total, batch):
                    await producer.write(
                        *[send("jobs", str(n), "one") for n in range(start, start + batch)]
                    )
                    assert await producer.read_n(batch) == [OK] * batch
                # Sent after every job: each worker stops at its own (jobs go round robin).
                await producer.write(*[send("jobs", "stop", "one") for _ in range(4)])
                assert await producer.read_n(4) == [OK] * 4
    assert sorted(done) == list(range(total))


@pytest.mark.parametrize("fsync", ["batch", "off"])
async def test_sigkill_of_a_durable_server_with_jobs_pending(data_dir: Path, fsync: str) -> None:
    """Nothing acknowledged to its sender is lost, nothing acked comes back, attempts survive."""
    args = ("--data-dir", str(data_dir), "--fsync", fsync)
    async with server_process(*args) as server:
        async with await LineClient.open(server.port) as producer:
            await producer.write(*[send("jobs", str(n), "one") for n in range(20)])
            assert await producer.read_n(20) == [OK] * 20
        worker = await LineClient.open(server.port)
        assert await worker.request(sub("jobs", ack=True, prefetch=10)) == OK
        held = await worker.read_n(10)
        assert [(m["index"], m["attempt"]) for m in held] == [(n, 1) for n in range(10)]
        await worker.write(*[ack("jobs", n) for n in range(5)])
        replies = await worker.read_n(10)  # each ack's reply after the job it frees
        acked_replies = [r for r in replies if r == OK]
        assert len(acked_replies) == 5
        server.kill()
        await worker.aclose()
    async with server_process(*args) as server, await LineClient.open(server.port) as worker:
        assert await worker.request(sub("jobs", ack=True, prefetch=100)) == OK
        back = await worker.read_n(15)
        by_index = {m["index"]: m["attempt"] for m in back}
        # 0..4 were acked: never again. 5..14 were delivered once: attempt 2.
        # 15..19 were never delivered: attempt 1.
        assert by_index == {**{n: 2 for n in range(5, 15)}, **{n: 1 for n in range(15, 20)}}
        await worker.write(*[ack("jobs", n) for n in by_index])
        assert await worker.read_n(15) == [OK] * 15

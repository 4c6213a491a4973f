"""Acknowledged work-queue throughput: 1 producer, 4 consumers, an ack per job, pipelined.

    python benchmarks/work_queue_bench.py [--jobs 20000] [--quick] [--json FILE]

Runs ``python -m mqcore_tcp`` (in memory, then with a data directory) and,
through the async client, measures jobs per second from the first publish to
the last job acked, for three cases side by side:

- ``plain one``: ``delivery: "one"`` to 4 plain subscribers (no acks, the
  figure of today's work queue);
- ``acked``: the same jobs to 4 ``consume()`` consumers (prefetch 100), each
  job acked with ``ack(wait=False)`` (pipelined, no round trip per job);
- ``acked durable``: ``acked`` against a server with ``--data-dir``.

Nothing is asserted about speed; the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mqcore_client
from mqcore_tcp.testing import running_async

WORKERS = 4


async def _workers(port: int, topic: str, total: int, acked: bool) -> None:
    """Run WORKERS plain subscribers (or acking consumers) until ``total`` jobs are done."""
    done = 0
    finished = anyio.Event()

    async def worker(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal done
        async with mqcore_client.connect("127.0.0.1", port) as client:
            if acked:
                async with client.consume(topic, prefetch=100) as jobs:
                    task_status.started()
                    async for job in jobs:
                        await job.ack(wait=False)  # pipelined: no round trip per job
                        done += 1
                        if done == total:
                            await client.flush()
                            finished.set()
            else:
                async with client.subscribe(topic, cache=False) as sub:
                    task_status.started()
                    async for _message in sub:
                        done += 1
                        if done == total:
                            finished.set()

    await _produce(port, topic, total, worker, finished)


Worker = Callable[..., Coroutine[Any, Any, None]]


async def _produce(
    port: int, topic: str, total: int, worker: Worker, finished: anyio.Event
) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(WORKERS):
            await tg.start(worker)
        async with mqcore_client.connect("127.0.0.1", port) as producer:
            for n in range(total):
                await producer.publish(topic, str(n), "one")
            await producer.flush()
            await finished.wait()
        tg.cancel_scope.cancel()


async def _case(name: str, total: int, durable: bool, acked: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        args = ("--data-dir", str(Path(tmp) / "data")) if durable else ("--in-memory",)
        async with running_async(*args, grace=30) as server:
            start = time.perf_counter()
            await _workers(server.port, "jobs", total, acked)
            elapsed = time.perf_counter() - start
    return {"name": name, "jobs": total, "seconds": elapsed, "rate": total / elapsed}


async def _run(total: int) -> list[dict[str, object]]:
    return [
        await _case("plain one", total, durable=False, acked=False),
        await _case("acked", total, durable=False, acked=True),
        await _case("acked durable", total, durable=True, acked=True),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three cases and print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 jobs: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    cases = anyio.run(_run, 2_000 if args.quick else args.jobs)
    for case in cases:
        print(f"{case['name']:<16} {case['rate']:>10,.0f} jobs/s  ({case['jobs']} jobs, 4 workers)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A work queue that loses nothing: acknowledged jobs over workers, a crash survived.

Start a server (``make serve``), then:

    python examples/work_queue.py --workers 3 --jobs 100

The producer sends every job with ``delivery="one"``. Each worker consumes
the jobs topic with ``client.consume()``: the server hands each job to one
worker at a time (at most ``prefetch`` unacked per worker), and
``async with job:`` acknowledges it once the block succeeds (or hands it back
if it raises). First, a worker takes a few jobs and crashes without acking
them: the server hands them to the other workers (``attempt`` 2), so every
job is still done exactly once. Workers report results on a second topic.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections import Counter
from collections.abc import Sequence

import anyio
import anyio.abc

import mqcore_client

#: Jobs the crashing worker takes before it dies.
CRASH_AFTER = 5


async def worker(
    host: str,
    port: int,
    name: str,
    jobs: str,
    results: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Square each job's number, report ``"<job> <name> <square> <attempt>"``; until cancelled."""
    async with (
        mqcore_client.connect(host, port) as client,
        client.consume(jobs, prefetch=10) as consumer,
    ):
        task_status.started()
        async for job in consumer:
            async with job:  # acked when the block ends without an exception
                number = int(job.msg)
                await client.send(results, f"{number} {name} {number * number} {job.attempt}")


async def crashing_worker(host: str, port: int, jobs: str, taken: anyio.Event) -> None:
    """Take CRASH_AFTER jobs and die holding them: no ack, no result."""
    async with (
        mqcore_client.connect(host, port) as client,
        client.consume(jobs, prefetch=CRASH_AFTER) as consumer,
    ):
        held = 0
        async for _job in consumer:
            held += 1
            if held == CRASH_AFTER:
                break  # "crash": the connection goes, the jobs go back to the server
    taken.set()


async def run(host: str, port: int, workers: int, jobs: int) -> Counter[str]:
    """Run ``workers`` workers over ``jobs`` jobs; return how many jobs each worker did.

    Raises ``RuntimeError`` unless every job was done exactly once.
    """
    run_id = uuid.uuid4().hex[:8]  # Fresh topics: a long-lived server keeps caches.
    jobs_topic, results_topic = f"jobs.{run_id}", f"results.{run_id}"
    done: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()
    redelivered = 0
    async with (
        mqcore_client.connect(host, port) as client,
        client.subscribe(results_topic) as results,
        anyio.create_task_group() as tg,
    ):
        crashed = anyio.Event()
        tg.start_soon(crashing_worker, host, port, jobs_topic, crashed)
        for job in range(jobs):
            await client.publish(jobs_topic, str(job), delivery="one")
        await client.flush()
        if jobs >= CRASH_AFTER:
            await crashed.wait()
        for n in range(workers):
            await tg.start(worker, host, port, f"w{n}", jobs_topic, results_topic)
        async for result in results:
            job_text, name, square, attempt = result.msg.split()
            redelivered += attempt != "1"
            done[int(job_text)] += 1
            by_worker[name] += 1
            if int(square) != int(job_text) ** 2:
                raise RuntimeError(f"wrong result: {result.msg}")
            if sum(done.values()) == jobs:
                break
        tg.cancel_scope.cancel()
    if sorted(done) != list(range(jobs)) or set(done.values()) != {1}:
        raise RuntimeError(f"jobs not done exactly once: {done}")
    if jobs >= CRASH_AFTER and redelivered < CRASH_AFTER:
        raise RuntimeError(f"only {redelivered} of the crashed worker's jobs were redelivered")
    return by_worker


def main(argv: Sequence[str] | None = None) -> int:
    """Run the work queue from the command line."""
    parser = argparse.ArgumentParser(
        description="Spread acknowledged jobs over workers; one worker crashes, nothing is lost."
    )
    parser.add_argument("--workers", type=int, default=3, help="workers (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=100, help="jobs (default: %(default)s)")
    parser.add_argument("--host", default=mqcore_client.DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=mqcore_client.DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        by_worker = anyio.run(run, args.host, args.port, args.workers, args.jobs)
    except (mqcore_client.MQError, RuntimeError) as exc:
        print(f"work_queue: {exc}", file=sys.stderr)
        return 1
    shares = ", ".join(f"{name}: {count}" for name, count in sorted(by_worker.items()))
    print(f"{args.jobs} jobs done exactly once by {len(by_worker)} worker(s) ({shares})")
    if args.jobs >= CRASH_AFTER:
        print(f"(a worker crashed first holding {CRASH_AFTER} unacked jobs: others did them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

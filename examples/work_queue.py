"""A work queue: ``delivery: "one"`` spreads jobs over workers, each job done once.

Start a server (``make serve``), then:

    python examples/work_queue.py --workers 3 --jobs 100

Each worker is its own connection subscribed to the jobs topic; the producer
sends every job with ``delivery="one"``, so the server hands it to exactly one
connected worker (a job sent before any worker subscribed waits in the cache,
and the first worker to subscribe takes it). Workers report results on a
second topic. While every worker stays connected, each job is done exactly once;
a worker that disconnects with jobs in hand loses them (there are no acks).
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


async def worker(
    host: str,
    port: int,
    name: str,
    jobs: str,
    results: str,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Square each job's number and report ``"<job> <name> <square>"`` until cancelled."""
    async with (
        mqcore_client.connect(host, port) as client,
        client.subscribe(jobs) as sub,
    ):
        task_status.started()
        async for job in sub:
            number = int(job.msg)
            await client.send(results, f"{number} {name} {number * number}")


async def run(host: str, port: int, workers: int, jobs: int) -> Counter[str]:
    """Run ``workers`` workers over ``jobs`` jobs; return how many jobs each worker did.

    Raises ``RuntimeError`` unless every job was done exactly once.
    """
    run_id = uuid.uuid4().hex[:8]  # Fresh topics: a long-lived server keeps caches.
    jobs_topic, results_topic = f"jobs.{run_id}", f"results.{run_id}"
    done: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()
    async with (
        mqcore_client.connect(host, port) as client,
        client.subscribe(results_topic) as results,
        anyio.create_task_group() as tg,
    ):
        for n in range(workers):
            await tg.start(worker, host, port, f"w{n}", jobs_topic, results_topic)
        for job in range(jobs):
            await client.publish(jobs_topic, str(job), delivery="one")
        await client.flush()
        async for result in results:
            job_text, name, square = result.msg.split()
            done[int(job_text)] += 1
            by_worker[name] += 1
            if int(square) != int(job_text) ** 2:
                raise RuntimeError(f"wrong result: {result.msg}")
            if sum(done.values()) == jobs:
                break
        tg.cancel_scope.cancel()
    if sorted(done) != list(range(jobs)) or set(done.values()) != {1}:
        raise RuntimeError(f"jobs not done exactly once: {done}")
    return by_worker


def main(argv: Sequence[str] | None = None) -> int:
    """Run the work queue from the command line."""
    parser = argparse.ArgumentParser(description="Spread jobs over workers with delivery 'one'.")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

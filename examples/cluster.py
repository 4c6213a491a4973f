"""Three mqcore nodes on one Redis acting as one broker, on this machine.

Needs ``redis-server`` (``apt-get install redis-server``) and the cluster
extra (``pip install 'mqcore[cluster]'``). Then:

    python examples/cluster.py

It starts a ``redis-server`` and three nodes (``python -m mqcore_tcp
--cluster redis://127.0.0.1:PORT/0``), each on a free port, and shows:

1. a message sent on node 1 reaching subscribers on nodes 2 and 3, with the
   same index on both (one numbering for the whole cluster);
2. a subscriber arriving late on node 3 with ``last_seen`` getting the
   messages it missed from the cache in Redis, though they were sent on node 1;
3. a ``one`` message delivered to exactly one subscriber among all nodes;
4. a client given every node's address, resuming on another node without a
   gap once its node is killed.

Everything it started is stopped on the way out, whatever happens (the
``finally`` blocks: a shell script's ``trap``). ``--redis-url`` uses a Redis
you already run instead of starting one.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import anyio

import mqcore_client
from mqcore_tcp.testing import ServerProcess, launch
from mqcore_tcp.testing_redis import start_redis

#: Seconds the whole demonstration may take.
DEADLINE = 60.0


async def demonstrate(urls: Sequence[str], show: Callable[[str], object]) -> list[str]:
    """Run the four steps against nodes at ``urls`` (at least 3); return what was shown."""
    shown: list[str] = []

    def say(text: str) -> None:
        shown.append(text)
        show(text)

    one, two, three = urls[:3]
    async with (
        mqcore_client.connect(one) as on_one,
        mqcore_client.connect(two) as on_two,
        mqcore_client.connect(three) as on_three,
    ):
        say(f"1. one broker: hello says epoch {on_one.epoch} on every node")
        assert on_one.epoch == on_two.epoch == on_three.epoch
        async with (
            on_two.subscribe("news", cache=False) as at_two,
            on_three.subscribe("news", cache=False) as at_three,
        ):
            await on_one.send("news", "sent on node 1")
            got_two, got_three = await anext(at_two), await anext(at_three)
            say(f"   node 2 got {got_two.msg!r} #{got_two.index}")
            say(f"   node 3 got {got_three.msg!r} #{got_three.index}")
        for n in range(3):
            await on_one.send("news", f"later {n}")
        async with on_three.subscribe("news", last_seen=got_three.index) as late:
            missed = [(await anext(late)).msg for _ in range(3)]
        say(f"2. a late subscriber on node 3 replays what it missed: {missed}")
        jobs = [on_two.subscribe("jobs", cache=False), on_three.subscribe("jobs", cache=False)]
        async with jobs[0] as worker_two, jobs[1] as worker_three:
            for n in range(4):
                await on_one.send("jobs", f"job {n}", delivery="one")
            taken: list[str] = []
            for worker, name in ((worker_two, "node 2"), (worker_three, "node 3")):
                with anyio.move_on_after(0.5):
                    async for job in worker:
                        taken.append(f"{job.msg} on {name}")
                        if len(taken) == 4:
                            break
            say(f"3. four 'one' messages, each taken once: {sorted(taken)}")
    return shown


async def fail_over(
    nodes: Sequence[ServerProcess], urls: Sequence[str], show: Callable[[str], object]
) -> str:
    """Step 4: a client of every node loses its node (SIGKILL) and resumes on the next."""
    back = anyio.Event()
    async with (
        mqcore_client.connect(list(urls), reconnect=True, on_reconnect=back.set) as client,
        mqcore_client.connect(urls[2]) as sender,
        client.subscribe("ticks", cache=False) as ticks,
    ):
        first = client.address.url
        await sender.send("ticks", "before")
        before = await anext(ticks)
        nodes[0].send_signal(signal.SIGKILL)
        await back.wait()
        await sender.send("ticks", "after")
        after = await anext(ticks)
    text = (
        f"4. failover: {first} killed, resumed on {client.address.url}: "
        f"#{before.index} {before.msg!r} then #{after.index} {after.msg!r}, gap={after.gap}"
    )
    show(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Start Redis and three nodes, demonstrate, stop them all."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="a Redis to use (default: start one)")
    parser.add_argument("--nodes", type=int, default=3, help="how many nodes (at least 3)")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    with ExitStack() as stop_all:  # the trap: stops what started, in reverse order
        redis_url = args.redis_url
        if redis_url is None:
            redis = stop_all.enter_context(start_redis())
            redis_url = redis.url
            print(f"redis-server on {redis_url} (pid {redis.pid})")
        nodes: list[ServerProcess] = []
        for _ in range(args.nodes):
            node = launch("--cluster", redis_url)
            stop_all.callback(node.stop)
            nodes.append(node)
            print(f"node {len(nodes)}: {node.url} (pid {node.pid})")
        urls = [node.url for node in nodes]

        async def run() -> None:
            with anyio.fail_after(DEADLINE):
                await demonstrate(urls, print)
                await fail_over(nodes, urls, print)

        anyio.run(run)
    print("stopped everything")
    return 0


if __name__ == "__main__":
    sys.exit(main())

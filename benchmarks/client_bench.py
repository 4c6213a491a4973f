"""Client throughput: pipelined publish rate and consume rate through ``mqcore_client``.

Runs a server (a subprocess by default, so client and server get a core
each; ``--in-process`` shares one event loop) and measures three things
through the async client, each next to the same work done by a raw socket
with pre-encoded lines (the ceiling; the ratio is the client's cost):
awaited ``send`` round trips, pipelined ``publish`` + ``flush``, and
consuming a subscription that a raw producer feeds.

    python benchmarks/client_bench.py [-n 100000] [--size 100] [--in-process] [--port SPEC]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import msgspec

if __package__ in (None, ""):  # run as `python benchmarks/client_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mqcore_client
import mqcore_tcp
from benchmarks.common import add_port_option
from mqcore import Send, Subscribe
from mqcore_tcp.testing import running

HOST = "127.0.0.1"
#: Lines a raw producer writes at once.
BATCH = 1000


def _line(topic: str, msg: str) -> bytes:
    return msgspec.json.encode(Send(topic, msg, "all", cache=False)) + b"\n"


async def _read_lines(stream: anyio.abc.SocketStream, count: int) -> None:
    """Read until ``count`` more lines have arrived."""
    while count > 0:
        count -= (await stream.receive(1 << 18)).count(b"\n")


async def raw_produce(port: int, n: int, topic: str, msg: str) -> None:
    """Write ``n`` pre-encoded sends in batches; read their ``n`` replies."""
    line = _line(topic, msg)
    async with await anyio.connect_tcp(HOST, port) as stream, anyio.create_task_group() as tg:

        async def write() -> None:
            for start in range(0, n, BATCH):
                await stream.send(line * min(BATCH, n - start))

        tg.start_soon(write)
        await _read_lines(stream, n)


async def client_send(port: int, n: int, msg: str) -> None:
    """Awaited sends: one round trip each."""
    async with mqcore_client.connect(HOST, port) as client:
        for _ in range(n):
            await client.send("bench.send", msg, cache=False)


async def raw_send(port: int, n: int, msg: str) -> None:
    """Round trips on a raw socket: write one line, read its reply."""
    line = _line("bench.send", msg)
    async with await anyio.connect_tcp(HOST, port) as stream:
        for _ in range(n):
            await stream.send(line)
            await _read_lines(stream, 1)


async def client_publish(port: int, n: int, msg: str) -> None:
    """Pipelined publishes, then one flush."""
    async with mqcore_client.connect(HOST, port) as client:
        for _ in range(n):
            await client.publish("bench.publish", msg, cache=False)
        await client.flush()


async def raw_publish(port: int, n: int, msg: str) -> None:
    """Pre-encoded sends in batches of 1000."""
    await raw_produce(port, n, "bench.publish", msg)


async def client_consume(port: int, n: int, msg: str) -> None:
    """A client subscription receives ``n`` messages from a raw producer."""
    async with (
        mqcore_client.connect(HOST, port, max_queued=n + 1) as client,
        client.subscribe("bench.consume", cache=False) as sub,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(raw_produce, port, n, "bench.consume", msg)
        received = 0
        async for _ in sub:
            received += 1
            if received == n:
                break


async def raw_consume(port: int, n: int, msg: str) -> None:
    """A raw socket subscribes and counts ``n`` delivery lines from a raw producer."""
    async with await anyio.connect_tcp(HOST, port) as stream, anyio.create_task_group() as tg:
        await stream.send(msgspec.json.encode(Subscribe("bench.consume", cache=False)) + b"\n")
        await _read_lines(stream, 1)
        tg.start_soon(raw_produce, port, n, "bench.consume", msg)
        await _read_lines(stream, n)


Bench = Callable[[int, int, str], Awaitable[None]]
CASES: list[tuple[str, Bench, Bench, int]] = [
    ("send (awaited)", client_send, raw_send, 10),
    ("publish + flush", client_publish, raw_publish, 1),
    ("consume", client_consume, raw_consume, 1),
]


async def _rate(bench: Bench, port: int, n: int, msg: str) -> float:
    start = time.perf_counter()
    await bench(port, n, msg)
    return n / (time.perf_counter() - start)


async def run(port: int, n: int, size: int) -> list[tuple[str, int, float, float]]:
    """Run every case against the server on ``port``: (name, messages, client/s, raw/s)."""
    msg = "x" * size
    rows = []
    for name, client, raw, divisor in CASES:
        count = max(n // divisor, 1)
        rows.append(
            (name, count, await _rate(client, port, count, msg), await _rate(raw, port, count, msg))
        )
    return rows


async def run_in_process(n: int, size: int) -> list[tuple[str, int, float, float]]:
    """Start a server in this event loop, then run every benchmark against it."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(mqcore_tcp.serve, host=HOST, port=0))
        rows = await run(port, n, size)
        tg.cancel_scope.cancel()
    return rows


def run_subprocess(port: int, n: int, size: int) -> list[tuple[str, int, float, float]]:
    """Start ``python -m mqcore_tcp`` on ``port`` (0: a free one), then run every benchmark."""
    with running("--host", HOST, port=port) as server:
        return anyio.run(run, server.port, n, size)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the benchmarks, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000, help="messages (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=100, help="message bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in the benchmark's event loop"
    )
    add_port_option(parser)
    args = parser.parse_args(argv)
    rows = (
        anyio.run(run_in_process, args.n, args.size)
        if args.in_process
        else run_subprocess(next(args.port), args.n, args.size)
    )
    where = "in-process" if args.in_process else "subprocess"
    print(f"mqcore_client, {args.size}-byte messages, server: {where}")
    print(
        f"{'benchmark':<18}{'messages':>10}{'client msg/s':>14}{'raw msg/s':>12}{'client/raw':>12}"
    )
    for name, count, client, raw in rows:
        print(f"{name:<18}{count:>10}{client:>14,.0f}{raw:>12,.0f}{client / raw:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

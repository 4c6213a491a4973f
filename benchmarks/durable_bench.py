"""Durable vs in-memory: pipelined publish throughput, and the store's size on disk.

::

    python -m benchmarks.durable_bench                    # both parts, defaults below
    python -m benchmarks.durable_bench --rounds 3 --duration 5
    python -m benchmarks.durable_bench --skip-disk        # throughput only
    python -m benchmarks.durable_bench --skip-disk --skip-throughput   # 1,000 topics only
    python -m benchmarks.durable_bench --fsync always     # the strictest setting

Throughput: starts ``python -m mqcore_tcp`` (a subprocess on a loopback
port: any free one, or see ``--port``) in memory and with ``--data-dir``
(default ``--fsync``), alternately, ``--rounds`` times each, and drives each with
``mqload throughput --proto aiomemq --port P --subs 1``. It prints every run
and the ratio of the medians, durable / in-memory (the aim, issue 14: at least 0.8).

Many topics: the same alternation, but one pipelined Python sender sends
``--many-sends`` messages round-robin to ``--topics`` (1,000) topics and
waits for every reply, so each commit touches up to 1,000 topics (the
store's per-topic cost). The aim: durable at least 0.5x in-memory.

Disk: starts a durable server with ``--cache-size 100``, sends 1,000,000
messages of 64 bytes to 1,000 topics from a pipelined Python sender, waits
for every reply, and reports the data directory's size while running and
after a graceful stop (which folds the write-ahead log into the file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import MqloadNotFoundError, add_port_option, find_mqload
from mqcore_tcp.testing import ServerProcess, running

__all__ = ["main"]


@contextmanager
def server(ports: Iterator[int], *args: str) -> Iterator[ServerProcess]:
    """Run the server with ``args`` on the next of ``ports`` until the block ends (then SIGTERM)."""
    with running(*args, port=next(ports), grace=30) as srv:
        yield srv


def mqload_throughput(mqload: str, srv: ServerProcess, duration: float) -> dict[str, Any]:
    """One ``mqload throughput`` run against ``srv``; its JSON result."""
    command = [
        mqload,
        "throughput",
        "--proto",
        "aiomemq",
        "--port",
        str(srv.port),
        "--subs",
        "1",
        "--duration",
        str(duration),
        "--broker-pid",
        str(srv.pid),
    ]
    done = subprocess.run(command, capture_output=True, check=True, timeout=duration + 120)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def alternate(
    ports: Iterator[int],
    rounds: int,
    fsync: str,
    measure: Callable[[ServerProcess], float],
    aim: float,
) -> dict[str, Any]:
    """Measure a rate in memory and durable alternately; print and return the rates and ratio.

    Alternating makes both modes see the same machine.
    """
    rates: dict[str, list[float]] = {"in-memory": [], "durable": []}
    for n in range(rounds):
        for mode in ("in-memory", "durable"):
            with tempfile.TemporaryDirectory() as tmp:
                args = ["--data-dir", tmp, "--fsync", fsync] if mode == "durable" else []
                with server(ports, *args) as srv:
                    print(f"  round {n + 1} {mode:9}:", end="", flush=True)
                    rates[mode].append(measure(srv))
    memory = statistics.median(rates["in-memory"])
    durable = statistics.median(rates["durable"])
    ratio = durable / memory
    print(f"  median: in-memory {memory:,.0f} msg/s, durable ({fsync}) {durable:,.0f} msg/s")
    print(f"  ratio durable / in-memory: {ratio:.2f} (aim: >= {aim:.2f})")
    return {"rates": rates, "median": {"in-memory": memory, "durable": durable}, "ratio": ratio}


def throughput(
    ports: Iterator[int], mqload: str, rounds: int, duration: float, fsync: str
) -> dict[str, Any]:
    """One publisher to one subscriber (mqload), in memory and durable alternately."""

    def measure(srv: ServerProcess) -> float:
        result = mqload_throughput(mqload, srv, duration)
        ok = result.get("ok") and not result.get("errors") and not result.get("undelivered")
        rate = float(result["pub_rate"])
        print(
            f" {rate:>10,.0f} msg/s published, "
            f"{float(result['deliver_rate']):>10,.0f} delivered"
            f"{'' if ok else '  (mqload reported a problem: ' + json.dumps(result) + ')'}",
            flush=True,
        )
        return rate

    return alternate(ports, rounds, fsync, measure, aim=0.8)


def dir_size(path: Path) -> int:
    """Bytes used by the files in ``path``."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def pipelined_sends(port: int, sends: int, topics: int, payload: int) -> float:
    """Send ``sends`` messages round-robin over ``topics``; wait for every reply; return seconds."""
    msg = "x" * payload
    lines = [
        b'{"command":"send","topic":"topic-%d","msg":"%s","delivery":"all"}\n' % (t, msg.encode())
        for t in range(topics)
    ]
    batch = b"".join(lines)  # one send to every topic
    rounds, rest = divmod(sends, topics)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()

        def write() -> None:
            for _ in range(rounds):
                sock.sendall(batch)
            sock.sendall(b"".join(lines[:rest]))

        writer = threading.Thread(target=write)
        writer.start()
        replies = 0
        while replies < sends:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError(f"the server closed the connection after {replies} replies")
            replies += data.count(b"\n")
        writer.join()
        return time.perf_counter() - start


def many_topics(
    ports: Iterator[int], rounds: int, sends: int, topics: int, payload: int, fsync: str
) -> dict[str, Any]:
    """In-memory and durable alternately: ``sends`` pipelined sends over ``topics`` topics."""

    def measure(srv: ServerProcess) -> float:
        rate = sends / pipelined_sends(srv.port, sends, topics, payload)
        print(f" {rate:>10,.0f} msg/s acknowledged", flush=True)
        return rate

    return alternate(ports, rounds, fsync, measure, aim=0.5)


def disk_use(
    ports: Iterator[int], sends: int, topics: int, cache_size: int, payload: int, fsync: str
) -> dict[str, Any]:
    """The data directory's size after ``sends`` sends to ``topics`` topics."""
    data_dir = Path(tempfile.mkdtemp(prefix="mqcore-disk-"))
    try:
        args = ["--data-dir", str(data_dir), "--cache-size", str(cache_size), "--fsync", fsync]
        with server(ports, *args) as srv:
            seconds = pipelined_sends(srv.port, sends, topics, payload)
            running = dir_size(data_dir)
        stopped = dir_size(data_dir)
        # What must be kept: the newest `cache_size` messages of each topic.
        line = len(b'{"command":"send","topic":"topic-999","msg":"","delivery":"all"}') + payload
        cached = topics * cache_size * (line + len(b', "index": 999999}\r\n'))
        print(
            f"  {sends:,} sends of {payload} B to {topics:,} topics (cache size {cache_size}) "
            f"in {seconds:.1f} s ({sends / seconds:,.0f} msg/s, one pipelined connection)"
        )
        print(f"  data dir while running: {running / 1e6:.1f} MB (file + write-ahead log)")
        print(f"  data dir after a graceful stop: {stopped / 1e6:.1f} MB")
        print(f"  cached message bytes it holds: {cached / 1e6:.1f} MB")
        return {
            "sends": sends,
            "topics": topics,
            "cache_size": cache_size,
            "payload": payload,
            "seconds": seconds,
            "bytes_running": running,
            "bytes_stopped": stopped,
            "bytes_cached_messages": cached,
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the figures (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable_bench", description=__doc__)
    parser.add_argument(
        "--mqload", help="the mqload binary (default: see benchmarks/common.py); must exist"
    )
    add_port_option(parser)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode (%(default)s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (%(default)s)")
    parser.add_argument("--fsync", default="batch", choices=["always", "batch", "off"])
    parser.add_argument("--sends", type=int, default=1_000_000, help="disk test (%(default)s)")
    parser.add_argument("--topics", type=int, default=1000, help="disk test (%(default)s)")
    parser.add_argument("--cache-size", type=int, default=100, help="disk test (%(default)s)")
    parser.add_argument("--payload", type=int, default=64, help="message bytes (%(default)s)")
    parser.add_argument(
        "--many-sends", type=int, default=300_000, help="1,000-topic case (%(default)s)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-many-topics", action="store_true")
    parser.add_argument("--skip-disk", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"fsync": args.fsync, "cpus": os.cpu_count()}
    if not args.skip_throughput:
        try:
            mqload = find_mqload(args.mqload)
        except MqloadNotFoundError as exc:
            parser.error(str(exc))
        if mqload is None:
            parser.error("mqload is not built (see benchmarks/README.md) or give --skip-throughput")
        print(f"throughput (mqload throughput --subs 1, {args.duration:g} s per run):", flush=True)
        results["throughput"] = throughput(
            args.port, mqload, args.rounds, args.duration, args.fsync
        )
    if not args.skip_many_topics:
        print(f"{args.topics:,} topics (one pipelined sender):", flush=True)
        results["many_topics"] = many_topics(
            args.port, args.rounds, args.many_sends, args.topics, args.payload, args.fsync
        )
    if not args.skip_disk:
        print("disk use:", flush=True)
        results["disk"] = disk_use(
            args.port, args.sends, args.topics, args.cache_size, args.payload, args.fsync
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

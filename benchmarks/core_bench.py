"""Core-only benchmark: bytes fed to a :class:`mqcore.Broker` in-process, no sockets.

Measures the protocol core alone, so a core regression shows up without
network or event-loop noise::

    python benchmarks/core_bench.py            # ~2 s per case
    python benchmarks/core_bench.py --quick    # smoke run
    python benchmarks/core_bench.py --json out.json
    python benchmarks/core_bench.py --store    # also the durable store's case
    python benchmarks/core_bench.py --only-store

Cases:

``publish 1->1``
    one publisher pipelines sends to one subscriber, in 256 KiB reads
    (lines split across reads, as on a socket), default cache of 100;
``fan-out 1->50``
    the same with 50 subscribers; the rate counts deliveries;
``cache replay``
    a subscriber re-subscribes to a topic with a full cache of 100
    messages, over and over; the rate counts replayed messages;
``sub churn 100k``
    a topic with 100,000 subscribers while one more connection subscribes
    and unsubscribes over and over (and connections come and go); the rate
    counts subscription changes.
``store 1000 topics`` (with ``--store`` or ``--only-store``)
    the durable store alone: batches as a durable broker makes them when one
    connection sends 2 messages to each of 1,000 topics per loop turn (cache
    of 100, so each batch also trims), planned and applied to an SQLite file
    (``--fsync batch``) in a temporary directory; the rate counts messages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import mqcore
from mqcore import Broker, Record
from mqcore_tcp.store import SQLiteStore

__all__ = ["CaseResult", "main", "report", "run_cases"]

#: The size of one socket read in the TCP server, so chunks split lines the same way.
READ_SIZE = 256 << 10
PAYLOAD = b"0123456789x" * 5 + b"012345678"  # 64 bytes, like mqload's default


def _send_line(topic: bytes) -> bytes:
    # Byte for byte what mqload sends (compact JSON, CRLF).
    return b'{"command":"send","topic":"%s","msg":"%s","delivery":"all"}\r\n' % (topic, PAYLOAD)


@dataclass
class CaseResult:
    """One case's outcome: ``units`` (messages or deliveries) per round, each round's time.

    Rounds are timed in process CPU time. ``rate`` is the best round's rate
    (as ``timeit`` does: the fastest round is the one least disturbed);
    ``median_rate`` is reported too.
    """

    name: str
    unit: str
    units: int
    round_seconds: list[float]

    @property
    def rate(self) -> float:
        """Units per second in the fastest round."""
        return self.units / min(self.round_seconds)

    @property
    def median_rate(self) -> float:
        """Units per second in the median round."""
        return self.units / statistics.median(self.round_seconds)


def _chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]


def _timed(duration: float, one_round: Callable[[], object]) -> list[float]:
    """Time calls of ``one_round`` until ``duration`` has passed (at least 3 rounds)."""
    one_round()  # warm-up: first-use costs (topic creation, cache filling) are not measured
    times: list[float] = []
    end = time.perf_counter() + duration
    while len(times) < 3 or time.perf_counter() < end:
        # CPU time, not wall time: on a shared machine, time spent waiting
        # for a core is not the broker's cost.
        start = time.process_time()
        one_round()
        times.append(time.process_time() - start)
    return times


def bench_publish(subscribers: int, duration: float, messages: int = 20_000) -> CaseResult:
    """One publisher pipelining ``messages`` sends per round to ``subscribers`` subscribers."""
    broker = Broker()
    for _ in range(subscribers):
        sub = broker.open_connection()
        broker.receive_data(sub, b'{"command":"subscribe","topic":"t"}\r\n')
    pub = broker.open_connection()
    broker.take_output()
    chunks = _chunks(_send_line(b"t") * messages)
    written = 0

    def one_round() -> None:
        nonlocal written
        receive = broker.receive_data
        take = broker.take_output
        for chunk in chunks:
            receive(pub, chunk)
            # The server joins each connection's chunks into one write: so do we.
            for out in take().writes.values():
                written += len(b"".join(out))

    times = _timed(duration, one_round)
    units = messages * subscribers
    if subscribers == 1:
        return CaseResult("publish 1->1", "msg/s", units, times)
    return CaseResult(f"fan-out 1->{subscribers}", "deliveries/s", units, times)


def bench_replay(duration: float, cache_size: int = 100, rounds: int = 200) -> CaseResult:
    """Re-subscribe to a topic whose cache is full; count the replayed messages."""
    broker = Broker(cache_size=cache_size)
    pub = broker.open_connection()
    broker.receive_data(pub, _send_line(b"t") * cache_size)
    sub = broker.open_connection()
    again = (
        b'{"command":"subscribe","topic":"t"}\r\n{"command":"unsubscribe","topic":"t"}\r\n'
    ) * rounds
    broker.take_output()

    def one_round() -> None:
        broker.receive_data(sub, again)
        b"".join(broker.take_output().writes[sub])

    return CaseResult("cache replay", "msg/s", rounds * cache_size, _timed(duration, one_round))


def bench_churn(duration: float, subscribers: int = 100_000, rounds: int = 100) -> CaseResult:
    """Subscribe and unsubscribe (and connect, subscribe, disconnect) beside many subscribers."""
    broker = Broker()
    subscribe = b'{"command":"subscribe","topic":"t"}\r\n'
    for _ in range(subscribers):
        broker.receive_data(broker.open_connection(), subscribe)
    broker.take_output()
    churner = broker.open_connection()
    again = (subscribe + b'{"command":"unsubscribe","topic":"t"}\r\n') * rounds

    def one_round() -> None:
        broker.receive_data(churner, again)
        for _ in range(rounds):
            # A connection that subscribes, then goes away without unsubscribing.
            passer = broker.open_connection()
            broker.receive_data(passer, subscribe)
            broker.connection_lost(passer)
        broker.take_output()

    return CaseResult(
        f"sub churn {subscribers // 1000}k", "changes/s", 4 * rounds, _timed(duration, one_round)
    )


def bench_store(
    duration: float, topics: int = 1_000, per_topic: int = 2, batches: int = 20
) -> CaseResult:
    """Plan and apply the batches of a durable broker sending to ``topics`` topics."""
    broker = Broker(durable=True)
    pub = broker.open_connection()
    turn = b"".join(_send_line(b"t%d" % i) for i in range(topics)) * per_topic

    def make_batches() -> list[list[Record]]:
        made = []
        for _ in range(batches):
            broker.receive_data(pub, turn)
            made.append(broker.take_output().records)
        return made

    with tempfile.TemporaryDirectory() as directory, SQLiteStore.in_directory(directory) as store:
        for _ in range(4):  # fill every topic's cache of 100, so that batches trim
            for batch in make_batches():
                store.apply(batch)
        times: list[float] = []
        end = time.perf_counter() + duration
        while len(times) < 3 or time.perf_counter() < end:
            work = make_batches()  # the broker's share is not timed
            start = time.process_time()
            for batch in work:
                store.apply(batch)
            times.append(time.process_time() - start)
    return CaseResult(f"store {topics} topics", "msg/s", topics * per_topic * batches, times)


def run_cases(duration: float, *, core: bool = True, store: bool = False) -> list[CaseResult]:
    """Run the core's cases and, if asked, the store's, for about ``duration`` seconds each."""
    results = []
    if core:
        results += [
            bench_publish(1, duration),
            bench_publish(50, duration, messages=2_000),
            bench_replay(duration),
            bench_churn(duration),
        ]
    if store:
        results.append(bench_store(duration))
    return results


def report(
    results: list[CaseResult], title: str, json_path: str | None, extra: dict[str, object]
) -> None:
    """Print ``results`` as a table; with ``json_path``, also write them (and ``extra``) as JSON."""
    width = max(16, len(title), *(len(r.name) for r in results))
    print(f"{title:<{width}} {'best':>12} {'median':>12}  unit")
    for r in results:
        print(f"{r.name:<{width}} {r.rate:>12,.0f} {r.median_rate:>12,.0f}  {r.unit}")
    if json_path:
        data = {
            "python": sys.version.split()[0],
            **extra,
            "cases": [{**asdict(r), "rate": r.rate, "median_rate": r.median_rate} for r in results],
        }
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the core benchmark, print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.2 s per case")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--store", action="store_true", help="also the durable store's case")
    parser.add_argument("--only-store", action="store_true", help="only the store's case")
    args = parser.parse_args(argv)
    duration = 0.2 if args.quick else args.duration
    results = run_cases(duration, core=not args.only_store, store=args.store or args.only_store)
    core = "compiled" if mqcore.COMPILED else "pure"
    report(results, f"core case ({core})", args.json, {"duration": duration, "core": core})
    return 0


if __name__ == "__main__":
    sys.exit(main())

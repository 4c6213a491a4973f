"""Core-only benchmark of pattern routing: wildcard subscriptions against exact ones.

In-process, no sockets, timed in CPU time like :mod:`benchmarks.core_bench`::

    python -m benchmarks.wildcard_bench              # 10,000 subscribers, ~2 s per case
    python -m benchmarks.wildcard_bench --quick      # smoke run
    python -m benchmarks.wildcard_bench --subscribers 1000 --json out.json

Every case also has ``--subscribers`` idle connections, each subscribed
exactly to a topic of its own that is never sent to (they must cost a send
nothing). Cases, each with ``N = --subscribers``:

``fan-out exact``
    ``N`` connections subscribe to ``fan.t``; a publisher pipelines sends to
    it; the rate counts deliveries;
``fan-out wildcard``
    the same with ``N`` pattern subscriptions that all match ``fan.t``
    (``fan.*``, ``fan.>``, ``*.t`` and ``>`` in turn);
``routed exact``
    ``N`` connections, connection ``i`` subscribed to ``dev.i.temp``; the
    publisher sends to each topic in turn (one delivery per send);
``routed wildcard``
    the same with connection ``i`` subscribed to ``dev.i.*``: ``N``
    patterns, of which each send matches one. Matching is a trie walk,
    O(tokens), so this stays close to ``routed exact``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mqcore import Broker

from .core_bench import CaseResult, _chunks, _send_line, _timed, report

__all__ = ["main", "run_cases"]

_FAN_PATTERNS = (b"fan.*", b"fan.>", b"*.t", b">")


def _subscribe_line(topic: bytes) -> bytes:
    return b'{"command":"subscribe","topic":"%s"}\r\n' % topic


def _broker_with_idle(idle: int) -> Broker:
    broker = Broker()
    for n in range(idle):
        broker.receive_data(broker.open_connection(), _subscribe_line(b"idle.%d" % n))
    return broker


def _run(broker: Broker, stream: bytes, duration: float) -> list[float]:
    pub = broker.open_connection()
    broker.take_output()
    chunks = _chunks(stream)

    def one_round() -> None:
        for chunk in chunks:
            broker.receive_data(pub, chunk)
            # The server joins each connection's chunks into one write: so do we.
            for out in broker.take_output().writes.values():
                b"".join(out)

    return _timed(duration, one_round)


def bench_fan_out(subscribers: int, wildcard: bool, duration: float) -> CaseResult:
    """One publisher to ``subscribers`` subscribers of ``fan.t``, exact or by pattern."""
    broker = _broker_with_idle(subscribers)
    for n in range(subscribers):
        topic = _FAN_PATTERNS[n % len(_FAN_PATTERNS)] if wildcard else b"fan.t"
        broker.receive_data(broker.open_connection(), _subscribe_line(topic))
    messages = max(1, 200_000 // subscribers)
    times = _run(broker, _send_line(b"fan.t") * messages, duration)
    name = "fan-out wildcard" if wildcard else "fan-out exact"
    return CaseResult(name, "deliveries/s", messages * subscribers, times)


def bench_routed(subscribers: int, wildcard: bool, duration: float) -> CaseResult:
    """``subscribers`` connections, one topic each, exact or by a pattern; a send to each."""
    broker = _broker_with_idle(subscribers)
    for n in range(subscribers):
        topic = b"dev.%d.*" % n if wildcard else b"dev.%d.temp" % n
        broker.receive_data(broker.open_connection(), _subscribe_line(topic))
    rounds = max(1, 50_000 // subscribers)
    stream = b"".join(_send_line(b"dev.%d.temp" % n) for n in range(subscribers)) * rounds
    times = _run(broker, stream, duration)
    name = "routed wildcard" if wildcard else "routed exact"
    return CaseResult(name, "msg/s", rounds * subscribers, times)


def run_cases(duration: float, subscribers: int) -> list[CaseResult]:
    """Run every case for about ``duration`` seconds each."""
    return [
        bench_fan_out(subscribers, False, duration),
        bench_fan_out(subscribers, True, duration),
        bench_routed(subscribers, False, duration),
        bench_routed(subscribers, True, duration),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the wildcard benchmark, print a table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.2 s per case")
    parser.add_argument("--subscribers", type=int, default=10_000, help="N (see above)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    duration = 0.2 if args.quick else args.duration
    results = run_cases(duration, args.subscribers)
    extra = {"duration": duration, "subscribers": args.subscribers}
    report(results, "wildcard case", args.json, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

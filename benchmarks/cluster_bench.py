"""Cluster mode against one node: the same workloads, across two nodes on Redis and on one.

::

    python -m benchmarks.cluster_bench               # every case, 3 s each
    python -m benchmarks.cluster_bench --quick       # smoke run
    python -m benchmarks.cluster_bench --setups single --json out.json
    python -m benchmarks.cluster_bench --runs 3      # 3 runs, each table, then the medians
    python -m benchmarks.cluster_bench --cases latency --runs 3   # only some cases
    python -m benchmarks.cluster_bench --redis-url redis://10.0.0.5:6379/0

Setups, measured in the same run so that their ratio means something on a
shared machine:

``cluster``
    a ``redis-server`` (started here on a free port, persisting nothing,
    unless ``--redis-url``) and two nodes ``python -m mqcore_tcp --cluster
    URL``; the publisher is on node A, every subscriber on node B, so each
    message crosses Redis;
``single``
    one ``python -m mqcore_tcp --in-memory``, publisher and subscribers on it.

Cases (``--cases`` picks some; keys ``1->1``, ``1->50``, ``one``,
``latency``). ``mqload`` has one address, so it cannot publish on one node
and subscribe on another; two Python drivers do, the same one for both
setups so that their figures compare:

- the throughput cases, :mod:`benchmarks.pydriver` (asyncio, one process):
  ``1->1`` and ``1->50`` (one publisher pipelining 64-byte sends, 1 or 50
  subscribers; the rate counts deliveries) and ``one`` (``delivery: one``
  to 4 subscribers; each message is delivered once);
- ``latency``, :mod:`benchmarks.xlatency`: one message every 0.2 ms (5,000
  msg/s), end-to-end p50/p99, measured as ``mqload latency`` measures it
  (publisher paced by ``time.sleep``, subscriber in its own process, both
  on blocking sockets). pydriver's asyncio loop added its own jitter (its
  sleeps round to 1 ms on epoll, publisher and subscriber share one loop):
  on one node its p99 was about twice mqload's.

The drivers share the two cores with the servers and Redis, so the figures
are a floor; the CPU each process used over the case is reported next to
them (and, for ``latency``, the driver's own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/cluster_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pydriver import proc_cpu_seconds, run_workload
from benchmarks.xlatency import run_latency
from mqcore_tcp.testing import ServerStartError, launch
from mqcore_tcp.testing_redis import RedisStartError, redis_available, start_redis

__all__ = ["CASES", "Case", "main", "run_setup"]

SETUPS = ("cluster", "single")


@dataclass(frozen=True)
class Case:
    """One workload (``throughput``: pydriver; ``latency``: xlatency) with its options."""

    key: str
    workload: str
    opts: dict[str, Any]


CASES: tuple[Case, ...] = (
    Case("1->1", "throughput", {"subs": 1}),
    Case("1->50", "throughput", {"subs": 50}),
    Case("one", "throughput", {"subs": 4, "delivery": "one"}),
    Case("latency", "latency", {"rate": 5000}),
)
KEYS = tuple(case.key for case in CASES)


@dataclass
class Setup:
    """Where a case publishes and subscribes, and which processes do the work."""

    name: str
    pub_port: int
    sub_port: int
    pids: dict[str, int]


@contextmanager
def started(name: str, redis_url: str | None) -> Iterator[Setup]:
    """Start the processes of setup ``name``; stop them all on leaving."""
    with ExitStack() as stop_all:
        if name == "single":
            node = launch("--in-memory")
            stop_all.callback(node.stop)
            yield Setup(name, node.port, node.port, {"node": node.pid})
            return
        pids: dict[str, int] = {}
        if redis_url is None:
            redis = stop_all.enter_context(start_redis())
            redis_url, pids["redis"] = redis.url, redis.pid
        nodes = []
        for label in ("node A", "node B"):
            node = launch("--cluster", redis_url)
            stop_all.callback(node.stop)
            nodes.append(node)
            pids[label] = node.pid
        yield Setup(name, nodes[0].port, nodes[1].port, pids)


def _cpu(pids: dict[str, int]) -> dict[str, float | None]:
    return {label: proc_cpu_seconds(pid) for label, pid in pids.items()}


def _latency(setup: Setup, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    """:func:`benchmarks.xlatency.run_latency` as a row: ``ok``, or not with ``error``."""
    result: dict[str, Any] = {"workload": "latency", "proto": "aiomemq"}
    try:
        result.update(run_latency(setup.pub_port, setup.sub_port, rate, duration, warmup))
        result["ok"] = True
    except (OSError, RuntimeError, ValueError) as exc:
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return result


def run_case(setup: Setup, case: Case, duration: float, warmup: float) -> dict[str, Any]:
    """Run ``case`` on ``setup``: the driver's figures plus each process's CPU percent."""
    before, start = _cpu(setup.pids), time.monotonic()
    if case.workload == "latency":
        result = _latency(setup, float(case.opts["rate"]), duration, warmup)
    else:
        opts = {**case.opts, "duration": duration, "warmup": warmup, "sub_port": setup.sub_port}
        result = run_workload(case.workload, setup.pub_port, opts)
    elapsed = max(time.monotonic() - start, 1e-9)
    after = _cpu(setup.pids)
    result.pop("broker_cpu_pct", None)  # one process only: replaced by every process's below
    cpu = {}
    for label in setup.pids:
        b, a = before[label], after[label]
        cpu[label] = None if a is None or b is None else round(100 * (a - b) / elapsed, 1)
    return {"setup": setup.name, "case": case.key, **result, "cpu_pct": cpu}


def run_setup(
    name: str, cases: Sequence[Case], duration: float, warmup: float, redis_url: str | None
) -> list[dict[str, Any]]:
    """Every case on setup ``name``; a setup that cannot start gives failed rows, saying why."""
    try:
        with started(name, redis_url) as setup:
            return [run_case(setup, case, duration, warmup) for case in cases]
    except (ServerStartError, RedisStartError, OSError) as error:
        why = f"{type(error).__name__}: {error}"
        return [{"setup": name, "case": c.key, "ok": False, "error": why} for c in cases]


def _figure(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"FAILED: {str(row.get('error', '?')).splitlines()[0][:70]}"
    if row["workload"] == "latency":
        return f"p50 {row['p50_us'] / 1000:.2f} ms   p99 {row['p99_us'] / 1000:.2f} ms"
    lost = f"   undelivered {row['undelivered']}" if row["undelivered"] else ""
    return f"{row['deliver_rate']:>12,.0f} deliveries/s{lost}"


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """One line per case and setup, then the cluster/single ratio of each throughput."""
    print(f"{'case':<8} {'setup':<8} figure")
    for row in rows:
        cpu = row.get("cpu_pct") or {}
        used = "  ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if v is not None)
        if row.get("driver_cpu_pct") is not None:
            used += f"  driver {row['driver_cpu_pct']:.0f}%"
        print(f"{row['case']:<8} {row['setup']:<8} {_figure(row)}   cpu: {used}")
    by = {(r["setup"], r["case"]): r for r in rows if r.get("ok")}
    for case in CASES:
        cluster, single = by.get(("cluster", case.key)), by.get(("single", case.key))
        if cluster and single and case.workload == "throughput" and single["deliver_rate"]:
            ratio = cluster["deliver_rate"] / single["deliver_rate"]
            print(f"{case.key:<8} cluster/single = {ratio:.2f}")


def medians(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setup and case: the median of each figure over the runs that succeeded."""
    merged: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        merged.setdefault((row["setup"], row["case"]), []).append(row)
    out = []
    for group in merged.values():
        good = [r for r in group if r.get("ok")]
        if not good:
            out.append(group[0])
            continue
        row = dict(good[0])
        for key in ("deliver_rate", "p50_us", "p99_us", "undelivered", "driver_cpu_pct"):
            if key in row:
                row[key] = statistics.median(r[key] for r in good)
        row["cpu_pct"] = {
            label: statistics.median(r["cpu_pct"][label] or 0 for r in good)
            for label in row.get("cpu_pct") or {}
        }
        out.append(row)
    return out


def _quick(case: Case) -> Case:
    """``case`` for a smoke run: latency at 1,000 msg/s."""
    if case.workload != "latency":
        return case
    return Case(case.key, case.workload, {**case.opts, "rate": 1000})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cluster benchmark; print a table; 1 if a case failed, 2 on bad usage."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.3 s per case")
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated, of: cluster, single"
    )
    parser.add_argument(
        "--cases", default=",".join(KEYS), help=f"comma-separated, of: {', '.join(KEYS)}"
    )
    parser.add_argument("--redis-url", help="a Redis to use (default: start redis-server)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--runs", type=int, default=1, help="run everything N times (a shared machine is noisy)"
    )
    args = parser.parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if not setups or any(s not in SETUPS for s in setups):
        parser.error(f"--setups: choose among {', '.join(SETUPS)}")
    if "cluster" in setups and args.redis_url is None and redis_available() is not None:
        parser.error(f"the cluster setup needs Redis: {redis_available()}")
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    if not keys or any(k not in KEYS for k in keys):
        parser.error(f"--cases: choose among {', '.join(KEYS)}")
    duration, warmup = (0.3, 0.2) if args.quick else (args.duration, args.warmup)
    cases = [_quick(c) if args.quick else c for c in CASES if c.key in keys]
    if args.runs < 1:
        parser.error("--runs: at least 1")
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        these: list[dict[str, Any]] = []
        for name in setups:
            these += run_setup(name, cases, duration, warmup, args.redis_url)
        if args.runs > 1:
            print(f"-- run {run + 1} of {args.runs}")
        print_table(these)
        rows += [{**row, "run": run + 1} for row in these]
    if args.runs > 1:
        print(f"-- median of {args.runs} runs")
        print_table(medians(rows))
    if args.json:
        report = {"python": sys.version.split()[0], "duration": duration, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if all(row.get("ok") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the mqcore server over loopback TCP, with the shared load generator.

::

    python -m benchmarks.run                  # every workload, 5 s each
    python -m benchmarks.run --quick          # smoke run, ~1 s each
    python -m benchmarks.run --redis --nats --mosquitto   # peers side by side (need mqload)
    python -m benchmarks.run --compare-ref HEAD --server-arg=--cache-size=0
    python -m benchmarks.run --port 7100-7199  # only ports of that range

For each workload the runner starts ``python -m mqcore_tcp`` as a subprocess
(through :mod:`mqcore_tcp.testing`) on a loopback port (any free one unless
``--port`` says otherwise), drives it with ``mqload`` (the Rust load
generator in ``../shared/loadgen``) when it is found (see
:mod:`benchmarks.common`), and otherwise with a pure-Python asyncio driver,
labelled ``python-driver`` in the output. It prints a table and writes the
raw results as JSON (to ``benchmarks/results/`` by default).

Peers (``--redis``, ``--nats``, ``--mosquitto``; each found on PATH or in
/usr/sbin, skipped with a note when missing) run in the same invocation,
alternating with mqcore within each workload, with persistence off; below
the table, each peer's rate (and p99.9 latency) is given as a ratio of
mqcore's, so a target such as "1->1 at least 0.55x Redis" reads off one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mqcore
from benchmarks.common import (
    ROOT,
    MqloadNotFoundError,
    add_port_option,
    build_mqload,
    find_mqload,
)
from benchmarks.pydriver import DRIVER_NAME, proc_status_kb, run_workload
from mqcore_tcp.testing import ServerStartError, launch

__all__ = ["WORKLOADS", "find_mqload", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Workload:
    """One row of the benchmark: an mqload workload and its options."""

    key: str
    name: str
    opts: dict[str, Any]
    target: str


WORKLOADS: tuple[Workload, ...] = (
    Workload("throughput-1", "throughput", {"subs": 1}, ">= mosquitto and >= 10x reference"),
    Workload("throughput-50", "throughput", {"subs": 50}, ">= 1,000,000 deliveries/s"),
    Workload("pairs", "pairs", {"pairs": 20}, ">= mosquitto"),
    Workload("latency", "latency", {"rate": 20000}, "p99 < 2 ms"),
    Workload("conns", "conns", {"conns": 5000, "rounds": 5}, "all receive"),
)


@dataclass
class Variant:
    """A broker to measure: mqcore from some source tree, or a peer's binary."""

    label: str
    proto: str
    env: dict[str, str] = field(default_factory=dict)
    #: A peer's binary (redis-server, nats-server, mosquitto); None for mqcore.
    peer: str | None = None


#: Peer brokers: the option that asks for one, its binary, and mqload's protocol for it.
PEERS: tuple[tuple[str, str, str], ...] = (
    ("redis", "redis-server", "redis"),
    ("nats", "nats-server", "nats"),
    ("mosquitto", "mosquitto", "mqtt"),
)


# -- servers ------------------------------------------------------------------------


@dataclass
class Server:
    """A running broker process."""

    pid: int
    port: int
    log: list[str]
    exit_status: int | None = None


@contextlib.contextmanager
def start_server(
    variant: Variant, server_args: Sequence[str], workdir: Path, port: int
) -> Iterator[Server]:
    """Run the variant's broker on ``port`` (0: any free one); stop it (SIGTERM) on exit."""
    if variant.peer:
        with _peer(variant, workdir, port) as server:
            yield server
        return
    # cwd is a scratch dir, so `-m` does not import from wherever the runner was started.
    env = {**os.environ, **variant.env}
    launched = launch(*server_args, port=port, env=env, cwd=workdir)
    server = Server(launched.pid, launched.port, launched.log)
    try:
        yield server
    finally:
        server.exit_status = launched.stop()


def _peer_command(variant: Variant, workdir: Path, port: int) -> list[str]:
    """The command line that runs a peer on ``port``, in memory, loopback only."""
    assert variant.peer is not None
    if variant.proto == "redis":
        return [variant.peer, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip
    if variant.proto == "nats":
        return [variant.peer, "--addr", "127.0.0.1", "--port", str(port)]
    conf = workdir / f"mosquitto-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    return [variant.peer, "-c", str(conf)]


@contextlib.contextmanager
def _peer(variant: Variant, workdir: Path, port: int) -> Iterator[Server]:
    """A peer does not report its port: pick a free one, wait until it accepts."""
    if port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        _peer_command(variant, workdir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(proc.pid, port, [])
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{variant.label} did not listen on port {port}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)  # the peers have no readiness signal to wait on
        yield server
    finally:
        proc.terminate()
        try:
            server.exit_status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            server.exit_status = proc.wait()


# -- running workloads -------------------------------------------------------------------


def _mqload_run(
    mqload: str, workload: Workload, variant: Variant, port: int, pid: int, timing: dict[str, Any]
) -> dict[str, Any]:
    opts = {**workload.opts, **timing}
    cmd = [mqload, workload.name, "--proto", variant.proto, "--port", str(port)]
    for key, value in opts.items():
        if key in {"subs", "pairs", "rate", "conns", "rounds", "duration", "warmup", "drain"}:
            cmd += [f"--{key}", str(value)]
    cmd += ["--broker-pid", str(pid), "--tag", f"variant={variant.label}"]
    timeout = float(opts["duration"]) + float(opts["warmup"]) + float(opts["drain"]) + 120
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"mqload timed out after {timeout:.0f} s"}
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        err = done.stderr.decode(errors="replace").strip()
        return {"ok": False, "error": f"mqload exit {done.returncode}: {err[-500:]}"}
    result["driver"] = "mqload"
    return result


def run_one(
    workload: Workload,
    variant: Variant,
    mqload: str | None,
    server_args: Sequence[str],
    timing: dict[str, Any],
    workdir: Path,
    port: int = 0,
) -> dict[str, Any]:
    """Start a fresh server, run one workload against it, and stop it."""
    base: dict[str, Any] = {"variant": variant.label, "key": workload.key}
    try:
        with start_server(variant, server_args, workdir, port) as server:
            pid = server.pid
            if mqload is not None:
                result = _mqload_run(mqload, workload, variant, server.port, pid, timing)
            else:
                result = run_workload(workload.name, server.port, {**workload.opts, **timing}, pid)
            result.setdefault("broker_hwm_kb", proc_status_kb(pid, "VmHWM"))
    except (RuntimeError, ServerStartError, ValueError) as exc:
        return {**base, "ok": False, "error": str(exc)}
    result = {**base, **result, "port": server.port, "server_exit_status": server.exit_status}
    if server.exit_status not in (0, None) and not variant.peer:
        result.setdefault("notes", []).append(f"server exited {server.exit_status}")
        result["server_log_tail"] = "\n".join(server.log[-20:])
    return result


# -- reporting ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _row(r: dict[str, Any]) -> list[str]:
    key = r.get("key", "?")
    rate = r.get("rate_achieved") if key == "latency" else r.get("deliver_rate")
    hwm = r.get("broker_hwm_kb")
    status = "ok" if r.get("ok") else f"FAILED: {r.get('error', '?')}"
    if key == "conns" and r.get("ok"):
        received = r.get("received") or []
        status = f"all {r.get('conns')} received" if not r.get("incomplete_rounds") else "MISSED"
        if received and min(received) < int(r.get("conns", 0)):
            status = f"MISSED (min {min(received)})"
    return [
        str(r.get("variant")),
        key,
        str(r.get("driver", "?")),
        _fmt(rate),
        _fmt(r.get("p50_us"), 1),
        _fmt(r.get("p99_us"), 1),
        _fmt(r.get("p999_us"), 1),
        _fmt(r.get("fanout_ms_median"), 1),
        _fmt(r.get("broker_kb_per_conn"), 1),
        _fmt(r.get("broker_cpu_pct"), 0),
        _fmt(_per_cpu_second(r)),
        _fmt(r.get("other_cpu_pct"), 0),
        _fmt(hwm / 1024 if isinstance(hwm, (int, float)) else None, 1),
        status,
    ]


HEADER = [
    "broker",
    "workload",
    "driver",
    "rate/s",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "fanout ms",
    "KB/conn",
    "CPU %",
    "per CPU-s",
    "other %",
    "peak MB",
    "status",
]


def _per_cpu_second(r: dict[str, Any]) -> float | None:
    """The rate per second of the broker's CPU time: steadier than the rate on a busy machine."""
    rate, cpu = _measure(r), r.get("broker_cpu_pct")
    if rate is None or not isinstance(cpu, (int, float)) or cpu <= 0:
        return None
    return rate / (cpu / 100)


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a plain-text table.

    ``rate/s`` is deliveries per second (sends per second for ``latency``);
    ``CPU %`` is the broker's (100 = one core); ``per CPU-s`` the rate per
    second of the broker's CPU time (its cost per message, which a busy
    machine disturbs less than the rate); ``other %`` is the CPU that
    other processes on the machine used meanwhile (a disturbed run shows there).
    """
    rows = [HEADER, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _measure(r: dict[str, Any]) -> float | None:
    rate = r.get("rate_achieved") if r.get("key") == "latency" else r.get("deliver_rate")
    return float(rate) if r.get("ok") and isinstance(rate, (int, float)) else None


def format_ratios(results: Sequence[dict[str, Any]]) -> str:
    """mqcore against every other variant of the same workload, as ratios (mqcore / other).

    Rates: above 1 means mqcore is faster. For ``latency`` the ratio is of
    p99.9 latencies, for ``conns`` of the time a broadcast takes to reach every
    subscriber (other / mqcore, so above 1 again means mqcore is better).
    Empty when only mqcore ran.
    """
    lines: list[str] = []
    for key in dict.fromkeys(r.get("key") for r in results):
        rows = [r for r in results if r.get("key") == key]
        ours = next((r for r in rows if r.get("variant") == "mqcore"), None)
        if ours is None:
            continue
        for other in rows:
            if other is ours:
                continue
            if key == "conns":
                a, b, what = (
                    ours.get("fanout_ms_median"),
                    other.get("fanout_ms_median"),
                    "fan-out ms",
                )
                ratio = (
                    b / a
                    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
                    else None
                )
            elif key == "latency":
                a, b, what = ours.get("p999_us"), other.get("p999_us"), "p99.9 latency"
                ratio = (
                    b / a
                    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a
                    else None
                )
            else:
                a, b, what = _measure(ours), _measure(other), "rate"
                ratio = a / b if a is not None and b else None
                ours_cpu, other_cpu = _per_cpu_second(ours), _per_cpu_second(other)
                if ours_cpu is not None and other_cpu:
                    what = f"rate (per CPU-s {ours_cpu / other_cpu:.2f}x)"
            shown = "-" if ratio is None else f"{ratio:.2f}x"
            lines.append(f"{key:<14} mqcore vs {other.get('variant')!s:<18} {what:<30} {shown}")
    return "\n".join(["ratios (above 1: mqcore better)", *lines]) if lines else ""


def _peers(args: argparse.Namespace, mqload: str | None) -> list[Variant]:
    """The peers asked for, each found on PATH (or in /usr/sbin); a note for each missing."""
    found: list[Variant] = []
    for option, binary, proto in PEERS:
        if not getattr(args, option):
            continue
        path = shutil.which(binary) or (
            f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
        )
        if path is None or mqload is None:
            print(f"--{option} needs {binary} and mqload: skipped", file=sys.stderr)
        else:
            found.append(Variant(option, proto, peer=path))
    return found


def _raise_fd_limit(conns: int) -> int:
    """Raise the open-file limit (inherited by the server and mqload) for ``conns``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = conns * 2 + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # Each connection needs a descriptor in the server and one in the driver.
    return min(conns, (soft - 256) // 2) if soft != resource.RLIM_INFINITY else conns


def _ref_tree(ref: str, workdir: Path) -> Path:
    dest = workdir / f"ref-{ref.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "mqcore", "mqcore_tcp"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The runner's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark mqcore over loopback TCP with mqload (or a Python driver).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: ~1 s per workload")
    parser.add_argument("--duration", type=float, help="measured seconds per workload [5]")
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in WORKLOADS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument("--conns", type=int, help="connections for `conns` [5000; quick 300]")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG to `python -m mqcore_tcp` (repeatable), e.g. --server-arg=--cache-size=0",
    )
    add_port_option(parser)
    parser.add_argument(
        "--mqload",
        help="the mqload binary; an error if it is not one (default: $MQLOAD, then build/mqload/"
        "release/mqload, ../shared/loadgen/target/release/mqload, PATH)",
    )
    parser.add_argument(
        "--driver",
        choices=["auto", "mqload", "python"],
        default="auto",
        help="load driver: mqload if found (auto), mqload (fail if missing), or python",
    )
    parser.add_argument(
        "--build-mqload", action="store_true", help="build mqload with cargo when it is missing"
    )
    for option, binary, proto in PEERS:
        parser.add_argument(
            f"--{option}",
            action="store_true",
            help=f"also run {binary} ({proto} protocol) side by side (needs mqload)",
        )
    parser.add_argument(
        "--compare-ref",
        action="append",
        default=[],
        metavar="REF",
        help="also run mqcore as of git REF (repeatable), side by side",
    )
    parser.add_argument("--json", metavar="PATH", help="where to write JSON results")
    parser.add_argument("--no-json", action="store_true", help="do not write JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return 0 when every run completed, 1 otherwise."""
    args = parse_args(argv)
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = set(keys) - {w.key for w in WORKLOADS}
    if unknown:
        print(f"unknown workload(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    workloads = [w for w in WORKLOADS if w.key in keys]

    mqload: str | None = None
    try:
        if args.mqload is not None:
            find_mqload(args.mqload)  # given explicitly: it must exist, whatever the driver
        if args.driver != "python":
            mqload = find_mqload(args.mqload) or (build_mqload() if args.build_mqload else None)
    except MqloadNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if mqload is None and args.driver == "mqload":
        print("mqload not found (give --mqload, set MQLOAD or use --build-mqload)", file=sys.stderr)
        return 2
    if mqload is None and args.driver == "auto":
        print(f"mqload not found: using the slow {DRIVER_NAME}", file=sys.stderr)

    duration = args.duration or (1.0 if args.quick else 5.0)
    timing: dict[str, Any] = {
        "duration": duration,
        "warmup": 0.2 if args.quick else 1.0,
        "drain": 1.0 if args.quick else 3.0,
    }
    conns = _raise_fd_limit(args.conns or (300 if args.quick else 5000))
    workloads = [
        Workload(
            w.key, w.name, {**w.opts, "conns": conns, "rounds": 2 if args.quick else 5}, w.target
        )
        if w.key == "conns"
        else w
        for w in workloads
    ]

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mqbench-") as tmp:
        workdir = Path(tmp)
        variants = [Variant("mqcore", "aiomemq", {"PYTHONPATH": str(ROOT)})]
        for ref in args.compare_ref:
            variants.append(
                Variant(f"mqcore@{ref}", "aiomemq", {"PYTHONPATH": str(_ref_tree(ref, workdir))})
            )
        variants += _peers(args, mqload)
        for workload in workloads:
            # Variants alternate within a workload, so a noisy moment hits both alike.
            for variant in variants:
                port = next(args.port)
                result = run_one(workload, variant, mqload, args.server_arg, timing, workdir, port)
                result["target"] = workload.target
                results.append(result)
                progress = _row(result)
                print(f"{progress[0]} {progress[1]}: {progress[-1]}", file=sys.stderr, flush=True)

    # The runner's interpreter is the server's, so it runs the same core;
    # --compare-ref trees are plain source: always the pure core.
    print(f"mqcore runs the {_core_kind()} core; mqcore@REF rows run the pure-Python one")
    print(format_table(results))
    ratios = format_ratios(results)
    if ratios:
        print()
        print(ratios)
    report = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "core": _core_kind(),
        "driver": "mqload" if mqload else DRIVER_NAME,
        "mqload": mqload,
        "quick": args.quick,
        "timing": timing,
        "server_args": args.server_arg,
        "results": results,
    }
    if not args.no_json:
        path = Path(args.json) if args.json else RESULTS_DIR / _stamp()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"results written to {path}")
    return 0 if all(r.get("ok") for r in results) else 1


def _core_kind() -> str:
    return "compiled (mypyc)" if mqcore.COMPILED else "pure-Python"


def _stamp() -> str:
    return dt.datetime.now().strftime("bench-%Y%m%d-%H%M%S.json")


if __name__ == "__main__":
    sys.exit(main())

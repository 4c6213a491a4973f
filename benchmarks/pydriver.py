"""A pure-Python (asyncio) load driver, used when the Rust load generator is not built.

It speaks the aiomemq protocol and runs the same workloads as ``mqload``
(throughput, pairs, latency, conns) and reports the same JSON keys, with
``"driver": "python-driver"``. It shares the CPU with the broker and is far
slower than ``mqload``, so its figures show that the broker works and give
rough numbers only: compare brokers with ``mqload``.

Unlike ``mqload`` it can subscribe on one server and publish on another
(``sub_port``), for the nodes of a cluster, and send ``delivery: one``
(``delivery``); both are options of :func:`run_workload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["DRIVER_NAME", "proc_cpu_seconds", "proc_status_kb", "run_workload"]

DRIVER_NAME = "python-driver"
WINDOW = 1000
BATCH = 250
PAYLOAD_BYTES = 64


# -- the broker process, from /proc (Linux; None elsewhere) ---------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds used by ``pid`` so far, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuMeter:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = (time.monotonic(), proc_cpu_seconds(pid) if pid else None)

    def percent(self) -> float | None:
        t0, c0 = self.start
        c1 = proc_cpu_seconds(self.pid) if self.pid else None
        if c0 is None or c1 is None:
            return None
        return round(100 * (c1 - c0) / max(time.monotonic() - t0, 1e-9), 1)


# -- connections ----------------------------------------------------------------


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def subscribe(self, topic: str) -> None:
        self.writer.write(
            b'{"command":"subscribe","topic":"%s","cache":false}\r\n' % topic.encode()
        )
        reply = await self.reader.readline()
        if b'"success": true' not in reply:
            raise RuntimeError(f"subscribe failed: {reply!r}")

    async def count_lines(self, counter: list[int], index: int, progress: asyncio.Event) -> None:
        """Add the number of lines received to ``counter[index]`` until EOF."""
        read = self.reader.read
        while data := await read(1 << 20):
            counter[index] += data.count(b"\n")
            progress.set()

    def close(self) -> None:
        self.writer.close()


def _send_line(topic: str, msg: bytes, delivery: str = "all") -> bytes:
    return b'{"command":"send","topic":"%s","msg":"%s","delivery":"%s"}\r\n' % (
        topic.encode(),
        msg,
        delivery.encode(),
    )


def _payload(prefix: bytes = b"") -> bytes:
    return prefix + b"x" * max(PAYLOAD_BYTES - len(prefix), 0)


async def _publisher(
    conn: _Conn, topic: str, acks: list[int], index: int, stop: asyncio.Event, delivery: str
) -> int:
    """Pipeline sends, at most ``WINDOW`` unconfirmed; return how many were sent."""
    batch = _send_line(topic, _payload(), delivery) * BATCH
    acked = asyncio.Event()
    sent = 0

    async def read_acks() -> None:
        read = conn.reader.read
        while data := await read(1 << 20):
            acks[index] += data.count(b"\n")
            acked.set()

    reader = asyncio.create_task(read_acks())
    try:
        while not stop.is_set():
            if sent - acks[index] <= WINDOW - BATCH:
                conn.writer.write(batch)
                sent += BATCH
                await conn.writer.drain()
            else:
                acked.clear()
                await acked.wait()
        deadline = time.monotonic() + 5
        while acks[index] < sent and time.monotonic() < deadline:
            acked.clear()
            await asyncio.wait_for(acked.wait(), timeout=max(deadline - time.monotonic(), 0))
    finally:
        reader.cancel()
    return sent


async def _pubsub(
    port: int,
    topics: int,
    subs_per_topic: int,
    duration: float,
    warmup: float,
    pid: int | None,
    sub_port: int | None = None,
    delivery: str = "all",
) -> dict[str, Any]:
    prefix = f"pyd{os.getpid()}-{time.monotonic_ns()}-"
    names = [f"{prefix}{t}" for t in range(topics)]
    subs = [await _Conn.open(sub_port or port) for _ in range(topics * subs_per_topic)]
    for i, sub in enumerate(subs):
        await sub.subscribe(names[i // subs_per_topic])
    delivered = [0] * len(subs)
    acks = [0] * topics
    stop = asyncio.Event()
    progress = asyncio.Event()
    readers = [
        asyncio.create_task(s.count_lines(delivered, i, progress)) for i, s in enumerate(subs)
    ]
    pubs = [await _Conn.open(port) for _ in range(topics)]
    publishers = [
        asyncio.create_task(_publisher(p, names[i], acks, i, stop, delivery))
        for i, p in enumerate(pubs)
    ]
    await asyncio.sleep(warmup)
    d0, a0, cpu = sum(delivered), sum(acks), _CpuMeter(pid)
    t0 = time.monotonic()
    await asyncio.sleep(duration)
    d1, a1, elapsed, cpu_pct = sum(delivered), sum(acks), time.monotonic() - t0, cpu.percent()
    stop.set()
    sent = sum(await asyncio.gather(*publishers))
    expected = sent if delivery == "one" else sent * subs_per_topic
    deadline = time.monotonic() + 3
    while sum(delivered) < expected and time.monotonic() < deadline:
        progress.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(progress.wait(), timeout=max(deadline - time.monotonic(), 0))
    for task in readers:
        task.cancel()
    for conn in subs + pubs:
        conn.close()
    return {
        "deliver_rate": round((d1 - d0) / elapsed, 1),
        "pub_rate": round((a1 - a0) / elapsed, 1),
        "undelivered": expected - sum(delivered),
        "broker_cpu_pct": cpu_pct,
    }


async def _latency(
    port: int,
    rate: float,
    duration: float,
    warmup: float,
    pid: int | None,
    sub_port: int | None = None,
) -> dict[str, Any]:
    topic = f"pyd{os.getpid()}-{time.monotonic_ns()}-lat"
    sub = await _Conn.open(sub_port or port)
    await sub.subscribe(topic)
    pub = await _Conn.open(port)
    samples: list[int] = []
    start = time.perf_counter_ns()
    measure_from = start + int(warmup * 1e9)
    total = int(rate * (warmup + duration))

    async def receive() -> None:
        got = 0
        while got < total:
            line = await sub.reader.readline()
            if not line:
                return
            now = time.perf_counter_ns()
            got += 1
            at = line.find(b'"msg":"') + 7
            sent_ns = int(line[at : line.index(b"x", at)])
            if sent_ns >= measure_from:
                samples.append(now - sent_ns)

    async def drain_acks() -> None:
        while await pub.reader.read(1 << 20):
            pass

    receiver = asyncio.create_task(receive())
    acks = asyncio.create_task(drain_acks())
    cpu: _CpuMeter | None = None
    sent = 0
    while sent < total:
        now = time.perf_counter_ns()
        if cpu is None and now >= measure_from:
            cpu = _CpuMeter(pid)
        due = min(int((now - start) * rate / 1e9) + 1, total)
        while sent < due:
            pub.writer.write(_send_line(topic, _payload(b"%d" % time.perf_counter_ns())))
            sent += 1
        await asyncio.sleep(0.0005)
    cpu_pct = cpu.percent() if cpu else None
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(receiver, timeout=5)
    acks.cancel()
    sub.close()
    pub.close()
    if not samples:
        raise RuntimeError("no message arrived")
    samples.sort()

    def pct(p: float) -> float:
        return round(samples[min(int(p * len(samples)), len(samples) - 1)] / 1000, 1)

    return {
        "rate_target": rate,
        "rate_achieved": round(len(samples) / duration, 1),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": round(samples[-1] / 1000, 1),
        "broker_cpu_pct": cpu_pct,
    }


async def _conns(port: int, n: int, rounds: int, pid: int | None) -> dict[str, Any]:
    topic = f"pyd{os.getpid()}-{time.monotonic_ns()}-conns"
    rss_before = proc_status_kb(pid, "VmRSS") if pid else None
    gate = asyncio.Semaphore(64)

    async def connect() -> _Conn:
        async with gate:
            conn = await _Conn.open(port)
            await conn.subscribe(topic)
            return conn

    t0 = time.monotonic()
    subs = list(await asyncio.gather(*(connect() for _ in range(n))))
    setup = time.monotonic() - t0
    await asyncio.sleep(0.2)
    rss_after = proc_status_kb(pid, "VmRSS") if pid else None
    received = [0] * n
    done = asyncio.Event()
    remaining = [0]

    async def listen(i: int) -> None:
        while await subs[i].reader.readline():
            received[i] += 1
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    listeners = [asyncio.create_task(listen(i)) for i in range(n)]
    pub = await _Conn.open(port)
    fanout: list[float] = []
    for r in range(rounds + 1):  # round 0 warms up
        remaining[0] = n
        done.clear()
        start = time.perf_counter()
        pub.writer.write(_send_line(topic, _payload(b"%d" % r)))
        await pub.reader.readline()
        await asyncio.wait_for(done.wait(), timeout=10)
        if r:
            fanout.append(round((time.perf_counter() - start) * 1000, 2))
    for task in listeners:
        task.cancel()
    for conn in [*subs, pub]:
        conn.close()
    result: dict[str, Any] = {
        "conns": n,
        "setup_s": round(setup, 3),
        "fanout_ms_median": statistics.median(fanout),
        "fanout_ms": fanout,
        "received": [n] * rounds,
        "incomplete_rounds": 0,
    }
    if rss_before is not None and rss_after is not None:
        result["broker_rss_before_kb"] = rss_before
        result["broker_rss_conns_kb"] = rss_after
        result["broker_kb_per_conn"] = round((rss_after - rss_before) / n, 2)
    return result


async def _run(name: str, port: int, opts: dict[str, Any], pid: int | None) -> dict[str, Any]:
    duration, warmup = float(opts["duration"]), float(opts["warmup"])
    sub_port: int | None = opts.get("sub_port")
    delivery = str(opts.get("delivery", "all"))
    subs, pairs = int(opts.get("subs", 1)), int(opts.get("pairs", 20))
    runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "throughput": lambda: _pubsub(port, 1, subs, duration, warmup, pid, sub_port, delivery),
        "pairs": lambda: _pubsub(port, pairs, 1, duration, warmup, pid, sub_port, delivery),
        "latency": lambda: _latency(port, float(opts["rate"]), duration, warmup, pid, sub_port),
        "conns": lambda: _conns(port, int(opts["conns"]), int(opts.get("rounds", 5)), pid),
    }
    return await asyncio.wait_for(runners[name](), timeout=duration + warmup + 60)


def run_workload(
    name: str, port: int, opts: dict[str, Any], broker_pid: int | None = None
) -> dict[str, Any]:
    """Run workload ``name`` (``throughput``, ``pairs``, ``latency``, ``conns``) on ``port``.

    ``opts`` holds ``duration``, ``warmup`` and the workload's own options
    (``subs``, ``pairs``, ``rate``, ``conns``, ``rounds``); ``sub_port``
    puts the subscribers of ``throughput``, ``pairs`` and ``latency`` on
    another server, ``delivery`` (``all`` or ``one``) is what every
    ``throughput``/``pairs`` send asks for. Returns a dict
    with mqload's keys; ``ok`` is False (with ``error``) when the run failed.
    """
    result: dict[str, Any] = {"driver": DRIVER_NAME, "workload": name, "proto": "aiomemq"}
    try:
        result.update(asyncio.run(_run(name, port, opts, broker_pid)))
        result["ok"] = True
    except (OSError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
    if broker_pid:
        result["broker_rss_kb"] = proc_status_kb(broker_pid, "VmRSS")
        result["broker_hwm_kb"] = proc_status_kb(broker_pid, "VmHWM")
    return result

"""A low-jitter latency driver that can publish on one server and subscribe on another.

It measures what ``mqload latency`` measures, for the case mqload cannot
drive (its one address): publisher on node A, subscriber on node B.

Theory of operation:

- **Two processes, blocking sockets.** The subscriber runs in its own
  process (``python -m benchmarks.xlatency --subscriber``), so its reads
  never wait for the publisher's GIL or event loop; both use plain blocking
  sockets with ``TCP_NODELAY``, no asyncio (whose timers round to 1 ms on
  epoll and whose ``readline`` adds a task switch per message).
- **One clock.** Each message carries the ``perf_counter_ns()`` taken just
  before its write; the subscriber takes ``perf_counter_ns()`` once per
  ``recv`` and records ``now - sent`` for each message in it. On Linux
  ``perf_counter`` is ``CLOCK_MONOTONIC``, which every process shares;
  elsewhere both sides use ``time.monotonic_ns`` (:func:`clock_ns`).
- **mqload's pacing.** Message ``i`` is due at ``go + i / rate``; the
  publisher sleeps until the next one is due (``time.sleep`` of the rest: an
  hrtimer on Linux), then writes every message already due in one
  ``sendall``, all stamped with one time. Acks are drained non-blocking
  about once per millisecond in the same loop (no thread to contend for the
  GIL) and never timed; a failure reply stops the run.
- **Window.** Samples are the messages stamped in ``[go + warmup, go +
  warmup + duration)``; percentiles use mqload's rank (``ceil(q * n)``).
  After the window the publisher sends a last message, ``end``; the
  subscriber, whose topic delivers in order, stops when it sees it.
- **Handshake, every wait bounded.** The child subscribes, waits for
  ``{"success": true}`` and prints ``ready``; the parent then writes the
  window to its stdin, publishes, and reads one JSON line of samples back.
  Each wait has a timeout (the child's reads, via ``SO_RCVTIMEO``, too);
  on any error the child is killed.
- **No collector pauses.** The garbage collector is off while the run
  measures (in both processes); nothing it allocates there forms cycles.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

if __package__ in (None, ""):  # run as `python benchmarks/xlatency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pydriver import _payload, _send_line

__all__ = ["DRIVER_NAME", "clock_ns", "percentile", "run_latency"]

DRIVER_NAME = "xlatency"
HOST = "127.0.0.1"
READY_TIMEOUT = 10.0  # the child starts Python, connects and subscribes
DRAIN_TIMEOUT = 5.0  # after the window, for the last deliveries
ACK_EVERY_NS = 1_000_000  # acks are read about once per millisecond
MAX_BATCH = 1000  # messages per write at most, as mqload
END = b"end"


# Nanoseconds on a clock every process shares: perf_counter where it is
# CLOCK_MONOTONIC (Linux), else monotonic. A plain alias: it is called per recv.
clock_ns = (
    time.perf_counter_ns
    if "CLOCK_MONOTONIC" in time.get_clock_info("perf_counter").implementation
    else time.monotonic_ns
)


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """mqload's percentile of sorted nanoseconds, in microseconds (rank ``ceil(q * n)``)."""
    if not sorted_ns:
        return math.nan
    rank = min(max(math.ceil(q * len(sorted_ns)), 1), len(sorted_ns))
    return round(sorted_ns[rank - 1] / 1000, 1)


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.settimeout(None)  # blocking: a timeout would poll before every call
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_timeout(sock: socket.socket, seconds: float) -> None:
    """Blocking reads that give up after ``seconds`` (``BlockingIOError``), without a poll each."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


def _subscribe(sock: socket.socket, topic: str) -> bytes:
    """Subscribe ``sock`` to ``topic``; return what came after the reply (nothing, normally)."""
    sock.sendall(b'{"command":"subscribe","topic":"%s","cache":false}\r\n' % topic.encode())
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("subscribe: the server closed the connection")
        data += chunk
    reply, _, rest = data.partition(b"\n")
    if b'"success": true' not in reply:
        raise RuntimeError(f"subscribe failed: {reply!r}")
    return rest


# -- the subscriber (child process) ----------------------------------------------


def _sent_ns(line: bytes) -> int | None:
    """The send time a delivered line carries; None for the ``end`` message."""
    at = line.find(b'"msg":"') + 7
    if at < 7:
        raise RuntimeError(f"not a delivery: {line[:200]!r}")
    if line.startswith(END, at):
        return None
    return int(line[at : line.index(b"x", at)])


def subscriber(port: int, topic: str, deadline_s: float, out: IO[str], window: IO[str]) -> None:
    """The child: subscribe, say ``ready``, read the window, record until ``end``; print samples.

    Prints one JSON line: ``samples`` (sorted ns), ``received`` (every
    message), ``ended`` (False: the deadline came first), ``cpu_s`` and
    ``wall_s`` (this process, from the window on).
    """
    deadline = time.monotonic() + deadline_s
    sock = _connect(port, READY_TIMEOUT)
    pending = _subscribe(sock, topic)
    out.write("ready\n")
    out.flush()
    start, end = (int(x) for x in window.readline().split())
    cpu0, wall0 = time.process_time(), time.monotonic()
    gc.disable()
    _read_timeout(sock, 0.2)
    samples: list[int] = []
    received = 0
    ended = False
    recv, now_ns = sock.recv, clock_ns
    while not ended and time.monotonic() < deadline:
        try:
            data = recv(1 << 16)
        except BlockingIOError:
            continue
        now = now_ns()
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            sent = _sent_ns(line)
            if sent is None:
                ended = True
                break
            received += 1
            if start <= sent < end:
                samples.append(now - sent)
    sock.close()
    samples.sort()
    report = {
        "samples": samples,
        "received": received,
        "ended": ended,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.monotonic() - wall0,
    }
    out.write(json.dumps(report) + "\n")
    out.flush()


# -- the publisher (calling process) ----------------------------------------------


class _Acks:
    """Drains the publisher's acks, non-blocking, in batches; raises on a failure reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.next_read = 0

    def drain(self, now: int) -> None:
        if now < self.next_read:
            return
        self.next_read = now + ACK_EVERY_NS
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                raise RuntimeError("publisher: the server closed the connection")
            if b'"success": false' in data:
                raise RuntimeError(f"publisher: the server refused a send: {data[:200]!r}")


def _publish(
    sock: socket.socket, topic: str, rate: float, go: int, start: int, end: int
) -> tuple[int, list[int]]:
    """Send at ``rate`` from ``go`` until ``end`` (ns), mqload's way.

    Returns how many were sent and, sorted, how late each one stamped from
    ``start`` on was written (the driver's own jitter).
    """
    acks = _Acks(sock)
    period = 1e9 / rate
    sent = 0
    lags: list[int] = []
    sleep, now_ns, sendall = time.sleep, clock_ns, sock.sendall
    while True:
        due = go + int(sent * period)
        now = now_ns()
        if due >= end or now >= end:
            break
        if now < due:
            sleep((due - now) / 1e9)
            continue
        stamp = now_ns()
        k = 0
        while k < MAX_BATCH and due <= stamp and due < end:
            if stamp >= start:
                lags.append(stamp - due)
            k += 1
            due = go + int((sent + k) * period)
        sendall(_send_line(topic, _payload(b"%d" % stamp)) * k)
        sent += k
        acks.drain(stamp)
    sendall(_send_line(topic, _payload(END)))
    lags.sort()
    return sent, lags


# -- the run -------------------------------------------------------------------------


def _read_line(child: subprocess.Popen[str], timeout: float, what: str) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline() if ready else ""
    if not line:
        child.kill()
        _, err = child.communicate(timeout=READY_TIMEOUT)
        why = err.strip().splitlines()[-1:] or [f"no answer within {timeout:g} s"]
        raise RuntimeError(f"the subscriber did not {what}: {why[0]}")
    return line


def _spawn_subscriber(port: int, topic: str, deadline_s: float) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parent.parent)  # `benchmarks` is not installed
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    argv = ["--subscriber", "--port", str(port), "--topic", topic]
    argv += ["--deadline", f"{deadline_s:.3f}"]
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.xlatency", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # read only when it failed: a traceback fits the pipe
        text=True,
        env=env,
    )


def run_latency(
    pub_port: int, sub_port: int, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    """One publisher on ``pub_port`` at ``rate`` msg/s, one subscriber on ``sub_port``.

    Returns pydriver's latency keys (``rate_target``, ``rate_achieved``,
    ``p50_us`` ... ``max_us``) and mqload's counts (``sent_in_window``,
    ``received_in_window``, ``lost_in_window``, ``pub_lag_p99_us``: how
    late the publisher wrote, its own jitter), plus the driver's CPU
    (``driver_cpu_pct``: publisher and subscriber processes over the window).
    Raises ``RuntimeError``/``OSError`` when the run fails.
    """
    if rate <= 0 or duration <= 0 or warmup < 0:
        raise ValueError("rate and duration must be positive, warmup not negative")
    topic = f"xlat{os.getpid()}-{time.monotonic_ns()}"
    child = _spawn_subscriber(sub_port, topic, READY_TIMEOUT + warmup + duration + DRAIN_TIMEOUT)
    try:
        if _read_line(child, READY_TIMEOUT, "subscribe").strip() != "ready":
            raise RuntimeError("the subscriber did not say ready")
        with _connect(pub_port, READY_TIMEOUT) as pub:
            go = clock_ns()
            start, end = go + int(warmup * 1e9), go + int((warmup + duration) * 1e9)
            assert child.stdin is not None
            child.stdin.write(f"{start} {end}\n")
            child.stdin.flush()
            cpu0, wall0 = time.process_time(), time.monotonic()
            collecting = gc.isenabled()
            gc.disable()
            try:
                sent, lags = _publish(pub, topic, rate, go, start, end)
            finally:
                if collecting:
                    gc.enable()
            pub_cpu = 100 * (time.process_time() - cpu0) / max(time.monotonic() - wall0, 1e-9)
            report = json.loads(_read_line(child, DRAIN_TIMEOUT + 1, "report"))
        child.wait(timeout=DRAIN_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdin, child.stdout, child.stderr):
            with contextlib.suppress(OSError):  # stdin: a dead child's pipe is broken
                pipe and pipe.close()
    samples: list[int] = report["samples"]
    if not samples:
        raise RuntimeError("no message arrived in the window")
    sub_cpu = 100 * report["cpu_s"] / max(report["wall_s"], 1e-9)
    return {
        "driver": DRIVER_NAME,
        "rate_target": rate,
        "rate_achieved": round(len(lags) / duration, 1),
        "p50_us": percentile(samples, 0.50),
        "p90_us": percentile(samples, 0.90),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "max_us": round(samples[-1] / 1000, 1),
        "sent_in_window": len(lags),
        "received_in_window": len(samples),
        "lost_in_window": len(lags) - len(samples),
        "pub_total": sent,
        "pub_lag_p99_us": percentile(lags, 0.99),
        "pub_lag_max_us": round(lags[-1] / 1000, 1) if lags else math.nan,
        "ended": report["ended"],
        "driver_cpu_pct": round(pub_cpu + sub_cpu, 1),
        "publisher_cpu_pct": round(pub_cpu, 1),
        "subscriber_cpu_pct": round(sub_cpu, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``--subscriber``: the child's side; otherwise one run, printed as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriber", action="store_true", help="run the subscriber side")
    parser.add_argument("--port", type=int, required=True, help="the publisher's (or subscriber's)")
    parser.add_argument("--sub-port", type=int, help="the subscriber's (default: --port)")
    parser.add_argument("--topic", default="xlat")
    parser.add_argument("--deadline", type=float, default=60.0, help="subscriber: seconds at most")
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.subscriber:
        subscriber(args.port, args.topic, args.deadline, sys.stdout, sys.stdin)
        return 0
    sub_port = args.sub_port or args.port
    print(json.dumps(run_latency(args.port, sub_port, args.rate, args.duration, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web side's costs: WebSocket against TCP, /metrics scrapes, delivery latency during scrapes.

``python -m benchmarks.web_bench [--quick] [--json PATH]`` starts
``python -m mqcore_tcp --port 0 --listen http://127.0.0.1:0`` (and, for the
baseline, a server without the HTTP listener) and measures, with Python
drivers in this process:

- 1->1 and 1->N fan-out throughput (deliveries per second), over TCP and over
  WebSocket on the same server; and TCP 1->1 on a server without the HTTP
  listener (enabling it must cost TCP nothing);
- the time of a ``GET /metrics`` (and of a ``/api/topics`` page) with
  ``--topics`` topics (100,000 by default);
- the p50/p99 delivery latency of a steady message stream, without and
  during back-to-back ``/metrics`` scrapes.

The drivers are light (a subscriber counts frames, it does not parse JSON),
so the server's own work dominates. Figures vary with the machine: compare
rows of one run, never across machines.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from subprocess import PIPE
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

TIMEOUT = 120


@dataclass
class Server:
    process: anyio.abc.Process
    tcp_port: int
    http_port: int | None


@asynccontextmanager
async def server(http: bool = True) -> AsyncIterator[Server]:
    """Run ``python -m mqcore_tcp`` (with an HTTP listener if ``http``) until left."""
    command = [sys.executable, "-m", "mqcore_tcp", "--port", "0", "--log-level", "INFO"]
    command += ["--listen", "http://127.0.0.1:0"] if http else []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await anyio.open_process(command, stdout=PIPE, stderr=PIPE, env=env)
    assert process.stderr is not None
    stderr = BufferedByteReceiveStream(process.stderr)
    ports: dict[str, int] = {}
    async with process:
        with anyio.fail_after(30):
            while len(ports) < (2 if http else 1):
                text = (await stderr.receive_until(b"\n", 1 << 16)).decode()
                if "listening on" in text:
                    port = int(text.rsplit(":", 1)[1])
                    ports["http" if "http://" in text else "tcp"] = port
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                try:
                    while True:
                        await stderr.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    pass

            tg.start_soon(drain)
            try:
                yield Server(process, ports["tcp"], ports.get("http"))
            finally:
                process.terminate()
                await process.wait()
                tg.cancel_scope.cancel()


# -- clients: raw TCP lines and raw WebSocket frames -------------------------------------


def _send_line(topic: str, msg: str) -> bytes:
    return json.dumps({"command": "send", "topic": topic, "msg": msg, "delivery": "all"}).encode()


def _client_frame(payload: bytes) -> bytes:
    """A masked text frame (mask key 0: the payload is unchanged)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Peer:
    """One client connection speaking lines (TCP) or frames (WebSocket), counting what comes."""

    def __init__(self, stream: anyio.abc.SocketStream, ws: bool) -> None:
        self.stream = stream
        self.ws = ws
        self.buffer = b""
        self.ahead = 0

    @classmethod
    async def open(cls, srv: Server, ws: bool) -> Peer:
        if not ws:
            return cls(await anyio.connect_tcp("127.0.0.1", srv.tcp_port), False)
        assert srv.http_port is not None
        stream = await anyio.connect_tcp("127.0.0.1", srv.http_port)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send(
            (
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        peer = cls(stream, True)
        while b"\r\n\r\n" not in peer.buffer:
            peer.buffer += await stream.receive()
        head, _, peer.buffer = peer.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return peer

    def encode(self, lines: list[bytes]) -> bytes:
        if self.ws:
            return b"".join(map(_client_frame, lines))
        return b"\n".join(lines) + b"\n"

    async def command(self, line: bytes) -> None:
        await self.stream.send(self.encode([line]))
        await self.count(1)

    async def count(self, n: int, stamps: list[float] | None = None) -> None:
        """Read until ``n`` replies or deliveries came (``stamps``: their latency, from msg)."""
        seen = self.ahead + (self._take(stamps) if self.buffer else 0)
        while seen < n:
            self.buffer += await self.stream.receive(1 << 20)
            seen += self._take(stamps)
        self.ahead = seen - n  # read already, counted by the next call

    def _take(self, stamps: list[float] | None) -> int:
        if not self.ws:
            body = self.buffer
            cut = body.rfind(b"\r\n") + 2
            if cut < 2:
                return 0
            items = body[:cut].split(b"\r\n")[:-1]
            self.buffer = body[cut:]
        else:
            items = []
            data, at = self.buffer, 0
            while len(data) - at >= 2:
                n = data[at + 1] & 0x7F
                start = at + 2
                if n == 126:
                    n, start = int.from_bytes(data[at + 2 : at + 4], "big"), at + 4
                elif n == 127:
                    n, start = int.from_bytes(data[at + 2 : at + 10], "big"), at + 10
                if len(data) < start + n:
                    break
                items.append(data[start : start + n])
                at = start + n
            self.buffer = data[at:]
        if stamps is not None:
            now = time.perf_counter()
            for item in items:
                if b'"msg"' in item:
                    stamps.append(now - float(json.loads(item)["msg"]))
        return len(items)


# -- measurements -------------------------------------------------------------------------


async def throughput(srv: Server, ws: bool, subscribers: int, messages: int) -> float:
    """Deliveries per second: one publisher, ``subscribers`` subscribers, ``messages`` sends."""
    topic = f"bench-{time.monotonic_ns()}"
    subs = [await Peer.open(srv, ws) for _ in range(subscribers)]
    sub_line = json.dumps({"command": "subscribe", "topic": topic, "cache": False}).encode()
    for peer in subs:
        await peer.command(sub_line)
    pub = await Peer.open(srv, ws)
    line = _send_line(topic, "x" * 64)
    batch = 500
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for peer in subs:
            tg.start_soon(peer.count, messages)

        async def publish() -> None:
            sent = 0
            while sent < messages:
                k = min(batch, messages - sent)
                await pub.stream.send(pub.encode([line] * k))
                sent += k
                if sent - batch > 0:
                    await pub.count(batch)  # keep one batch in flight
            await pub.count(min(batch, messages))

        tg.start_soon(publish)
    elapsed = time.perf_counter() - start
    for peer in [*subs, pub]:
        await peer.stream.aclose()
    return subscribers * messages / elapsed


async def fill_topics(srv: Server, topics: int) -> None:
    pub = await Peer.open(srv, False)
    batch = 5000
    for first in range(0, topics, batch):
        lines = [
            _send_line(f"topic-{n:07d}", "m") for n in range(first, min(first + batch, topics))
        ]
        await pub.stream.send(pub.encode(lines))
        await pub.count(len(lines))
    await pub.stream.aclose()


def http_get_seconds(port: int, path: str, repeat: int) -> list[float]:
    """Wall time of ``repeat`` GETs on one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        times.append(time.perf_counter() - start)
    connection.close()
    return times


async def latency(srv: Server, seconds: float, scrape: bool, rate: int = 1000) -> dict[str, float]:
    """Delivery latency (ms) of ``rate`` messages/s for ``seconds``, with or without scrapes."""
    topic = f"latency-{time.monotonic_ns()}"
    sub, pub = await Peer.open(srv, False), await Peer.open(srv, False)
    await sub.command(json.dumps({"command": "subscribe", "topic": topic, "cache": False}).encode())
    stamps: list[float] = []
    scrapes: list[float] = []
    messages = int(seconds * rate)
    done = anyio.Event()

    async def scraper() -> None:
        assert srv.http_port is not None
        while not done.is_set():
            scrapes.extend(
                await anyio.to_thread.run_sync(http_get_seconds, srv.http_port, "/metrics", 1)
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(sub.count, messages, stamps)
        if scrape:
            tg.start_soon(scraper)
        start = time.perf_counter()
        for n in range(messages):
            await anyio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            await pub.stream.send(pub.encode([_send_line(topic, repr(time.perf_counter()))]))
        await pub.count(messages)
        await sub.count(0)
        done.set()
    await sub.stream.aclose()
    await pub.stream.aclose()
    stamps.sort()
    return {
        "p50_ms": 1000 * stamps[len(stamps) // 2],
        "p99_ms": 1000 * stamps[int(len(stamps) * 0.99)],
        "max_ms": 1000 * stamps[-1],
        "scrapes": len(scrapes),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"throughput": [], "scrape": {}, "latency": {}}
    messages, fan = args.messages, args.fanout
    async with server(http=False) as plain:
        rate = await throughput(plain, False, 1, messages)
        report["throughput"].append({"case": "tcp 1->1, no http listener", "rate": rate})
    async with server() as srv:
        for ws in (False, True):
            name = "websocket" if ws else "tcp"
            for subs in (1, fan):
                rate = await throughput(srv, ws, subs, messages if subs == 1 else messages // 4)
                report["throughput"].append({"case": f"{name} 1->{subs}", "rate": rate})
        assert srv.http_port is not None
        base = await anyio.to_thread.run_sync(http_get_seconds, srv.http_port, "/metrics", 5)
        start = time.perf_counter()
        await fill_topics(srv, args.topics)
        report["fill_seconds"] = time.perf_counter() - start
        assert srv.http_port is not None
        for path in ("/metrics", "/api/topics?limit=50", "/api/topics?sort=name&limit=50"):
            times = await anyio.to_thread.run_sync(
                http_get_seconds, srv.http_port, path, args.scrapes
            )
            report["scrape"][path] = {
                "median_ms": 1000 * statistics.median(times),
                "max_ms": 1000 * max(times),
            }
        report["scrape"]["/metrics, 0 topics"] = {
            "median_ms": 1000 * statistics.median(base),
            "max_ms": 1000 * max(base),
        }
        report["topics"] = args.topics
        report["latency"]["quiet"] = await latency(srv, args.seconds, scrape=False)
        report["latency"]["scraping"] = await latency(srv, args.seconds, scrape=True)
    return report


def show(report: dict[str, Any]) -> None:
    print("throughput (deliveries/s, Python drivers)")
    for row in report["throughput"]:
        print(f"  {row['case']:<30} {row['rate']:>12,.0f}")
    print(f"GET with {report['topics']:,} topics (filled in {report['fill_seconds']:.1f} s)")
    for path, row in report["scrape"].items():
        print(f"  {path:<34} median {row['median_ms']:8.2f} ms   max {row['max_ms']:8.2f} ms")
    print("delivery latency at 1,000 msg/s")
    for name, row in report["latency"].items():
        print(
            f"  {name:<10} p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
            f"max {row['max_ms']:6.2f} ms  ({row['scrapes']} scrapes)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--fanout", type=int, default=10)
    parser.add_argument("--topics", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.fanout, args.topics = 2000, 3, 2000
        args.scrapes, args.seconds = 3, 0.3
    report = anyio.run(run, args)
    show(report)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

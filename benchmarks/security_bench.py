"""TLS and --auth against plaintext on the same server: ``python -m benchmarks.security_bench``.

One server subprocess listens on ``mqcore://`` and ``mqcores://`` at once
(certificates from trustme), so both paths share one process; a second run
adds ``--auth`` (with the publisher and subscriber authenticated as a user
whose permissions are pattern lists). For each path:

- **throughput**: 1 publisher pipelining 64-byte sends in batches of 500 to
  1 subscriber; deliveries per second;
- **latency**: 2,000 sends, one at a time (each waits for its delivery);
  p50 and p99 publish-to-delivery time.

Figures vary with the machine and its load; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import trustme
from anyio.streams.buffered import BufferedByteReceiveStream

from mqcore_tcp._auth import hash_secret
from mqcore_tcp.testing import running_async

BATCH = 500


async def open_line(port: int, tls: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    if tls is None:
        return await anyio.connect_tcp("127.0.0.1", port)
    return await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=tls, tls_standard_compatible=False
    )


async def hello(
    stream: anyio.abc.ByteStream, reader: BufferedByteReceiveStream, auth: bool
) -> None:
    if not auth:
        return
    await stream.send(b'{"command": "hello", "user": "bench", "password": "pw"}\n')
    assert json.loads(await reader.receive_until(b"\r\n", 1 << 20))["success"]


async def run_path(port: int, tls: ssl.SSLContext | None, auth: bool, n: int) -> dict[str, float]:
    sub = await open_line(port, tls)
    pub = await open_line(port, tls)
    sub_reader = BufferedByteReceiveStream(sub)
    pub_reader = BufferedByteReceiveStream(pub)
    await hello(sub, sub_reader, auth)
    await hello(pub, pub_reader, auth)
    await sub.send(b'{"command": "subscribe", "topic": "bench.t", "cache": false}\n')
    await sub_reader.receive_until(b"\r\n", 1 << 20)
    line = (
        json.dumps(
            {
                "command": "send",
                "topic": "bench.t",
                "msg": "x" * 64,
                "delivery": "all",
                "cache": False,
            }
        ).encode()
        + b"\n"
    )

    async def drain_replies(count: int) -> None:
        for _ in range(count):
            await pub_reader.receive_until(b"\r\n", 1 << 20)

    # Throughput.
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(drain_replies, n)
        for _ in range(n // BATCH):
            await pub.send(line * BATCH)
        for _ in range(n // BATCH * BATCH):
            await sub_reader.receive_until(b"\r\n", 1 << 20)
    rate = n / (time.perf_counter() - started)
    # Latency.
    samples = []
    for _ in range(2000):
        t0 = time.perf_counter()
        await pub.send(line)
        await sub_reader.receive_until(b"\r\n", 1 << 20)
        samples.append(time.perf_counter() - t0)
        await pub_reader.receive_until(b"\r\n", 1 << 20)
    samples.sort()
    await sub.aclose()
    await pub.aclose()
    return {
        "rate": rate,
        "p50_us": statistics.median(samples) * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def write_users(directory: str) -> Path:
    """The --auth file of the benchmark's user (patterns, as a real deployment has)."""
    users = Path(directory, "users.toml")
    users.write_text(
        "[users.bench]\n"
        f'password_hash = "{hash_secret("pw")}"\n'
        'publish = ["bench.>", "other.*"]\nsubscribe = ["bench.*"]\n'
        'deny_publish = ["bench.internal.>"]\n'
    )
    return users


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(f"{tmp}/server.pem")
        users = write_users(tmp)
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        rows = []
        for auth in (False, True):
            extra = ("--auth", str(users)) if auth else ()
            async with running_async(
                "--listen",
                "mqcore://127.0.0.1:0",
                "--listen",
                "mqcores://127.0.0.1:0",
                "--tls-cert",
                f"{tmp}/server.pem",
                "--tls-key",
                f"{tmp}/server.pem",
                "--cache-size",
                "0",
                *extra,
                port=None,
            ) as server:
                plain_port, tls_port = (int(a.rsplit(":", 1)[1]) for a in server.addresses)
                for name, port, context in (("plain", plain_port, None), ("tls", tls_port, trust)):
                    if auth and name == "tls":
                        continue
                    figures = await run_path(port, context, auth, n)
                    label = f"{name}{' +auth' if auth else ''}"
                    rows.append((label, figures))
        print(f"{'path':<12} {'msgs/s':>10} {'p50 us':>8} {'p99 us':>8}")
        for label, f in rows:
            print(f"{label:<12} {f['rate']:>10,.0f} {f['p50_us']:>8.0f} {f['p99_us']:>8.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="messages per throughput run")
    anyio.run(main, parser.parse_args().n)

"""Hostile peers against an exposed server: after each, a good client works and memory is back.

Garbage and plaintext before the TLS handshake, an oversized TLS record,
many failed logins at once, a crowd of slowloris connections,
connections past the limit and past the descriptor limit. The server runs
as a subprocess so that its resident memory can be read.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import anyio
import pytest

from ..helpers import server_process
from ..server.support import limit_open_files
from ..wire import OK, fail, send
from .support import USERS, RawClient, make_certs, write_auth

pytestmark = pytest.mark.anyio

MB = 1 << 20


def rss(pid: int) -> int:
    """Resident memory of ``pid`` now, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_hostile_peers_leave_a_working_server_at_its_memory(
    tmp_path: Path, backend: str
) -> None:
    certs = make_certs(tmp_path)
    users = write_auth(tmp_path / "users.toml", USERS)
    sock = tmp_path / "mq.sock"
    async with server_process(
        "--backend",
        backend,
        "--listen",
        "mqcores://127.0.0.1:0",
        "--listen",
        f"unix://{sock}",
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        "--auth",
        str(users),
        "--auth-timeout",
        "2",
        "--line-timeout",
        "1",
        "--max-connections",
        "100",
    ) as server:
        pid = server.process.pid
        trust = certs.client_context()
        port = server.port

        async def good_client_works() -> None:
            with anyio.fail_after(20):
                async with await RawClient.tcp(port, trust) as good:
                    hello = {"command": "hello", "user": "alice", "password": "wonderland"}
                    assert (await good.request(hello))["success"]
                    assert await good.request(send("alerts", "ok")) == OK

        await good_client_works()
        baseline = rss(pid)

        # Garbage, and plaintext, before the handshake: closed, never served.
        for junk in (b"\x00\xff" * 5000, b'{"command": "send"}\n', b"GET / HTTP/1.1\r\n\r\n"):
            async with await RawClient.tcp(port) as raw:
                await raw.stream.send(junk)
                with anyio.fail_after(15):
                    assert await raw.closed()
        # A TLS record header claiming 64 KiB (over TLS's 16 KiB + overhead).
        async with await RawClient.tcp(port) as raw:
            await raw.stream.send(b"\x16\x03\x01" + struct.pack(">H", 0xFFFF) + b"\x01" * 4096)
            with anyio.fail_after(15):
                assert await raw.closed()
        await good_client_works()

        # Many failed logins at once: each answered, each closed.
        async def guess(i: int) -> None:
            async with await RawClient.unix(str(sock)) as raw:
                reply = await raw.request({"command": "hello", "user": "alice", "password": str(i)})
                assert reply == fail("Authentication failed")
                assert await raw.closed()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(guess, i)
        await good_client_works()

        # A slowloris crowd: each sends half a line and stalls.
        crowd = [await RawClient.unix(str(sock)) for _ in range(50)]
        for raw in crowd:
            await raw.stream.send(b'{"command": "hello", "user": "ali')
        with anyio.fail_after(15):
            for raw in crowd:
                assert await raw.closed()
                await raw.aclose()
        await good_client_works()

        # Past --max-connections: refused with the reason, the others served.
        held = [await RawClient.unix(str(sock)) for _ in range(100)]
        try:
            async with await RawClient.unix(str(sock)) as extra:
                assert await extra.read() == fail("Too many connections")
        finally:
            for raw in held:
                await raw.aclose()
        await good_client_works()

        grown = rss(pid) - baseline
        assert grown < 40 * MB, f"resident memory grew by {grown / MB:.1f} MB"


def test_tls_contexts_refuse_old_protocols(tmp_path: Path) -> None:
    from mqcore_tcp._tls import server_context

    certs = make_certs(tmp_path)
    context = server_context(str(certs.cert), str(certs.key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_past_the_descriptor_limit_an_authenticated_client_is_still_served(
    tmp_path: Path, backend: str
) -> None:
    users = write_auth(tmp_path / "users.toml", USERS)
    hello = {"command": "hello", "user": "alice", "password": "wonderland"}
    # --max-connections above what 64 descriptors allow: the descriptors run out first.
    args = ("--backend", backend, "--auth", str(users), "--max-connections", "1000")
    async with server_process(*args, "--auth-timeout", "30") as server:
        limit_open_files(server.process.pid, 64)
        async with await RawClient.tcp(server.port) as served:
            assert (await served.request(hello))["success"]
            crowd = [await RawClient.tcp(server.port) for _ in range(120)]
            try:
                with anyio.fail_after(20):
                    for i in range(30):
                        assert await served.request(send("alerts", str(i))) == OK
            finally:
                for raw in crowd:
                    await raw.aclose()
        # Descriptors free again: a new client authenticates (scrypt in a worker) and is served.
        with anyio.fail_after(20):
            async with await RawClient.tcp(server.port) as late:
                assert (await late.request(hello))["success"]
                assert await late.request(send("alerts", "late")) == OK
    assert not [row for row in server.log if "Traceback" in row]
    assert [row for row in server.log if "accept" in row], "the descriptors never ran out"

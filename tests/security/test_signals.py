"""A real server process and signals: SIGHUP reloads ``--auth`` on live connections; a
SIGSTOPped server is found dead by a heartbeat client, which reconnects once it is back."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

import mqcore_client
from mqcore_client import ConnectionLostError

from ..conftest import BOTH_BACKENDS
from ..helpers import ServerProcess, server_process
from ..wire import OK, delivered, fail, send, sub, unsub
from .support import USERS, RawClient, write_auth

pytestmark = pytest.mark.anyio

DENIED = fail("Permission denied")
ALICE = {"command": "hello", "user": "alice", "password": "wonderland"}
BOB = {"password": "b0b-pass", "publish": [">"]}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_sighup_reloads_the_auth_file_for_live_connections(
    tmp_path: Path, backend: str
) -> None:
    users = write_auth(tmp_path / "users.toml", {**USERS, "bob": BOB})
    async with (
        server_process("--backend", backend, "--auth", str(users)) as server,
        await RawClient.tcp(server.port) as alice,
        await RawClient.tcp(server.port) as bob,
    ):
        assert (await alice.request(ALICE))["success"]
        assert (await bob.request({"command": "hello", "user": "bob", "password": "b0b-pass"}))[
            "success"
        ]
        assert await alice.request(sub("orders.*")) == OK
        assert await alice.request(sub("alerts")) == OK
        assert await bob.request(send("orders.eu", "1")) == OK
        assert await alice.read() == delivered("orders.eu", "1", 0)

        # Alice may now only read and write orders.eu; bob is unchanged.
        restricted = {**USERS["alice"], "publish": ["orders.eu"], "subscribe": ["orders.eu"]}
        write_auth(users, {"alice": restricted, "bob": BOB})
        server.server.send_signal(signal.SIGHUP)
        with anyio.fail_after(10):  # the reload lands between two of alice's commands
            while await alice.request(send("orders.x.y", "probe")) == OK:
                pass
        assert await alice.request(send("orders.x.y", "probe")) == DENIED
        for topic in ("orders.us", "orders.eu", "alerts"):
            assert await bob.request(send(topic, topic)) == OK
        # orders.* and alerts were dropped at once: nothing came ahead of this reply.
        assert await alice.request(unsub("none")) == OK
        # Exactly orders.eu she may still subscribe to (its cache replayed).
        assert await alice.request(sub("orders.eu")) == OK
        assert await bob.request(send("orders.eu", "2")) == OK
        assert [await alice.read() for _ in range(3)] == [
            delivered("orders.eu", "1", 0),
            delivered("orders.eu", "orders.eu", 1),
            delivered("orders.eu", "2", 2),
        ]
    assert not [row for row in server.log if "Traceback" in row]


@contextmanager
def stopped(server: ServerProcess) -> Iterator[None]:
    """The server process frozen (SIGSTOP) for the block: it neither reads nor writes."""
    server.server.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.server.send_signal(signal.SIGCONT)


@BOTH_BACKENDS
async def test_a_heartbeat_client_finds_a_frozen_server_dead_and_reconnects(
    tmp_path: Path,
) -> None:
    # With --auth: the reconnected client's sends are accepted, so it sent its credentials again.
    users = write_auth(tmp_path / "users.toml", USERS)
    lost = anyio.Event()
    back = anyio.Event()
    async with (
        server_process("--auth", str(users)) as server,
        mqcore_client.connect(
            "127.0.0.1",
            server.port,
            user="alice",
            password="wonderland",
            heartbeat=1.0,
            reconnect=True,
            connect_timeout=2.0,
            on_disconnect=lambda error: lost.set(),
            on_reconnect=back.set,
        ) as client,
    ):
        await client.send("alerts", "before")
        with stopped(server):
            # The agreed interval plus the client's margin: never the OS's minutes.
            with anyio.fail_after(4):
                await lost.wait()
        with anyio.fail_after(15):
            await back.wait()
        await client.send("alerts", "after")


@BOTH_BACKENDS
async def test_without_reconnect_a_frozen_server_ends_the_subscription() -> None:
    async with (
        server_process() as server,
        mqcore_client.connect("127.0.0.1", server.port, heartbeat=1.0) as client,
        client.subscribe("t") as subscription,
    ):
        with stopped(server), anyio.fail_after(4), pytest.raises(ConnectionLostError):
            await subscription.__anext__()

"""``--auth``: authentication in hello, permissions, reload, timeouts; TCP and Unix listeners."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import mqcore_client
from mqcore_client import AuthenticationError, ServerError
from mqcore_client._url import parse_url
from mqcore_tcp import TCPServer
from mqcore_tcp._auth import AuthConfigError, AuthFile, verify_secret

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from ..wire import OK, delivered, fail, send, sub, unsub
from .support import TRANSPORTS, USERS, RawClient, listen_on, open_raw, write_auth

AUTH_REQUIRED = fail("Authentication required")
AUTH_FAILED = fail("Authentication failed")
DENIED = fail("Permission denied")
ALICE = {"command": "hello", "user": "alice", "password": "wonderland"}


@asynccontextmanager
async def auth_server(
    tmp_path: Path, transport: str = "tcp", **options: Any
) -> AsyncIterator[tuple[TCPServer, Any]]:
    """A server with --auth USERS; yields it and a function that opens a raw client."""
    path = write_auth(tmp_path / "users.toml", USERS)
    listen = listen_on(tmp_path, transport)
    async with in_process(auth=str(path), listen=listen, **options) as server:

        async def open_client() -> RawClient:
            return await open_raw(server.port, tmp_path, transport)

        yield server, open_client


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_commands_before_hello_need_authentication(tmp_path: Path, transport: str) -> None:
    async with auth_server(tmp_path, transport) as (_, open_client):  # noqa: SIM117 (the inner with uses its names)
        async with await open_client() as client:
            assert await client.request(send("orders.1", "m")) == AUTH_REQUIRED
            assert await client.request(sub("orders.1")) == AUTH_REQUIRED
            assert await client.request(unsub("orders.1")) == AUTH_REQUIRED
            hello = await client.request({"command": "hello"})
            assert hello["success"] is True
            assert hello["auth"] is True
            reply = await client.request(ALICE)
            assert reply["success"] is True
            assert await client.request(sub("orders.eu")) == OK
            assert await client.request(send("orders.eu", "m")) == delivered("orders.eu", "m", 0)
            assert await client.read() == OK


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_wrong_credentials_fail_then_the_connection_closes(
    tmp_path: Path, transport: str
) -> None:
    async with auth_server(tmp_path, transport) as (_, open_client):

        async def refused(hello: dict[str, str]) -> None:
            async with await open_client() as client:
                started = anyio.current_time()
                assert await client.request(hello) == AUTH_FAILED
                assert anyio.current_time() - started >= 0.9  # the delay that slows guessing
                assert await client.closed()

        async with anyio.create_task_group() as tg:  # each on its own connection, at once
            tg.start_soon(refused, {**ALICE, "password": "guess"})
            tg.start_soon(refused, {"command": "hello", "user": "nobody", "password": "x"})
            tg.start_soon(refused, {"command": "hello", "token": "wrong"})


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_permissions_refuse_and_nothing_is_delivered_or_cached(
    tmp_path: Path, transport: str
) -> None:
    async with auth_server(tmp_path, transport) as (server, open_client):  # noqa: SIM117 (the inner with uses its names)
        async with await open_client() as alice, await open_client() as bot:
            assert (await alice.request(ALICE))["success"]
            assert (await bot.request({"command": "hello", "token": "t0ken-s3cret"}))["success"]
            assert await bot.request(sub("alerts")) == OK  # (">" once wildcards route)
            assert await alice.request(send("orders.internal.x", "secret")) == DENIED
            assert await alice.request(send("payments", "m")) == DENIED
            assert await bot.request(send("orders.eu", "m")) == DENIED
            assert await alice.request(sub("payments")) == DENIED
            assert await alice.request(sub("orders.>")) == DENIED  # wider than orders.*
            assert await alice.request(send("alerts", "ok")) == OK
            assert await bot.read() == delivered("alerts", "ok", 0)
            assert server.broker.cached("orders.internal.x") == []
            assert server.broker.cached("payments") == []
            # Repeated: the cached answer is the same.
            assert await alice.request(send("orders.internal.x", "again")) == DENIED


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_the_client_authenticates_on_every_connection(tmp_path: Path) -> None:
    async with auth_server(tmp_path) as (server, _):
        url = f"mqcore://alice:wonderland@127.0.0.1:{server.port}"
        async with mqcore_client.connect(url) as client:
            await client.send("alerts", "hi")
            with pytest.raises(ServerError, match="Permission denied"):
                await client.send("payments", "no")
        async with (
            mqcore_client.connect("127.0.0.1", server.port, token="t0ken-s3cret") as bot,
            bot.subscribe("alerts") as subscription,
        ):
            with anyio.fail_after(10):
                assert (await subscription.__anext__()).msg == "hi"
        with pytest.raises(AuthenticationError, match="Authentication failed"):
            async with mqcore_client.connect(
                "127.0.0.1", server.port, user="alice", password="nope", reconnect=True
            ):
                pass


@pytest.mark.anyio
@BOTH_BACKENDS
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_that_does_not_authenticate_in_time_is_closed(
    tmp_path: Path, transport: str
) -> None:
    async with auth_server(tmp_path, transport, auth_timeout=1.0) as (_, open_client):  # noqa: SIM117 (the inner with uses its names)
        async with await open_client() as idle, await open_client() as good:
            assert (await good.request(ALICE))["success"]
            with anyio.fail_after(5):
                assert await idle.closed()
            assert await good.request(send("alerts", "still")) == OK


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_reloading_restricts_and_removes_users_of_live_connections(tmp_path: Path) -> None:
    async with auth_server(tmp_path) as (server, open_client):  # noqa: SIM117 (the inner with uses its names)
        async with await open_client() as alice, await open_client() as bot:
            assert (await alice.request(ALICE))["success"]
            assert (await bot.request({"command": "hello", "token": "t0ken-s3cret"}))["success"]
            assert await alice.request(sub("alerts")) == OK
            restricted = {**USERS["alice"], "subscribe": ["orders.*"], "publish": ["orders.>"]}
            write_auth(tmp_path / "users.toml", {"alice": restricted})
            server.reload_auth()
            assert await alice.request(send("alerts", "x")) == DENIED
            assert server.broker.subscribers("alerts") == []  # dropped at once
            assert await alice.request(send("orders.eu", "y")) == OK
            with anyio.fail_after(5):
                assert await bot.closed()  # its user is gone


def test_hash_password_reads_stdin_and_the_hash_verifies() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mqcore_tcp", "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    encoded = result.stdout.strip()
    assert encoded.startswith("scrypt$")
    assert "s3cret" not in encoded
    assert verify_secret("s3cret", encoded)
    assert not verify_secret("other", encoded)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[users.a]\npassword = 'plain'\n", "unknown key"),
        ("[users.a]\npassword_hash = 'md5$x'\n", "scrypt"),
        ("[users.a]\npublish = ['a.>.b']\n", "last token"),
        ("[users.a\n", "not valid TOML"),
    ],
)
def test_a_bad_auth_file_is_refused_with_one_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "users.toml"
    path.write_text(text)
    with pytest.raises(AuthConfigError, match=reason) as caught:
        AuthFile.load(str(path))
    assert "\n" not in str(caught.value)
    assert "plain" not in str(caught.value)


def test_credentials_never_show_in_reprs() -> None:
    from mqcore import Credentials, Hello

    assert "pw" not in repr(Credentials("u", "pw", None))
    assert "pw" not in repr(Hello(user="u", password="pw"))
    assert "tok" not in repr(Hello(token="tok"))
    assert "pw" not in repr(parse_url("mqcore://u:pw@h"))


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_listening_beyond_loopback_without_auth_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mqcore_tcp")
    async with in_process(listen=("mqcore://127.0.0.1:0", f"unix://{tmp_path}/mq.sock")):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    users = str(write_auth(tmp_path / "users.toml", USERS))
    async with in_process(listen=("mqcore://0.0.0.0:0",), auth=users):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    async with in_process(listen=("mqcore://0.0.0.0:0", "http://0.0.0.0:0")):
        pass
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert all("--auth is not set" in message for message in warned)

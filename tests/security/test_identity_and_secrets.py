"""A client certificate standing for a user (mutual TLS), and secrets that never leak.

The secrets scan drives every path a credential can take (right and wrong
passwords and tokens, credentials in a malformed line, over TCP and
WebSocket, in a client URL) and then reads everything the server shows:
its log at debug level, every reply and error, ``/api/connections``,
``/api/stats`` and ``/metrics``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

import mqcore_client
from mqcore_client import AuthenticationError

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from ..web.support import WSClient, get, web_server
from ..wire import OK, delivered, fail, send, sub
from .support import USERS, RawClient, mutual_tls, write_auth

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

AUTH_REQUIRED = fail("Authentication required")
AUTH_FAILED = fail("Authentication failed")
DENIED = fail("Permission denied")

#: A user with no password and no token: only a client certificate with CN=ops is it.
OPS = {"publish": ["ops.>"], "subscribe": ["ops.*"]}


async def test_a_client_certificate_stands_for_the_user_it_names(tmp_path: Path) -> None:
    certs = mutual_tls(tmp_path, "mqcores://127.0.0.1:0", {**USERS, "ops": OPS})
    async with in_process(**certs.options) as server:
        async with await RawClient.tcp(server.port, certs.client_cert(tmp_path, "ops")) as ops:
            # No hello needed: the verified certificate is the credential.
            assert await ops.request(sub("ops.eu")) == OK
            assert await ops.request(send("ops.eu", "m")) == delivered("ops.eu", "m", 0)
            assert await ops.read() == OK
            assert await ops.request(send("alerts", "m")) == DENIED
            assert await ops.request(sub("orders.eu")) == DENIED
        # A certificate naming nobody in the file: it must authenticate as anyone else.
        async with await RawClient.tcp(server.port, certs.client_cert(tmp_path, "nobody")) as other:
            assert await other.request(send("ops.eu", "m")) == AUTH_REQUIRED
            hello = {"command": "hello", "user": "alice", "password": "wonderland"}
            assert (await other.request(hello))["success"]
            assert await other.request(send("ops.eu", "m")) == DENIED
            assert await other.request(send("alerts", "m")) == OK
        # The client library, with the certificate and no credentials.
        url = f"mqcores://127.0.0.1:{server.port}"
        context = certs.client_cert(tmp_path, "ops")
        async with mqcore_client.connect(url, ssl=context) as client:
            await client.send("ops.us", "from the library")
            assert server.broker.next_index("ops.us") == 1
        # Nor does "ops" log in with a password it does not have.
        async with await RawClient.tcp(server.port, certs.client_cert(tmp_path, "x")) as raw:
            reply = await raw.request({"command": "hello", "user": "ops", "password": ""})
            assert reply == AUTH_FAILED


async def test_a_client_certificate_stands_for_its_user_over_wss(tmp_path: Path) -> None:
    certs = mutual_tls(tmp_path, "https://127.0.0.1:0", {**USERS, "ops": OPS})
    async with in_process(**certs.options) as server:
        url = f"wss://127.0.0.1:{server.port}/ws"
        # No credentials: the certificate (CN=ops) is the user, on /ws as on mqcores://.
        async with mqcore_client.connect(url, ssl=certs.client_cert(tmp_path, "ops")) as client:
            await client.send("ops.ws", "by certificate")
            with pytest.raises(mqcore_client.ServerError, match="Permission denied"):
                await client.send("alerts", "not ops'")
        assert server.broker.next_index("ops.ws") == 1
        assert server.broker.next_index("alerts") == 0


#: Every secret the scan below uses; none may show anywhere.
SECRETS = ("wonderland", "t0ken-s3cret", "guess-0ne-s3cret", "wr0ng-t0ken-s3cret", "url-s3cret")


async def test_credentials_never_appear_in_logs_pages_or_replies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    users = write_auth(tmp_path / "users.toml", USERS)
    hashes = [row.split('"')[1] for row in users.read_text().splitlines() if "_hash" in row]
    shown: list[str] = []
    async with web_server(auth=str(users)) as web:
        port = web.tcp_port

        async def replies(*objs: Any) -> None:
            async with await RawClient.tcp(port) as raw:
                for obj in objs:
                    shown.append(repr(await raw.request(obj)))

        async with anyio.create_task_group() as tg:  # at once: each refusal waits its delay
            tg.start_soon(replies, send("alerts", "before hello"), sub("orders.eu"))
            tg.start_soon(
                replies, {"command": "hello", "user": "alice", "password": "guess-0ne-s3cret"}
            )
            tg.start_soon(replies, {"command": "hello", "token": "wr0ng-t0ken-s3cret"})
            tg.start_soon(
                replies, {"command": "hello", "user": "wonderland", "password": "wonderland"}
            )
            tg.start_soon(
                replies,
                {"command": "hello", "user": "alice", "password": "wonderland"},
                send("orders.internal.x", "m"),
                sub(">"),
                {"command": "hello", "token": "t0ken-s3cret"},  # a second hello
            )
            tg.start_soon(replies, {"command": "hello", "token": "t0ken-s3cret"}, send("x", "m"))
        # Credentials inside lines the server cannot read.
        async with await RawClient.tcp(port) as raw:
            await raw.stream.send(b'{"command": "hello", "password": "wonderland", \n')
            shown.append(repr(await raw.read()))
            await raw.stream.send(b'{"command": "hello", "user": 5, "password": "wonderland"}\n')
            shown.append(repr(await raw.read()))
            long_line = b'{"command": "hello", "token": "t0ken-s3cret' + b"x" * (2 << 20) + b'"}\n'
            await raw.stream.send(long_line)
            shown.append(repr(await raw.read()))
        # Over the WebSocket listener.
        ws = await WSClient.open(web.http_port)
        await ws.send_json({"command": "hello", "token": "wr0ng-t0ken-s3cret"})
        await ws.until_closed()  # refused, then closed
        assert ws.messages == ['{"success": false, "reason": "Authentication failed"}']
        shown += ws.messages
        await ws.aclose()
        # In a client URL: the error names neither the password nor the URL's credentials.
        url = f"mqcore://alice:url-s3cret@127.0.0.1:{port}"
        with pytest.raises(AuthenticationError) as refused:
            async with mqcore_client.connect(url, connect_timeout=10):
                pass
        shown += [str(refused.value), repr(refused.value)]
        # While some connections are authenticated and open, the pages.
        async with await RawClient.tcp(port) as alice:
            assert (
                await alice.request({"command": "hello", "user": "alice", "password": "wonderland"})
            )["success"]
            for path in ("/api/connections", "/api/stats", "/metrics", "/api/topics"):
                page = await get(web.http_port, path)
                assert page.status == 200
                shown.append(page.body.decode())
            connections = (await get(web.http_port, "/api/connections")).json()
            assert connections["total"] == 1  # alice's connection is listed (without a secret)
    shown.append(caplog.text)
    everything = "\n".join(shown)
    assert "Authentication failed" in everything  # the scan saw the refusals
    for secret in (*SECRETS, *hashes):
        assert secret not in everything, f"{secret!r} leaked"

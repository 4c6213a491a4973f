"""``https://`` listeners (console, API, metrics, ``/ws`` over TLS) and the client's ``wss://``."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import anyio
import pytest

import mqcore_client
from mqcore_client import ConnectError
from mqcore_client._ws import connect_ws
from mqcore_tcp._tls import HANDSHAKE_TIMEOUT

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from ..security.support import Certs, make_certs, round_trip
from ..wire import OK_BYTES, line, sub
from .support import parse_response, read_all

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


def https_options(certs: Certs, **more: object) -> dict[str, object]:
    return {
        "listen": ("https://127.0.0.1:0",),
        "tls_cert": str(certs.cert),
        "tls_key": str(certs.key),
        **more,
    }


async def https_get(port: int, path: str, context: ssl.SSLContext) -> bytes:
    """``GET path`` over TLS on a fresh connection; everything the server answers."""
    stream = await anyio.connect_tcp(
        "127.0.0.1", port, ssl_context=context, tls_standard_compatible=False
    )
    async with stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return await read_all(stream)


async def test_the_console_and_the_api_are_served_over_https(certs: Certs) -> None:
    async with in_process(**https_options(certs)) as server:
        context = certs.client_context()
        health = parse_response(await https_get(server.port, "/healthz", context))
        assert (health.status, health.json()) == (200, {"status": "ok"})
        stats = parse_response(await https_get(server.port, "/api/stats", context))
        assert stats.json()["server"]["name"] == "mqcore"
        console = parse_response(await https_get(server.port, "/", context))
        assert console.status == 200
        assert b"<html" in console.body.lower()
        metrics = parse_response(await https_get(server.port, "/metrics", context))
        assert metrics.status == 200
        assert b"mqcore_" in metrics.body


async def test_plaintext_on_the_https_port_fails_fast_and_https_goes_on(certs: Certs) -> None:
    async with in_process(**https_options(certs)) as server:
        started = time.monotonic()
        async with await anyio.connect_tcp("127.0.0.1", server.port) as plain:
            await plain.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_all(plain)
        # Closed at the first bytes (not a timeout), and never an HTTP answer in clear.
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT
        assert b"HTTP/1.1" not in answer
        assert b"status" not in answer
        health = await https_get(server.port, "/healthz", certs.client_context())
        assert parse_response(health).status == 200


async def test_an_untrusted_https_server_fails_cleanly(certs: Certs) -> None:
    async with in_process(**https_options(certs)) as server:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect_ws(f"wss://127.0.0.1:{server.port}/ws")  # the default context
        url = f"wss://127.0.0.1:{server.port}/ws"
        with pytest.raises(ConnectError, match="certificate verify failed"):
            async with mqcore_client.connect(url, connect_timeout=5):
                pass
        health = await https_get(server.port, "/healthz", certs.client_context())
        assert parse_response(health).status == 200


async def test_the_client_speaks_over_wss_urls(certs: Certs) -> None:
    async with in_process(**https_options(certs)) as server:
        stream = await connect_ws(f"wss://127.0.0.1:{server.port}/ws", certs.client_context())
        await stream.send(line(sub("raw")))
        assert await stream.receive() == OK_BYTES
        await stream.aclose()
        url = f"wss://127.0.0.1:{server.port}/ws"
        received = await round_trip(url, certs.client_context(), "over wss")
        assert (received.topic, received.msg, received.index) == ("t", "over wss", 0)


async def test_mutual_tls_on_https_requires_a_client_certificate(
    certs: Certs, tmp_path: Path
) -> None:
    options = https_options(certs, tls_client_ca=str(certs.ca_file))
    async with in_process(**options) as server:
        try:
            answer = await https_get(server.port, "/healthz", certs.client_context())
        except (ssl.SSLError, OSError, anyio.EndOfStream, anyio.BrokenResourceError):
            answer = b""  # TLS 1.2: the handshake fails
        assert answer == b""  # TLS 1.3: the server's alert ends the stream at the first read
        context = certs.client_cert(tmp_path, "ops")
        assert parse_response(await https_get(server.port, "/healthz", context)).status == 200

"""TLS listeners (``mqcores://``) and the client's TLS, on asyncio and trio."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import mqcore_client
from mqcore_client import ConnectError, ConnectionLostError

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from ..wire import OK, delivered, send, sub
from .support import Certs, RawClient, make_certs, round_trip

TLS_URL = "mqcores://127.0.0.1:0"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path)


def tls_options(certs: Certs, **more: object) -> dict[str, object]:
    return {"listen": (TLS_URL,), "tls_cert": str(certs.cert), "tls_key": str(certs.key), **more}


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_a_tls_client_publishes_and_subscribes(certs: Certs) -> None:
    async with in_process(**tls_options(certs)) as server:
        url = f"mqcores://127.0.0.1:{server.port}"
        message = await round_trip(url, certs.client_context(), "over tls")
        assert message.msg == "over tls"
        async with await RawClient.tcp(server.port, certs.client_context()) as raw:
            assert await raw.request(sub("t", cache=False)) == OK
            assert await raw.request(send("t", "m")) == delivered("t", "m", 1)
            assert await raw.read() == OK


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_a_plaintext_client_on_a_tls_port_fails_fast_and_the_server_goes_on(
    certs: Certs,
) -> None:
    async with in_process(**tls_options(certs)) as server:
        with anyio.fail_after(5):
            async with await RawClient.tcp(server.port) as plain:
                await plain.write(send("t", "m"))
                assert await plain.closed()
        with pytest.raises(ConnectionLostError, match="closed"), anyio.fail_after(5):
            async with mqcore_client.connect(f"mqcore://127.0.0.1:{server.port}"):
                pass
        async with await RawClient.tcp(server.port, certs.client_context()) as good:
            assert await good.request(send("t", "m")) == OK


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_an_untrusted_server_certificate_fails_cleanly(certs: Certs) -> None:
    async with in_process(**tls_options(certs)) as server:
        with pytest.raises(ConnectError, match="certificate verify failed"), anyio.fail_after(5):
            async with mqcore_client.connect(f"mqcores://127.0.0.1:{server.port}"):
                pass  # the default context does not trust the test CA
        async with await RawClient.tcp(server.port, certs.client_context()) as good:
            assert await good.request(send("t", "m")) == OK


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether a TLS client with ``context`` is refused (in the handshake or at its first read)."""
    try:
        async with await RawClient.tcp(port, context) as client:
            await client.request(send("t", "m"))
    except (OSError, anyio.IncompleteRead, anyio.BrokenResourceError):
        return True
    return False


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_mutual_tls_requires_a_client_certificate(certs: Certs, tmp_path: Path) -> None:
    options = tls_options(certs, tls_client_ca=str(certs.ca_file))
    async with in_process(**options) as server:
        with anyio.fail_after(5):
            assert await refused(server.port, certs.client_context())
        context = certs.client_cert(tmp_path, "alice")
        async with await RawClient.tcp(server.port, context) as known:
            assert await known.request(send("t", "m")) == OK


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "No such file"),
        ("mismatched", "matching private key"),
        ("garbage", "private key"),
    ],
)
def test_a_bad_certificate_or_key_is_one_clear_line_at_start(
    certs: Certs, tmp_path: Path, problem: str, message: str
) -> None:
    key = certs.key
    if problem == "missing":
        key = tmp_path / "nope.key"
    elif problem == "mismatched":
        (tmp_path / "other").mkdir()
        key = make_certs(tmp_path / "other").key
    else:
        key = tmp_path / "garbage.key"
        key.write_text("not a key\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqcore_tcp",
            "--listen",
            "mqcores://127.0.0.1:0",
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr


def test_tls_contexts_offer_tls_1_2_or_newer(certs: Certs) -> None:
    from mqcore_tcp._tls import server_context

    context = server_context(str(certs.cert), str(certs.key))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2

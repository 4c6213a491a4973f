"""The client's command line over TLS and with credentials: --tls-ca, --tls-cert/--tls-key,
--user (password from $MQCORE_PASSWORD), a token from $MQCORE_TOKEN; bad files fail at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from ..conftest import BOTH_BACKENDS
from ..helpers import in_process
from .support import USERS, make_certs, mutual_tls, write_auth

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

OPS = {"publish": ["ops.>"], "subscribe": ["ops.*"]}


async def cli(*args: str, **env: str) -> tuple[int, str]:
    """Run ``python -m mqcore_client ARGS`` with ``env`` added; (exit status, stderr)."""
    done = await anyio.run_process(
        [sys.executable, "-m", "mqcore_client", *args],
        env={**os.environ, **env},
        check=False,
    )
    return done.returncode, done.stderr.decode()


async def test_a_client_certificate_from_files_stands_for_its_user(tmp_path: Path) -> None:
    certs = mutual_tls(tmp_path, "mqcores://127.0.0.1:0", {**USERS, "ops": OPS})
    issued = certs.ca.issue_cert("ops.example", common_name="ops")
    pem = tmp_path / "ops.pem"
    issued.private_key_and_cert_chain_pem.write_to_path(str(pem))
    async with in_process(**certs.options) as server:
        url = f"mqcores://127.0.0.1:{server.port}"
        tls = ["--url", url, "--tls-ca", str(certs.ca_file)]
        assert await cli(*tls, "--tls-cert", str(pem), "send", "ops.x", "m") == (0, "")
        assert server.broker.next_index("ops.x") == 1
        # Without the certificate, the handshake fails (the server requires one).
        status, _ = await cli(*tls, "send", "ops.x", "m")
        assert status == 3
        status, error = await cli(
            *tls, "--tls-cert", str(tmp_path / "missing.pem"), "send", "t", "m"
        )
        assert status == 2
        assert error.count("\n") == 1
        assert "TLS files" in error


async def test_a_user_and_password_or_a_token_from_the_environment(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    users = write_auth(tmp_path / "users.toml", USERS)
    options = {"listen": ("mqcores://127.0.0.1:0",), "tls_cert": str(certs.cert)}
    async with in_process(**options, tls_key=str(certs.key), auth=str(users)) as server:
        base = ["--url", f"mqcores://127.0.0.1:{server.port}", "--tls-ca", str(certs.ca_file)]
        sent = await cli(
            *base, "--user", "alice", "send", "alerts", "m", MQCORE_PASSWORD="wonderland"
        )
        assert sent == (0, "")
        assert server.broker.next_index("alerts") == 1
        alice = ["--user", "alice", "send", "alerts", "m"]
        status, error = await cli(*base, *alice, MQCORE_PASSWORD="wr0ng-s3cret")
        assert status == 3  # a connection error: the server closes after the refusal
        assert "Authentication failed" in error
        assert "wr0ng-s3cret" not in error
        # bot may only subscribe: its token authenticates it, its permissions refuse the send.
        status, error = await cli(*base, "send", "alerts", "m", MQCORE_TOKEN="t0ken-s3cret")
        assert status == 1
        assert "Permission denied" in error
        assert server.broker.next_index("alerts") == 1

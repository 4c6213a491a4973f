"""Nodes on a Redis that wants TLS and a password: ``rediss://user:password@host:port/db``.

A real ``redis-server`` with a TLS port (certificates from ``trustme``) and an
ACL user; its plain port stays open for the test's own checks (readiness,
``CLIENT LIST``). The nodes are given only the TLS port, so every connection
they make (the calls, the publishing pipeline and the pub/sub listener, the
last two taken over from redis-py after its handshake) must speak TLS and
authenticate.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mqcore_tcp.cluster._pipeline import PIPELINE_NAME
from mqcore_tcp.cluster._pubsub import LISTENER_NAME
from mqcore_tcp.testing_redis import RedisServer, free_port, running_redis

from ..wire import OK, delivered, line, send, sub
from .support import Peer, nodes

USER, PASSWORD = "mqnode", "s3cret:/@x"  # characters a URL must escape, escaped below
ESCAPED_PASSWORD = "s3cret%3A%2F%40x"


class TlsRedis:
    """A Redis with a TLS port and an ACL user, and the URL a node takes for it."""

    def __init__(self, server: RedisServer, tls_port: int, ca_file: Path) -> None:
        self.server = server
        self.tls_port = tls_port
        self.ca_file = ca_file

    def url(self, password: str = ESCAPED_PASSWORD) -> str:
        return (
            f"rediss://{USER}:{password}@127.0.0.1:{self.tls_port}/0"
            f"?ssl_ca_certs={self.ca_file}"
        )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = free_port()
    args = [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca_file),
        "--tls-auth-clients", "no",
        # An ACL user (the default user stays open on the plain port, for the checks).
        "--user", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all",
    ]  # fmt: skip
    with running_redis(*args) as server:
        yield TlsRedis(server, tls_port, ca_file)


def _node_clients(redis: RedisServer) -> list[dict[str, str]]:
    """``CLIENT LIST`` of the nodes' connections (their ACL user), as dicts."""
    listing = redis.command("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    clients = [
        dict(field.split("=", 1) for field in row.split(" ") if "=" in field)
        for row in listing.decode().splitlines()
    ]
    return [client for client in clients if client.get("user") == USER]


def test_a_message_crosses_nodes_over_tls_with_a_password(tls_redis: TlsRedis) -> None:
    with nodes(tls_redis.url(), 2) as (a, b):
        subscriber = Peer(b.port)
        subscriber.send(line(sub("secure")))
        assert subscriber.lines(1) == [OK]
        sender = Peer(a.port)
        for i in range(50):  # several flights on the pipeline, several reads on pub/sub
            sender.send(line(send("secure", f"m{i}")))
        assert sender.lines(50) == [OK] * 50
        assert subscriber.lines(50) == [delivered("secure", f"m{i}", i) for i in range(50)]
        clients = _node_clients(tls_redis.server)
    # Both nodes' connections, the pipeline's and the listeners among them, all on TLS.
    names = [client["name"] for client in clients]
    assert names.count(PIPELINE_NAME) == 1  # node A's: node B sent nothing
    assert names.count(LISTENER_NAME) == 2
    assert {client["laddr"] for client in clients} == {f"127.0.0.1:{tls_redis.tls_port}"}


def test_a_wrong_password_refuses_to_start(tls_redis: TlsRedis) -> None:
    command = [sys.executable, "-m", "mqcore_tcp", "--port", "0"]
    command += ["--cluster", tls_redis.url(password="wrong")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert "invalid username-password pair" in done.stderr
    assert "wrong" not in done.stderr  # the URL is logged without its password
    assert len(done.stderr.strip().splitlines()) == 1

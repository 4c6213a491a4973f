"""What the security tests share: certificates (trustme), auth files, raw TLS line clients."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import trustme
from anyio.streams.buffered import BufferedByteReceiveStream

import mqcore_client
from mqcore_client import Received
from mqcore_client._ws import connect_ws
from mqcore_tcp import TCPServer
from mqcore_tcp._auth import hash_secret

from ..helpers import in_process

#: Low scrypt cost for test users: the format and checks are the same, the tests fast.
FAST = {"n": 1 << 10, "r": 8, "p": 1}


@dataclass
class Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, and files for the server's options."""

    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path
    #: Server options using these files (see :func:`mutual_tls`).
    options: dict[str, Any] = field(default_factory=dict)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def client_cert(self, directory: Path, name: str) -> ssl.SSLContext:
        """A client context presenting a certificate with subject CN ``name``."""
        issued = self.ca.issue_cert(f"{name}.example", common_name=name)
        context = self.client_context()
        issued.configure_cert(context)
        return context


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert = directory / "server.pem"
    key = directory / "server.key"
    ca_file = directory / "ca.pem"
    server.private_key_pem.write_to_path(str(key))
    with open(cert, "wb") as file:
        for blob in server.cert_chain_pems:
            file.write(blob.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return Certs(ca, cert, key, ca_file)


def write_auth(path: Path, users: dict[str, dict[str, Any]]) -> Path:
    """Write an auth file: each user's ``password``/``token`` is stored hashed."""
    out = []
    for name, entry in users.items():
        out.append(f"[users.{name}]")
        for key, value in entry.items():
            if key in ("password", "token"):
                out.append(f'{key}_hash = "{hash_secret(value, **FAST)}"')
            else:
                out.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(out) + "\n")
    return path


#: The users most tests use.
USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "password": "wonderland",
        "publish": ["orders.>", "alerts"],
        "subscribe": ["orders.*", "alerts"],
        "deny_publish": ["orders.internal.>"],
    },
    "bot": {"token": "t0ken-s3cret", "subscribe": [">"]},
}


class RawClient:
    """A line client over any byte stream (TLS or not): write JSON lines, read replies."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)

    @classmethod
    async def tcp(cls, port: int, tls: ssl.SSLContext | None = None) -> RawClient:
        if tls is None:
            return cls(await anyio.connect_tcp("127.0.0.1", port))
        stream = await anyio.connect_tcp(
            "127.0.0.1", port, ssl_context=tls, tls_standard_compatible=False
        )
        return cls(stream)

    @classmethod
    async def unix(cls, path: str) -> RawClient:
        return cls(await anyio.connect_unix(path))

    @classmethod
    async def ws(cls, port: int) -> RawClient:
        """Over an HTTP listener's ``/ws``: one frame per line, each reply a frame."""
        return cls(await connect_ws(f"ws://127.0.0.1:{port}/ws"))

    async def write(self, *objs: Any) -> None:
        await self.stream.send(b"".join(json.dumps(o).encode() + b"\n" for o in objs))

    async def read(self) -> Any:
        while True:
            line = await self._reader.receive_until(b"\r\n", 1 << 20)
            if line:  # skip heartbeats (empty lines)
                return json.loads(line)

    async def request(self, obj: Any) -> Any:
        await self.write(obj)
        return await self.read()

    async def closed(self) -> bool:
        """Whether the server ends the connection (reading and discarding until it does)."""
        try:
            while await self.stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, anyio.IncompleteRead):
            return True
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


#: The listeners every rule is tested on.
TRANSPORTS = ("tcp", "unix", "ws")


def listen_on(directory: Path, transport: str) -> tuple[str, ...]:
    """The one listener URL of ``transport`` (free port; a socket in ``directory``)."""
    urls = {
        "tcp": "mqcore://127.0.0.1:0",
        "unix": f"unix://{directory}/mq.sock",
        "ws": "http://127.0.0.1:0",
    }
    return (urls[transport],)


async def open_raw(port: int, directory: Path, transport: str) -> RawClient:
    """A raw client on the listener :func:`listen_on` made (``port``: the server's)."""
    if transport == "tcp":
        return await RawClient.tcp(port)
    if transport == "ws":
        return await RawClient.ws(port)
    return await RawClient.unix(f"{directory}/mq.sock")


@asynccontextmanager
async def two_clients(
    directory: Path, transport: str, **options: Any
) -> AsyncIterator[tuple[TCPServer, RawClient, RawClient]]:
    """A server (``options``) listening on ``transport`` only, and two raw clients of it."""
    async with in_process(listen=listen_on(directory, transport), **options) as server:
        first = await open_raw(server.port, directory, transport)
        second = await open_raw(server.port, directory, transport)
        async with first, second:
            yield server, first, second


def mutual_tls(directory: Path, listen: str, users: dict[str, dict[str, Any]]) -> Certs:
    """Certificates in ``directory``, and the server options (``.options``) of a mutual-TLS
    ``listen`` URL whose auth file holds ``users``."""
    certs = make_certs(directory)
    certs.options = {
        "listen": (listen,),
        "tls_cert": str(certs.cert),
        "tls_key": str(certs.key),
        "tls_client_ca": str(certs.ca_file),
        "auth": str(write_auth(directory / "users.toml", users)),
    }
    return certs


async def round_trip(url: str, context: ssl.SSLContext, msg: str) -> Received:
    """Send ``msg`` to topic "t" through the client library at ``url`` and receive it back."""
    async with (
        mqcore_client.connect(url, ssl=context) as client,
        client.subscribe("t") as subscription,
    ):
        await client.send("t", msg)
        with anyio.fail_after(10):
            return await subscription.__anext__()

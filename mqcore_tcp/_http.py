"""The HTTP listener: ``http://HOST:PORT`` serves health, metrics, the API, the console and ``/ws``.

``https://HOST:PORT`` is the same over TLS (``--tls-cert``/``--tls-key``;
``--tls-client-ca`` requires client certificates): each connection's task
does the handshake first, bounded as ``_tls`` says, so a plaintext or
stalled peer costs one task for at most ``HANDSHAKE_TIMEOUT`` and never
reaches the hub.

Theory of operation. One anyio task per HTTP connection (on asyncio and trio
alike: the web side needs no fast path) drives an h11 state machine
(sans-I/O, like the broker): read until h11 has a request, answer it with the
page :class:`~mqcore_tcp._site.Site` computes, start the next cycle
(keep-alive). ``GET /ws`` with a valid WebSocket upgrade hands the stream to
``_websocket``, where it becomes one more connection of the hub.

Bounds, so that no client can make the server hold much or wait forever:

- a request's head (request line and headers) is at most
  :data:`MAX_HEAD_BYTES` (h11's ``max_incomplete_event_size``): past it,
  ``431``; a malformed one gets ``400``; both then close;
- the head must arrive within :data:`HEAD_TIMEOUT` (slow headers: ``408``
  and close; an idle keep-alive connection is closed silently);
- a request body is at most :data:`MAX_BODY_BYTES` (``413``): every page is
  a GET;
- a response must be taken by the client within :data:`WRITE_TIMEOUT`.

Errors are logged at debug level with the peer, never as tracebacks.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final
from urllib.parse import SplitResult

import anyio
import anyio.abc
import h11
from anyio.abc import SocketAttribute

from ._accept import AcceptBackoff, out_of_descriptors, peer_name, tune_accepted
from ._hub import Hub
from ._site import Page, Site, json_page
from ._tls import handshake
from ._websocket import accept_upgrade, serve_websocket

__all__ = [
    "HEAD_TIMEOUT",
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "WRITE_TIMEOUT",
    "HTTPListening",
    "open_http",
]

log = logging.getLogger("mqcore_tcp")

#: The largest request head (request line plus headers) accepted.
MAX_HEAD_BYTES: Final = 16 << 10
#: The largest request body accepted (pages are GETs: bodies are refused).
MAX_BODY_BYTES: Final = 4 << 10
#: Seconds for a request's head to arrive (also how long a keep-alive connection may idle).
HEAD_TIMEOUT = 10.0
#: Seconds for a client to take a response.
WRITE_TIMEOUT = 10.0
READ_SIZE: Final = 64 << 10

_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def open_http(url: SplitResult, tls: ssl.SSLContext | None = None) -> HTTPListening:
    """Listen on ``url``'s host (default 127.0.0.1) and port (default 8222; 0: any free one).

    With ``tls``, every connection is HTTPS (``https://``).
    """
    host = url.hostname or "127.0.0.1"
    port = 8222 if url.port is None else url.port
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    shown = f"[{host}]" if ":" in host else host
    scheme = "http" if tls is None else "https"
    listening = HTTPListening(listener, f"{scheme}://{shown}:{port}", port, tls)
    listening.host = host  # beyond loopback without --auth: the server warns
    return listening


class HTTPListening:
    """A bound HTTP listener (see the module docstring)."""

    def __init__(
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        name: str,
        port: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.port: int | None = port
        self.host: str | None = None
        self._listener = listener
        self._subs: list[anyio.abc.SocketListener] = list(
            getattr(listener, "listeners", [listener])
        )

    async def serve(self, hub: Hub, task_group: anyio.abc.TaskGroup) -> None:
        site = Site(hub)
        async with anyio.create_task_group() as tg:
            for sub in self._subs:
                tg.start_soon(self._accept, site, sub, task_group)

    async def _accept(
        self, site: Site, listener: anyio.abc.SocketListener, task_group: anyio.abc.TaskGroup
    ) -> None:
        backoff = AcceptBackoff(self.name)
        while True:
            try:
                stream = await listener.accept()
            except anyio.BrokenResourceError as exc:
                lack = out_of_descriptors(exc)
                if lack is None:
                    raise
                await anyio.sleep(backoff.failed(lack))
                continue
            backoff.succeeded()
            try:
                tune_accepted(stream.extra(SocketAttribute.raw_socket))
                peer = peer_name(stream.extra(SocketAttribute.remote_address, ""))
            except OSError:
                await stream.aclose()
                continue
            task_group.start_soon(_serve_connection, site, stream, peer, self.tls)

    async def aclose(self) -> None:
        await self._listener.aclose()


async def _serve_connection(
    site: Site, stream: anyio.abc.ByteStream, peer: str, tls: ssl.SSLContext | None
) -> None:
    """One accepted connection: its TLS handshake (``https://``), then its requests."""
    secured = await handshake(stream, tls, peer)
    if secured is None:
        return
    stream, identity = secured
    await HTTPConnection(site, stream, peer, identity).serve()


def _raw_response(status: int, page: Page) -> bytes:
    """A complete response that closes the connection, without h11 (whose state may be broken)."""
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"content-type: {page.content_type}",
        f"content-length: {len(page.body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in page.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + page.body


class HTTPConnection:
    """One HTTP connection: requests in, pages out, until either side is done."""

    def __init__(
        self, site: Site, stream: anyio.abc.ByteStream, peer: str, identity: str | None = None
    ) -> None:
        self.site = site
        self.stream = stream
        self.peer = peer
        #: The subject CN of a verified client certificate (mutual TLS), for ``/ws``.
        self.identity = identity
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._received = 0  # bytes of the request under way

    async def serve(self) -> None:
        """Answer requests until the connection ends; never raises for what the peer does."""
        handed_off = False
        try:
            handed_off = await self._serve()
        except h11.RemoteProtocolError as exc:  # a malformed head, body or framing
            await self._refuse(exc.error_status_hint, str(exc) or "bad request")
        except TimeoutError:  # the head (or body) did not arrive in time
            if self._received:
                await self._refuse(408, "the request did not arrive in time")
        except _GONE:
            pass
        except Exception:  # a bug here must not stop the server's other connections
            log.exception("http from %s: internal error", self.peer)
        finally:
            if not handed_off:
                with anyio.CancelScope(shield=True):
                    await self.stream.aclose()

    async def _serve(self) -> bool:
        """True if the stream went to the WebSocket transport (which then closes it)."""
        while True:
            with anyio.fail_after(HEAD_TIMEOUT):
                request = await self._next_request()
            if request is None:
                return False
            if request.method not in (b"GET", b"HEAD"):
                await self._refuse(405, "only GET is served", (("allow", "GET, HEAD"),))
                return False
            target = request.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            if path == "/ws":
                return await self._upgrade(request)
            if not await self._read_body():
                return False
            page = self.site.get(path, query)
            await self._respond(page, head_only=request.method == b"HEAD")
            if self.h11.our_state is h11.MUST_CLOSE:
                return False
            self.h11.start_next_cycle()
            self._received = 0

    async def _receive(self) -> None:
        try:
            data = await self.stream.receive(READ_SIZE)
        except anyio.EndOfStream:
            data = b""
        self._received += len(data)
        self.h11.receive_data(data)

    async def _next_request(self) -> h11.Request | None:
        """The next request's head, or None if the peer closed between requests."""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Request):
                return event
            else:  # ConnectionClosed (a request cannot start with anything else)
                return None

    async def _read_body(self) -> bool:
        """Read (and drop) the request's body, if small; False if refused."""
        size = 0
        with anyio.fail_after(HEAD_TIMEOUT):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    await self._receive()
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_BODY_BYTES:
                        await self._refuse(413, "request bodies are not served")
                        return False
                else:
                    return isinstance(event, h11.EndOfMessage)

    async def _respond(self, page: Page, head_only: bool = False) -> None:
        headers = [
            ("content-type", page.content_type),
            ("content-length", str(len(page.body))),
            ("cache-control", "no-store"),
            *page.headers,
        ]
        data = self.h11.send(
            h11.Response(
                status_code=page.status,
                headers=headers,
                reason=_REASONS.get(page.status, "").encode(),
            )
        )
        if not head_only:
            data += self.h11.send(h11.Data(data=page.body))
        data += self.h11.send(h11.EndOfMessage())
        with anyio.move_on_after(WRITE_TIMEOUT) as scope:
            await self.stream.send(data)
        if scope.cancelled_caught:
            raise anyio.BrokenResourceError("the client did not take the response in time")

    async def _refuse(
        self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Answer ``status`` with the reason as JSON, then close."""
        log.debug("http from %s: %d %s", self.peer, status, reason)
        page = json_page(status, {"error": reason})
        page = Page(page.status, page.content_type, page.body, headers)
        with anyio.move_on_after(WRITE_TIMEOUT):
            await self.stream.send(_raw_response(status, page))

    async def _upgrade(self, request: h11.Request) -> bool:
        """Upgrade to a WebSocket (True), or refuse the request (False)."""
        headers = {name.lower(): value for name, value in request.headers}
        if b"websocket" not in headers.get(b"upgrade", b"").lower():
            upgrade = (("upgrade", "websocket"),)
            await self._refuse(426, "GET /ws needs a WebSocket upgrade", upgrade)
            return False
        if headers.get(b"sec-websocket-version") != b"13":
            await self._refuse(
                426, "WebSocket version 13 is spoken", (("sec-websocket-version", "13"),)
            )
            return False
        try:
            ws, accept = accept_upgrade(list(request.headers), request.target)
        except ValueError as exc:
            await self._refuse(400, f"bad WebSocket upgrade: {exc}")
            return False
        trailing, _ = self.h11.trailing_data
        with anyio.move_on_after(WRITE_TIMEOUT) as scope:
            await self.stream.send(accept)
        if scope.cancelled_caught:
            raise anyio.BrokenResourceError("the client did not take the upgrade in time")
        await serve_websocket(
            self.site.hub, self.stream, self.peer, ws, bytes(trailing), self.identity
        )
        return True

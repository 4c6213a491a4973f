"""The server: a :class:`~mqcore_tcp._hub.Hub` and its listeners, started and stopped together."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import ssl
from typing import Any

import anyio
import anyio.abc

from mqcore import Broker, Store

from ._auth import AuthFile
from ._config import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_PORT, ServerConfig
from ._hub import SHUTDOWN_GRACE, Hub
from ._listen import open_listener
from ._socket_listener import Listening
from ._tls import server_context

__all__ = ["DEFAULT_MAX_QUEUED_BYTES", "DEFAULT_PORT", "TCPServer", "serve"]

log = logging.getLogger("mqcore_tcp")


class TCPServer:
    """Serves one :class:`mqcore.Broker` on every listener of its configuration.

    Options are those of :class:`~mqcore_tcp.ServerConfig` (``host``,
    ``port``, ``listen``, ``cache_size``, ``max_line_bytes``,
    ``max_queued_bytes``, ``max_topics``, ``max_cache_bytes``), given as a
    ``config``, as keywords, or both (keywords win). With a ``store`` (e.g.
    :class:`mqcore_tcp.SQLiteStore`) the broker is durable: restored from the
    store, and nothing is written to a connection before the records it
    depends on are stored. The caller opens and closes the store.

    Exposure options (``tls_cert``, ``tls_key``, ``tls_client_ca``, ``auth``,
    ...) are read here: a bad certificate, key or auth file raises
    :class:`ValueError` (``TLSConfigError``, ``AuthConfigError``) with a
    one-line reason before anything is bound.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        broker: Broker | None = None,
        store: Store | None = None,
        **options: Any,
    ) -> None:
        self.config = dataclasses.replace(config or ServerConfig(), **options)
        self.tls = _tls_context(self.config)
        auth = None if self.config.auth is None else AuthFile.load(self.config.auth)
        self.hub = Hub(self.config, broker=broker, store=store, auth=auth)
        self.broker = self.hub.broker
        #: The bound TCP port of the first TCP listener (once bound), else the configured one.
        self.port = self.config.port
        self._listeners: list[Listening] = []
        self._stop = anyio.Event()

    @property
    def host(self) -> str:
        """The configured host of the TCP shorthand."""
        return self.config.host

    async def bind(self) -> None:
        """Open every listener (and learn :attr:`port`); :meth:`serve` does it if needed.

        Raises :class:`OSError` if an address cannot be bound (then none stays open).
        """
        try:
            for url in self.config.urls():
                listening = await open_listener(url, self.tls)
                self._listeners.append(listening)
                log.info("mqcore listening on %s", listening.name)
                if self.config.auth is None and _beyond_loopback(listening.host):
                    log.warning(
                        "%s is reachable beyond this machine and --auth is not set: "
                        "anyone who reaches it may publish and read every topic",
                        listening.name,
                    )
        except BaseException:
            await self._close_listeners()
            raise
        ports = [x.port for x in self._listeners if x.port is not None]
        if ports:
            self.port = ports[0]

    def reload_auth(self) -> None:
        """Read the auth file again and apply it to new and existing connections (SIGHUP).

        A file that cannot be used is logged and the one in force is kept.
        """
        if self.config.auth is None:
            return
        try:
            auth = AuthFile.load(self.config.auth)
        except ValueError as exc:
            log.error("not reloaded, keeping the users in force: %s", exc)
            return
        self.hub.reload_auth(auth)
        log.info("reloaded %s: %d user(s)", self.config.auth, len(auth.users))

    def shutdown(self) -> None:
        """Ask :meth:`serve` to stop accepting, flush what is owed, and return."""
        self._stop.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown`; report the bound port through ``task_status``.

        With a store, raises :class:`mqcore.StoreError` (after closing every
        connection) if the store fails: nothing more can be acknowledged.
        """
        if not self._listeners:
            await self.bind()
        hub = self.hub
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run, self.shutdown)
                with anyio.CancelScope() as accepting:
                    async with anyio.create_task_group() as listeners:
                        for listening in self._listeners:
                            listeners.start_soon(listening.serve, hub, tg)
                        task_status.started(self.port)
                        await self._stop.wait()
                        accepting.cancel()
                await self._close_listeners()
                await hub.close(SHUTDOWN_GRACE)
                tg.cancel_scope.cancel()
        finally:
            # Cancelled from outside, not stopped by shutdown(): close what is left.
            hub.abort_all()
            with anyio.CancelScope(shield=True):
                await self._close_listeners()
        log.info("stopped")
        if hub.store_error is not None:
            raise hub.store_error

    async def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listening in listeners:
            await listening.aclose()


def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_context is not None:
        return config.tls_context
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("give both --tls-cert and --tls-key")
    return server_context(config.tls_cert, config.tls_key, config.tls_client_ca)


def _beyond_loopback(host: str | None) -> bool:
    """Whether a TCP listener on ``host`` can be reached from other machines."""
    if host is None:
        return False  # a Unix socket
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a name: assume it resolves beyond this machine


async def serve(
    *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED, **options: Any
) -> None:
    """Serve a broker until cancelled: in memory, or durable in ``store=``.

    ``options`` are :class:`TCPServer`'s (``host``, ``port``, ``listen``,
    ``store``, the bounds...). Use ``port = await task_group.start(serve)``
    (with ``port=0`` for a free port) to learn the bound port. For a graceful
    stop, use :class:`TCPServer` and its :meth:`TCPServer.shutdown`.
    """
    await TCPServer(**options).serve(task_status=task_status)

"""``python -m mqcore_tcp``: the standalone server (and ``hash-password`` for ``--auth`` files)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import anyio

from mqcore import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_DELIVER,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPIC_BYTES,
    DEFAULT_MAX_TOPICS,
    StoreError,
    __version__,
)

from ._auth import hash_password
from ._config import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_LINE_TIMEOUT,
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_PORT,
    ServerConfig,
    default_max_connections,
    tcp_url,
)
from ._listen import parse_url
from ._server import TCPServer
from .store import DEFAULT_FSYNC, FSYNC_MODES, STORE_FILE, SQLiteStore

__all__ = ["config_of", "data_dir_problem", "main", "parse_args"]

log = logging.getLogger("mqcore_tcp")


def _integer(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
    return value


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _positive(text: str) -> int:
    return _integer(text, 1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 86400, got {text}")
    return value


def _port(text: str) -> int:
    return _integer(text, 0, 65535)


def _listen_url(text: str) -> str:
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _program() -> str:
    """How the user started us: ``python -m mqcore_tcp`` or the ``mqcore-server`` script."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name in ("__main__.py", "-c"):
        return "python -m mqcore_tcp"
    return name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, accepting the reference's ``PORT [CACHE_SIZE]`` form too."""
    parser = argparse.ArgumentParser(
        prog=_program(),
        description="mqcore: an aiomemq-compatible message broker over TCP "
        "(newline-delimited JSON).",
        epilog="The reference broker's form `python -m mqcore_tcp PORT [CACHE_SIZE]` "
        "is accepted too.",
    )
    parser.add_argument(
        "pos_port", nargs="?", type=_port, metavar="PORT", help="port to listen on (same as --port)"
    )
    parser.add_argument(
        "pos_cache_size",
        nargs="?",
        type=_non_negative,
        metavar="CACHE_SIZE",
        help="messages cached per topic (same as --cache-size)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (mqcore) {__version__}")
    parser.add_argument(
        "--host",
        default=None,
        help="address of the TCP listener (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port to listen on, 0 for any free port (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--listen",
        metavar="URL",
        action="append",
        type=_listen_url,
        default=[],
        help="listen on URL, repeatable, all served by one broker: mqcore://HOST:PORT "
        "(TCP) or unix:///PATH (a Unix socket). With --listen, --host/--port add a TCP "
        "listener only if given",
    )
    parser.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop to run on (default: %(default)s; asyncio is the fastest)",
    )
    parser.add_argument(
        "--cache-size",
        type=_non_negative,
        default=None,
        help="newest messages kept per topic for replay to new subscribers; "
        f"0 disables the cache (default: {DEFAULT_CACHE_SIZE})",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=_positive,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longest input line accepted; longer lines are answered "
        "'Line too long' and discarded (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=_positive,
        default=DEFAULT_MAX_QUEUED_BYTES,
        help="bytes that may wait unsent for one connection before it is "
        "disconnected as too slow (default: %(default)s)",
    )
    parser.add_argument(
        "--max-topics",
        type=_positive,
        default=DEFAULT_MAX_TOPICS,
        help="most topics that may exist; a new topic first evicts the topic that has had "
        "no subscribers for longest, and is answered 'Too many topics' only when every "
        "topic has subscribers (default: %(default)s)",
    )
    parser.add_argument(
        "--max-topic-bytes",
        type=_positive,
        default=DEFAULT_MAX_TOPIC_BYTES,
        help="longest topic name, in UTF-8 bytes; a longer one is answered "
        "'Topic name too long' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-cache-bytes",
        type=_non_negative,
        default=DEFAULT_MAX_CACHE_BYTES,
        help="most bytes cached over all topics; past it the oldest cached messages, "
        "whatever their topic, are evicted (default: %(default)s)",
    )
    exposure = parser.add_argument_group(
        "exposure",
        "TLS, authentication and per-connection limits: what a server reachable beyond "
        "this machine needs (see the README's Security section).",
    )
    exposure.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="certificate chain (PEM) for mqcores:// and https:// listeners",
    )
    exposure.add_argument("--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert")
    exposure.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS); a certificate's "
        "subject CN stands for the user of that name in --auth",
    )
    exposure.add_argument(
        "--auth",
        metavar="FILE",
        help="require clients to authenticate (TOML users file with hashed secrets and "
        "topic permissions; SIGHUP reloads it)",
    )
    exposure.add_argument(
        "--auth-timeout",
        type=_seconds,
        default=DEFAULT_AUTH_TIMEOUT,
        help="close a connection that has not authenticated after this many seconds "
        "(default: %(default)s)",
    )
    exposure.add_argument(
        "--max-connections",
        type=_positive,
        default=None,
        help="connections served at once; past it a new one is answered 'Too many "
        f"connections' and closed (default: {default_max_connections()}, "
        "10000 or less to stay below the open-file limit)",
    )
    exposure.add_argument(
        "--line-timeout",
        type=_seconds,
        default=DEFAULT_LINE_TIMEOUT,
        help="close a connection whose started line does not end within this many "
        "seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--ack-wait",
        type=_seconds,
        default=DEFAULT_ACK_WAIT,
        help="seconds an acknowledging subscriber has to ack a message before it is "
        "redelivered (default: %(default)s)",
    )
    parser.add_argument(
        "--max-deliver",
        type=_positive,
        default=DEFAULT_MAX_DELIVER,
        help="deliveries of a message to acknowledging subscribers before it moves to "
        "topic T.dead (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
        help="logging level (default: %(default)s)",
    )
    parser.add_argument(
        "--cluster",
        metavar="URL",
        default=None,
        help="be a node of the broker kept in this Redis 7+ (redis://[:PASSWORD@]HOST:PORT/DB, "
        "rediss://). asyncio only; every node needs the same --cache-size (else it refuses "
        "to start); ack subscriptions are refused",
    )
    storage = parser.add_argument_group(
        "durability",
        "Without --data-dir the broker keeps everything in memory, like the reference: "
        "a restart forgets every cached message and numbers each topic from 0 again. "
        "With it, each topic's next index and cache are stored in DIR/mqcore.db (SQLite), "
        "and a reply or delivery is written only after what it reports is stored.",
    )
    where = storage.add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep topics' indices and caches in DIR (created if missing) across restarts",
    )
    where.add_argument(
        "--in-memory",
        action="store_true",
        help="keep nothing on disk (the default without --data-dir)",
    )
    storage.add_argument(
        "--fsync",
        choices=FSYNC_MODES,
        default=None,
        help="when stored data is forced to disk, like Redis's appendfsync: "
        "'always' fsyncs every group commit, so an acknowledged message survives power "
        "loss too (slowest); 'batch' writes every commit to the OS before replying and "
        "fsyncs only at checkpoints, so acknowledged messages survive the server being "
        "killed (SIGKILL), but power loss may lose the last few; 'off' never fsyncs: also "
        "survives SIGKILL, but power loss may lose more or damage the file "
        f"(default: {DEFAULT_FSYNC})",
    )
    args = parser.parse_args(argv)
    if args.cluster is not None and args.backend == "trio":
        parser.error("--cluster needs --backend asyncio (the Redis client is asyncio-only)")
    if args.cluster is not None and args.data_dir is not None:
        parser.error("--cluster and --data-dir exclude each other: Redis is the store")
    if args.fsync is not None and args.data_dir is None:
        parser.error("--fsync needs --data-dir")
    args.fsync = args.fsync or DEFAULT_FSYNC
    if args.pos_port is not None and args.port is not None:
        parser.error("give the port either as PORT or as --port, not both")
    if args.pos_cache_size is not None and args.cache_size is not None:
        parser.error("give the cache size either as CACHE_SIZE or as --cache-size, not both")
    port = args.pos_port if args.pos_port is not None else args.port
    tcp = (
        ()
        if args.listen and port is None and args.host is None
        else (tcp_url(args.host or "127.0.0.1", DEFAULT_PORT if port is None else port),)
    )
    args.host = args.host or "127.0.0.1"
    args.port = DEFAULT_PORT if port is None else port
    args.listen = (*tcp, *args.listen)
    args.cache_size = (
        args.pos_cache_size
        if args.pos_cache_size is not None
        else (args.cache_size if args.cache_size is not None else DEFAULT_CACHE_SIZE)
    )
    return args


def config_of(args: argparse.Namespace) -> ServerConfig:
    """The server configuration the parsed command line asks for.

    Each field is the option of the same name; only ``tls_context`` (an object,
    for embedding) has no option. A field without one fails here, not silently.
    """
    names = [f.name for f in fields(ServerConfig) if f.name != "tls_context"]
    return ServerConfig(**{name: getattr(args, name) for name in names})


def data_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be a data directory (None if it can; it is created if missing)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        return f"--data-dir {path}: not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--data-dir {path}: cannot create the directory: {exc.strerror or exc}"
    try:
        # A real write, not os.access: it also sees read-only mounts and runs as root.
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"--data-dir {path}: not writable: {exc.strerror or exc}"
    store_file = directory / STORE_FILE
    if store_file.exists() and not os.access(store_file, os.R_OK | os.W_OK):
        return f"--data-dir {path}: {STORE_FILE} is not readable and writable"
    return None


async def _run(args: argparse.Namespace) -> None:
    store = None
    try:
        if args.data_dir is not None:
            store = SQLiteStore.in_directory(args.data_dir, fsync=args.fsync)
        config = config_of(args)
        broker = None
        if args.cluster is not None:
            from .cluster import node_broker_or_exit  # imports redis: cluster mode only

            broker = await node_broker_or_exit(config)
        try:
            server = TCPServer(config, store=store, broker=broker)
        except ValueError as exc:  # a TLS certificate or key, the auth file: one line
            log.error("%s", exc)
            raise SystemExit(1) from None
        if store is not None:
            log.info("durable: store %s (fsync %s)", store.path, args.fsync)
        await _serve(server)
    except StoreError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        if store is not None:
            store.close()


async def _serve(server: TCPServer) -> None:
    try:
        await server.bind()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.error("cannot listen on %s: %s", _where(server.config.urls()), reason)
        raise SystemExit(1) from None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(
                signal.SIGINT, signal.SIGTERM, signal.SIGHUP
            ) as signals:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        server.reload_auth()
                        continue
                    server.shutdown()
                    return

        tg.start_soon(stop_on_signal)
        await server.serve()
        tg.cancel_scope.cancel()


def _where(urls: Sequence[str]) -> str:
    """Name listeners as the user gave them; ``HOST:PORT`` for TCP ones."""
    return ", ".join(url.split("://", 1)[1] if url.startswith("mqcore://") else url for url in urls)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM (SIGHUP reloads ``--auth``); return the status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] == "hash-password":
        return hash_password(arguments[1:], _program())
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.data_dir is not None:
        problem = data_dir_problem(args.data_dir)
        if problem is not None:
            log.error("%s", problem)
            return 1
    anyio.run(_run, args, backend=args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m mqcore_tcp``: the standalone server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import anyio

from mqcore import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_CACHE_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_TOPICS,
    StoreError,
)

from ._server import DEFAULT_MAX_QUEUED_BYTES, DEFAULT_PORT, TCPServer
from .store import DEFAULT_FSYNC, FSYNC_MODES, SQLiteStore

__all__ = ["main", "parse_args"]

log = logging.getLogger("mqcore_tcp")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line, accepting the reference's ``PORT [CACHE_SIZE]`` form too."""
    parser = argparse.ArgumentParser(
        prog="python -m mqcore_tcp",
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
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port to listen on, 0 for any free port (default: {DEFAULT_PORT})",
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
        help="most topics that may exist; a send or subscribe that would create one more "
        "is answered 'Too many topics' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-cache-bytes",
        type=_non_negative,
        default=DEFAULT_MAX_CACHE_BYTES,
        help="most bytes cached over all topics; past it the oldest cached messages, "
        "whatever their topic, are evicted (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        type=str.upper,
        help="logging level (default: %(default)s)",
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
    if args.fsync is not None and args.data_dir is None:
        parser.error("--fsync needs --data-dir")
    args.fsync = args.fsync or DEFAULT_FSYNC
    if args.pos_port is not None and args.port is not None:
        parser.error("give the port either as PORT or as --port, not both")
    if args.pos_cache_size is not None and args.cache_size is not None:
        parser.error("give the cache size either as CACHE_SIZE or as --cache-size, not both")
    args.port = (
        args.pos_port
        if args.pos_port is not None
        else (args.port if args.port is not None else DEFAULT_PORT)
    )
    args.cache_size = (
        args.pos_cache_size
        if args.pos_cache_size is not None
        else (args.cache_size if args.cache_size is not None else DEFAULT_CACHE_SIZE)
    )
    return args


async def _run(args: argparse.Namespace) -> None:
    store = None
    try:
        if args.data_dir is not None:
            store = SQLiteStore.in_directory(args.data_dir, fsync=args.fsync)
        server = TCPServer(
            host=args.host,
            port=args.port,
            cache_size=args.cache_size,
            max_line_bytes=args.max_line_bytes,
            max_queued_bytes=args.max_queued_bytes,
            max_topics=args.max_topics,
            max_cache_bytes=args.max_cache_bytes,
            store=store,
        )
        if store is not None:
            log.info("durable: store %s (fsync %s)", store.path, args.fsync)
        await _serve(server, args)
    except StoreError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    finally:
        if store is not None:
            store.close()


async def _serve(server: TCPServer, args: argparse.Namespace) -> None:
    try:
        await server.bind()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        raise SystemExit(1) from None
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    server.shutdown()
                    return

        tg.start_soon(stop_on_signal)
        await server.serve()
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    anyio.run(_run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

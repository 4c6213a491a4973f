"""The command-line client: ``mqcore send|subscribe ...`` (also ``python -m mqcore_client``).

Exit status: 0 success; 1 the server refused a command (or another client
error); 2 bad usage; 3 could not connect, or the connection was lost; 4 a
timeout; 130 interrupted (Ctrl-C). Errors are one line on stderr.

Where the server is: ``--url`` (``mqcore://host:port``, ``unix:///path`` or
``host:port``), else ``--host``/``--port`` (``--host`` may be ``host:port``),
else the ``MQCORE_URL`` environment variable, else 127.0.0.1:7000. Several
servers (nodes of one cluster): ``--url`` repeated, or URLs separated by
commas in ``--url`` or ``MQCORE_URL``; the client tries them in order and,
with ``--reconnect``, fails over to the next (see ``_dialer``). These
global options go before or after the command: each is defined on the main
parser and again on every command's parser with no default (``SUPPRESS``),
so a value given after the command overrides one given before, and one
given before survives.

Ctrl-C: the command runs beside a task that receives SIGINT and cancels it,
so an interrupted run unwinds as a cancellation (closing the connection) and
exits 130 without a traceback on every Python version (on 3.10, letting
KeyboardInterrupt through asyncio printed a ``CancelledError`` traceback).
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, get_args

import anyio
import anyio.to_thread
import msgspec

from mqcore import DEFAULT_PREFETCH, Delivery, __version__

from ._client import Client
from ._connect import connect
from ._errors import ConnectionLostError, MQError, MQTimeoutError
from ._protocol import Received
from ._url import DEFAULT_HOST, DEFAULT_PORT, Address, parse_url, parse_urls
from ._web_cli import WEB_COMMANDS, add_web_commands, run_web_command

_T = TypeVar("_T")

__all__ = ["main"]

PROG: Final = "python -m mqcore_client"
ENV_URL: Final = "MQCORE_URL"
#: Where the command line reads a password (with --user) and, by default, a token.
ENV_PASSWORD: Final = "MQCORE_PASSWORD"
ENV_TOKEN: Final = "MQCORE_TOKEN"
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_CONNECTION: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_INTERRUPTED: Final = 130
#: Escapes that keep every printed message on one line (and the escaping reversible).
_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r"})


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes; without ``defaults`` they keep the main parser's."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    where = parser.add_argument_group("server")
    where.add_argument(
        "--url",
        action="append",
        default=default(None),
        help=f"mqcore://HOST:PORT, unix:///PATH or HOST:PORT; several servers: repeat it "
        f"or separate URLs with commas (default: ${ENV_URL}, else {DEFAULT_HOST}:{DEFAULT_PORT})",
    )
    where.add_argument(
        "--host", default=default(None), help="server host, or HOST:PORT (instead of --url)"
    )
    where.add_argument("--port", type=_port, default=default(None), help="server port")
    where.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=default(5.0),
        metavar="SECONDS",
        help="give up connecting after SECONDS (default: 5)",
    )
    secure = parser.add_argument_group("TLS and credentials")
    for flag, metavar, text in [
        (
            "--tls-ca",
            "FILE",
            "CA certificates (PEM) to verify a mqcores:// or wss:// server by "
            "(default: the system's)",
        ),
        ("--tls-cert", "FILE", "client certificate (PEM)"),
        ("--tls-key", "FILE", "its private key (PEM)"),
        (
            "--user",
            "NAME",
            f"user name for the server's --auth; the password comes from "
            f"${ENV_PASSWORD} (never a command-line argument: other users can read those)",
        ),
        (
            "--token-env",
            "NAME",
            f"read a token for the server's --auth from environment "
            f"variable NAME (default: ${ENV_TOKEN}, when set)",
        ),
    ]:
        secure.add_argument(flag, metavar=metavar, default=default(None), help=text)
    where.add_argument(
        "--request-timeout",
        type=_seconds,
        default=default(10.0),
        metavar="SECONDS",
        help="give up (exit 4) when the server does not answer within SECONDS; "
        "0 waits forever (default: 10)",
    )


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Send and receive messages through an mqcore (or aiomemq) server.",
        epilog="Exit status: 0 ok, 1 refused by the server, 2 bad usage, "
        "3 connection failed or lost, 4 timeout, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    send = commands.add_parser(
        "send",
        help="send a message",
        description="Send MESSAGE to TOPIC; with '-', send each non-empty line of stdin.",
    )
    _global_options(send, defaults=False)
    send.add_argument("topic", metavar="TOPIC")
    send.add_argument("message", metavar="MESSAGE", help="the message, or '-' to read stdin")
    send.add_argument(
        "--delivery",
        choices=get_args(Delivery),
        default="all",
        help="all: every subscriber; one: a single subscriber (default: %(default)s)",
    )
    send.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="do not keep the message in the server's cache for later subscribers",
    )
    subscribe = commands.add_parser(
        "subscribe",
        help="print the messages of a topic",
        description="Print TOPIC's messages, one per line, until --count messages or Ctrl-C. "
        "Without --json, a backslash, newline or carriage return in a message is printed "
        "as \\\\, \\n or \\r, so each message stays on one line.",
    )
    _global_options(subscribe, defaults=False)
    subscribe.add_argument("topic", metavar="TOPIC")
    subscribe.add_argument(
        "--last-seen",
        type=int,
        default=None,
        metavar="N",
        help="replay only cached messages with an index above N (default: all cached)",
    )
    subscribe.add_argument(
        "--no-cache", dest="cache", action="store_false", help="do not replay cached messages"
    )
    subscribe.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="exit after N messages. Careful with a topic of 'one' (work queue) messages: "
        "without --ack the server hands this client every queued job at once and forgets "
        "them, so jobs past the N-th are consumed but not printed (lost)",
    )
    subscribe.add_argument(
        "--ack",
        action="store_true",
        help="consume TOPIC's 'one' messages as jobs (mqcore only): ack each one once it is "
        "printed; what is not printed goes back to the server for another consumer. With "
        "--count N, exactly N are taken",
    )
    idle = subscribe.add_mutually_exclusive_group()
    idle.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="exit with status 4 after SECONDS without a message",
    )
    idle.add_argument(
        "--until-idle",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="print what is there, then exit 0 once SECONDS pass without a message",
    )
    subscribe.add_argument(
        "--json",
        action="store_true",
        help="print each message as a JSON object (topic, msg, delivery, index), unescaped",
    )
    subscribe.add_argument(
        "--reconnect",
        action="store_true",
        help="reconnect when the connection drops, resuming after the last message",
    )
    add_web_commands(commands)
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number (1 to 65535): {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # Also NaN.
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _addresses(args: argparse.Namespace) -> list[Address]:
    """Where the servers are (see the module docstring); raise ValueError if they cannot be read."""
    if args.url is not None:
        return [address for url in args.url for address in parse_urls(url)]
    if args.host is not None or args.port is not None:
        base = parse_url(args.host) if args.host is not None else Address()
        if args.port is None or base.path is not None:
            return [base]
        return [Address(host=base.host, port=args.port)]
    env = os.environ.get(ENV_URL, "")
    if env.strip():
        try:
            return parse_urls(env)
        except ValueError as exc:
            raise ValueError(f"${ENV_URL}: {exc}") from None
    return [Address()]


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """connect()'s options from the command line; raise OSError/ValueError for bad TLS files."""
    options: dict[str, Any] = {
        "connect_timeout": args.connect_timeout,
        "timeout": args.request_timeout or None,
    }
    if args.tls_ca is not None or args.tls_cert is not None:
        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert is not None:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        options["ssl"] = context
    if args.user is not None:
        options["user"] = args.user
        options["password"] = os.environ.get(ENV_PASSWORD)
    token = os.environ.get(args.token_env or ENV_TOKEN)
    if token:
        options["token"] = token
    return options


async def _stdin_lines() -> AsyncIterator[str]:
    """Yield stdin's lines as they arrive, without their line ends."""
    tail = b""
    while True:
        # abandon_on_cancel: Ctrl-C must not wait for a line that never comes.
        data = await anyio.to_thread.run_sync(
            os.read, sys.stdin.fileno(), 1 << 16, abandon_on_cancel=True
        )
        if not data:
            break
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield line.rstrip(b"\r").decode()
    if tail:
        yield tail.rstrip(b"\r").decode()


async def _send(args: argparse.Namespace, addresses: list[Address]) -> None:
    async with connect(addresses, **args.connect_options) as client:
        if args.message != "-":
            await client.send(args.topic, args.message, args.delivery, args.cache)
            return
        async for line in _stdin_lines():
            if line.strip():
                await client.publish(args.topic, line, args.delivery, args.cache)
        await client.flush()


async def _subscribe(args: argparse.Namespace, addresses: list[Address]) -> None:
    async with connect(addresses, reconnect=args.reconnect, **args.connect_options) as client:
        if args.ack:
            await _consume(args, client)
            return
        async with client.subscribe(args.topic, args.last_seen, args.cache) as sub:
            received = 0
            while args.count is None or received < args.count:
                message = await _next(args, sub)
                if message is None:
                    return
                _print(args, message)
                received += 1


async def _consume(args: argparse.Namespace, client: Client) -> None:
    """``subscribe --ack``: ack each job once printed; with --count, take exactly that many.

    With --count, one job at a time (prefetch 1), and the consumer is paused
    (prefetch 0) before the last ack, so no job past the N-th is delivered.
    """
    prefetch = DEFAULT_PREFETCH if args.count is None else 1
    async with client.consume(args.topic, prefetch) as jobs:
        received = 0
        while args.count is None or received < args.count:
            job = await _next(args, jobs)
            if job is None:
                return
            _print(args, job.message)
            received += 1
            if received == args.count:
                await jobs.set_prefetch(0)
            await job.ack()


async def _next(args: argparse.Namespace, source: AsyncIterator[_T]) -> _T | None:
    """The next item, or None once --until-idle passes; raise MQTimeoutError after --timeout."""
    idle = args.timeout if args.until_idle is None else args.until_idle
    with anyio.move_on_after(idle) as waited:
        item = await source.__anext__()
    if waited.cancelled_caught:
        if args.until_idle is not None:
            return None
        raise MQTimeoutError(f"no message within {args.timeout} s")
    return item


def _print(args: argparse.Namespace, message: Received) -> None:
    out = sys.stdout
    if args.json:
        out.write(msgspec.json.encode(message).decode())
    else:
        out.write(message.msg.translate(_ESCAPES))
    out.write("\n")
    out.flush()


async def _interruptible(
    command: Callable[[argparse.Namespace, list[Address]], Awaitable[None]],
    args: argparse.Namespace,
    addresses: list[Address],
) -> bool:
    """Run ``command``; return True if SIGINT cancelled it. Errors are raised as they are."""
    interrupted = False
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:

        async def on_sigint() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        # Signal handlers can only be installed from the main thread.
        if threading.current_thread() is threading.main_thread():
            tg.start_soon(on_sigint)
        try:
            await command(args, addresses)
        except Exception as exc:
            error = exc  # Raised outside the task group, which would wrap it.
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``argv``: the arguments, default ``sys.argv[1:]``); return the exit
    status. This is the ``mqcore`` command's entry point."""
    prog = PROG
    if argv is None:
        name = os.path.basename(sys.argv[0]) if sys.argv else ""
        if name and not name.endswith(".py") and name not in ("-c", "-m"):
            prog = name  # Run as an installed command, e.g. `mqcore`.
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.command == "subscribe" and args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    if args.command in WEB_COMMANDS:
        return run_web_command(args)
    try:
        addresses = _addresses(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        args.connect_options = _connect_options(args)
    except OSError as exc:  # ssl.SSLError included: a bad certificate or key file
        return _fail(prog, f"TLS files: {exc}", EXIT_USAGE)
    command = _send if args.command == "send" else _subscribe
    try:
        if anyio.run(_interruptible, command, args, addresses):
            return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MQTimeoutError as exc:
        return _fail(prog, exc, EXIT_TIMEOUT)
    except ConnectionLostError as exc:
        return _fail(prog, exc, EXIT_CONNECTION)
    except MQError as exc:
        return _fail(prog, exc, EXIT_ERROR)
    except UnicodeDecodeError:
        return _fail(prog, "stdin is not UTF-8", EXIT_ERROR)
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(prog: str, error: object, status: int) -> int:
    print(f"{prog}: error: {error}", file=sys.stderr)
    return status

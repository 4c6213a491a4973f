"""``python -m mqcore_client send|subscribe ...``: the command-line client.

Exit status: 0 success; 1 the server refused a command (or another client
error); 2 bad usage; 3 could not connect, or the connection was lost; 4 a
timeout; 130 interrupted (Ctrl-C). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Final, get_args

import anyio
import anyio.to_thread
import msgspec

from mqcore import Delivery

from ._async import DEFAULT_HOST, DEFAULT_PORT, connect
from ._errors import ConnectionLostError, MQError, MQTimeoutError

__all__ = ["main"]

PROG: Final = "python -m mqcore_client"
EXIT_ERROR: Final = 1
EXIT_CONNECTION: Final = 3
EXIT_TIMEOUT: Final = 4
EXIT_INTERRUPTED: Final = 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--host", default=DEFAULT_HOST, help="server address (default: %(default)s)"
    )
    common.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    common.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up connecting after SECONDS (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send and receive messages through an mqcore (or aiomemq) server.",
        epilog="Exit status: 0 ok, 1 refused by the server, 2 bad usage, "
        "3 connection failed or lost, 4 timeout, 130 interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    send = commands.add_parser(
        "send",
        parents=[common],
        help="send a message",
        description="Send MESSAGE to TOPIC; with '-', send each non-empty line of stdin.",
    )
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
        parents=[common],
        help="print the messages of a topic",
        description="Print TOPIC's messages, one per line, until --count messages or Ctrl-C.",
    )
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
        "--count", type=int, default=None, metavar="N", help="exit after N messages"
    )
    subscribe.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit with status 4 after SECONDS without a message",
    )
    subscribe.add_argument(
        "--json",
        action="store_true",
        help="print each message as a JSON object (topic, msg, delivery, index)",
    )
    subscribe.add_argument(
        "--reconnect",
        action="store_true",
        help="reconnect when the connection drops, resuming after the last message",
    )
    return parser


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


async def _send(args: argparse.Namespace) -> None:
    async with connect(args.host, args.port, connect_timeout=args.connect_timeout) as client:
        if args.message != "-":
            await client.send(args.topic, args.message, args.delivery, args.cache)
            return
        async for line in _stdin_lines():
            if line.strip():
                await client.publish(args.topic, line, args.delivery, args.cache)
        await client.flush()


async def _subscribe(args: argparse.Namespace) -> None:
    out = sys.stdout
    async with (
        connect(
            args.host, args.port, connect_timeout=args.connect_timeout, reconnect=args.reconnect
        ) as client,
        client.subscribe(args.topic, args.last_seen, args.cache) as sub,
    ):
        received = 0
        while args.count is None or received < args.count:
            try:
                with anyio.fail_after(args.timeout):
                    message = await sub.__anext__()
            except TimeoutError:
                raise MQTimeoutError(f"no message within {args.timeout} s") from None
            out.write(msgspec.json.encode(message).decode() if args.json else message.msg)
            out.write("\n")
            out.flush()
            received += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "subscribe" and args.count is not None and args.count < 1:
        _parser().error("--count must be at least 1")
    try:
        anyio.run(_send if args.command == "send" else _subscribe, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except MQTimeoutError as exc:
        return _fail(exc, EXIT_TIMEOUT)
    except ConnectionLostError as exc:
        return _fail(exc, EXIT_CONNECTION)
    except MQError as exc:
        return _fail(exc, EXIT_ERROR)
    except UnicodeDecodeError:
        return _fail("stdin is not UTF-8", EXIT_ERROR)
    except BrokenPipeError:
        # The reader of our output went away (`| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _fail(error: object, status: int) -> int:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    return status

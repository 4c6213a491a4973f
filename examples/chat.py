"""Chat between terminals: each line you type reaches everyone in the room.

Start a server (``make serve``), then in two or more terminals:

    python examples/chat.py --name alice
    python examples/chat.py --name bob --url mqcore://127.0.0.1:7000

Each line is one ``all`` message on the topic ``chat.<room>``; the server's
cache gives newcomers the room's recent lines. End with Ctrl-D or Ctrl-C.
The server is ``--url`` (``mqcore://HOST:PORT`` or ``unix:///PATH``), else
the ``MQCORE_URL`` environment variable, else 127.0.0.1:7000.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterable, Callable, Sequence

import anyio
import msgspec

import mqcore_client


class Line(msgspec.Struct):
    """One chat line, carried as JSON in the message's ``msg``."""

    name: str
    text: str


async def chat(
    client: mqcore_client.Client,
    name: str,
    room: str,
    lines: AsyncIterable[str],
    show: Callable[[str], object],
) -> None:
    """Send each of ``lines`` as ``name``; ``show`` everyone else's until ``lines`` ends."""
    topic = f"chat.{room}"
    async with client.subscribe(topic) as sub, anyio.create_task_group() as tg:

        async def listen() -> None:
            async for message in sub:
                line = msgspec.json.decode(message.msg, type=Line)
                if line.name != name:
                    show(f"<{line.name}> {line.text}")

        tg.start_soon(listen)
        async for text in lines:
            if text.strip():
                await client.send(topic, msgspec.json.encode(Line(name, text)).decode())
        tg.cancel_scope.cancel()


async def _stdin() -> AsyncIterable[str]:
    async for line in anyio.wrap_file(sys.stdin):
        yield line.rstrip("\n")


async def _main(args: argparse.Namespace) -> int:
    """Chat from the terminal; return the exit status."""
    try:
        async with mqcore_client.connect(args.url, reconnect=True) as client:
            await chat(client, args.name, args.room, _stdin(), print)
    except mqcore_client.MQError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chat from the command line."""
    parser = argparse.ArgumentParser(description="Chat through an mqcore server.")
    parser.add_argument("--name", required=True, help="your name in the room")
    parser.add_argument("--room", default="lobby", help="room to join (default: %(default)s)")
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "MQCORE_URL", f"mqcore://{mqcore_client.DEFAULT_HOST}:{mqcore_client.DEFAULT_PORT}"
        ),
        help="the server: mqcore://HOST:PORT or unix:///PATH (default: $MQCORE_URL or %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        return anyio.run(_main, args)
    except KeyboardInterrupt:  # Ctrl-C leaves the room, as Ctrl-D does.
        return 0


if __name__ == "__main__":
    sys.exit(main())

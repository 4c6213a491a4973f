"""A consumer you can stop and start again: it continues from the next message.

Start a server (``make serve``) and send some messages
(``python -m mqcore_client send news hello``), then:

    python examples/resumable_consumer.py news --state news.json --count 2
    python examples/resumable_consumer.py news --state news.json   # the rest, then live

After each message it saves the message's index and the server's epoch to the
state file (atomically), and starts again with ``last_seen`` and ``epoch`` from
it: no message twice, none missed while they remain in the server's cache. If
the server's numbering started over (a restart without a data directory), the
epoch no longer matches: the client replays from the start of the cache and
flags the first message ``gap`` - messages may have been lost.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import msgspec

import mqcore_client


class State(msgspec.Struct):
    """Where the consumer stopped: the last index it handled, in which epoch."""

    last_index: int | None = None
    epoch: str | None = None


def load(path: Path) -> State:
    """Read the saved state (an empty one if there is none yet)."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=State)
    except FileNotFoundError:
        return State()


def save(path: Path, state: State) -> None:
    """Write the state atomically: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.encode(state))
    os.replace(tmp, path)


async def consume(
    host: str,
    port: int,
    topic: str,
    state_path: Path,
    count: int | None,
    show: Callable[[mqcore_client.Received], object],
) -> int:
    """Handle messages from where the state file says, saving after each; return how many."""
    state = load(state_path)
    handled = 0
    if count == 0:
        return 0
    async with (
        mqcore_client.connect(host, port, reconnect=True) as client,
        client.subscribe(topic, state.last_index, epoch=state.epoch) as sub,
    ):
        async for message in sub:
            show(message)
            save(state_path, State(message.index, sub.epoch))
            handled += 1
            if handled == count:
                break
    return handled


def _show(message: mqcore_client.Received) -> None:
    if message.gap:
        print("(the server's numbering started over: messages may be missing)", file=sys.stderr)
    print(f"{message.index}: {message.msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the consumer from the command line."""
    parser = argparse.ArgumentParser(description="Consume a topic, resuming where it stopped.")
    parser.add_argument("topic", help="topic to consume")
    parser.add_argument("--state", type=Path, required=True, help="file that keeps the position")
    parser.add_argument("--count", type=int, default=None, help="stop after this many messages")
    parser.add_argument("--host", default=mqcore_client.DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=mqcore_client.DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        anyio.run(consume, args.host, args.port, args.topic, args.state, args.count, _show)
    except KeyboardInterrupt:
        pass
    except mqcore_client.MQError as exc:
        print(f"resumable_consumer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A seeded fuzzer against a real server process (issue 8): garbage never costs a reply,
a connection, another client's messages, or unbounded memory.

Each round writes a few thousand generated lines on one connection, in
random chunks: random bytes, invalid UTF-8, JSON fragments, objects and
arrays nested thousands deep, lines over the limit, wrong types, unknown
commands, and valid commands that cause no delivery to the fuzzing
connection (it never subscribes). It must get exactly one JSON reply per
non-empty line, in order, and stay connected; a bystander subscriber must
receive every message sent to its topic meanwhile; and the server's peak
memory must stay far below what the input would cost if it were kept.
Bounded to a few seconds; the seed is printed on failure.
"""

from __future__ import annotations

import json
import random

import anyio
import pytest

from ..helpers import TIMEOUT, LineClient, server_process
from ..wire import OK, expected_replies, line, send, sub
from .support import peak_rss

pytestmark = pytest.mark.anyio

MAX_LINE = 4096
LINES = 3000


def generated_line(rng: random.Random) -> bytes:
    """One line's content (no newline), from a mix of hostile and valid shapes."""
    kind = rng.randrange(14)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b"")
    if kind == 1:
        return b"\xc3\x28" + b"x" * rng.randrange(10)  # invalid UTF-8
    if kind == 2:
        depth = rng.choice([10, 900, 1_500])  # deeper is over the line limit here
        return rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
    if kind == 3:
        return b"[" * rng.randrange(1, MAX_LINE)  # unterminated
    if kind == 4:
        return b'{"command":"send","topic":"t","msg":"' + b"x" * (MAX_LINE + rng.randrange(99))
    if kind == 5:
        return rng.choice([b"{", b"}", b"[1,", b'"', b"null", b"42", b"{}", b"[]", b"true"])
    if kind == 6:
        return json.dumps(
            {"command": rng.choice(["send", "subscribe", "nope", 7, None]), "topic": 1}
        ).encode()
    if kind == 7:
        return json.dumps({"command": "unsubscribe", "topic": f"u{rng.randrange(5)}"}).encode()
    if kind == 8:
        return json.dumps({"command": "hello"}).encode()
    if kind == 9:
        return json.dumps(
            {"command": rng.choice(["ack", "nack"]), "topic": "t", "index": rng.randrange(-5, 5)}
        ).encode()
    if kind == 10:  # sends the fuzzer itself never receives (it subscribes to nothing)
        topic = rng.choice(["f.a", "f.b", "watch", "t.*", "a" * 2000])
        delivery = rng.choice(["all", "one"])
        return line(send(topic, "x" * rng.randrange(50), delivery)).rstrip(b"\n")
    if kind == 11:
        return " ".join(rng.choice(["\u2003", "\t", " ", "quit!", "é"]) for _ in range(3)).encode()
    if kind == 12:
        return json.dumps({"command": "send", "topic": "t", "msg": "m", "delivery": 1}).encode()
    return bytes([rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(1, 40))])


def chunks_of(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random places (a line may span writes)."""
    cuts = sorted(rng.randrange(len(data)) for _ in range(40))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fuzzed_lines_get_one_reply_each_and_harm_no_one(seed: int) -> None:
    rng = random.Random(seed)
    lines = [generated_line(rng) for _ in range(LINES)]
    data = b"".join(raw + b"\n" for raw in lines)
    expected = expected_replies(data, MAX_LINE)
    # No line is `quit` (which would end the count): one more line, one more reply.
    assert expected_replies(data + b"x\n", MAX_LINE) == expected + 1
    watched = sum(1 for raw in lines if b'"topic": "watch"' in raw and len(raw) <= MAX_LINE)
    async with server_process("--in-memory", "--max-line-bytes", str(MAX_LINE)) as server:
        with anyio.fail_after(TIMEOUT):
            async with (
                await LineClient.open(server.port) as bystander,
                await LineClient.open(server.port) as fuzzer,
            ):
                assert await bystander.request(sub("watch")) == OK
                baseline = peak_rss(server.process.pid)

                async def write() -> None:
                    for chunk in chunks_of(data, rng):
                        await fuzzer.stream.send(chunk)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(write)
                    replies = [await fuzzer.read() for _ in range(expected)]
                # Replies only (a `hello` reply has more keys): no delivery, no garbage.
                assert all("success" in reply and "command" not in reply for reply in replies), seed
                # Still connected, and in step: the next command gets the next reply.
                assert await fuzzer.request({"command": "unsubscribe", "topic": "z"}) == OK
                # The bystander got every message sent to its topic, in order.
                got = [await bystander.read() for _ in range(watched)]
                assert [m["index"] for m in got] == list(range(watched)), seed
                # The input was about 1.5 MB; kept whole, it would cost far more.
                assert peak_rss(server.process.pid) - baseline < 64 << 20, seed

"""Property tests: whatever bytes arrive, in whatever chunks, the broker answers sanely."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mqcore import Broker, Reason

from ..helpers import Harness
from ..wire import expected_replies, line

MAX_LINE = 200

commands = st.sampled_from(
    [
        line({"command": "subscribe", "topic": "t"}),
        line({"command": "subscribe", "topic": "t", "last_seen": 0}),
        line({"command": "unsubscribe", "topic": "t"}),
        line({"command": "send", "topic": "t", "msg": "m", "delivery": "all"}),
        line({"command": "send", "topic": "t", "msg": "m", "delivery": "one"}),
        line({"command": "hello"}),
        b"quit\n",
        b"\r\n",
        b" \t\n",
        b"{\n",
        b"\xc3\n",
        b"[" * 300 + b"\n",
    ]
)
pieces = st.one_of(st.binary(max_size=60), commands, st.text(max_size=20).map(str.encode))


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=30), st.data())
def test_every_output_line_is_json_and_replies_match_lines(
    parts: list[bytes], data: st.DataObject
) -> None:
    payload = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=8)))
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    h = Harness(Broker(max_line_bytes=MAX_LINE, choose=lambda n: 0, epoch="e"))
    c = h.connect()
    for chunk in chunks:
        h.feed(c, chunk)
    out = h.take_bytes(c)
    assert out == b"" or out.endswith(b"\r\n")
    objects = [json.loads(x) for x in out.split(b"\r\n")[:-1]]
    assert all(isinstance(o, dict) for o in objects)
    replies = [o for o in objects if "success" in o]
    assert all(set(o) == {"success"} or o["success"] is False or "epoch" in o for o in replies)
    assert len(replies) == expected_replies(payload, MAX_LINE)
    assert [o for o in objects if "index" in o] == [o for o in objects if "success" not in o]


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"a":' * depth + b"[" * depth  # unterminated: both kinds open


deep_values = st.builds(
    _nested, st.sampled_from([1_000, 5_000, 100_000]), st.sampled_from(["array", "object", "open"])
)
deep_lines = st.one_of(
    deep_values,  # alone
    deep_values.map(
        lambda v: b'{"command":"send","topic":"t","msg":"m","delivery":"all","x":' + v + b"}"
    ),
    deep_values.map(lambda v: b'{"x":' + v + b',"command":"subscribe","topic":"t"}'),
    deep_values.map(lambda v: b'{"command":"send","topic":"t","msg":' + v + b',"delivery":"all"}'),
    deep_values.map(lambda v: b'{"command":"subscribe","topic":' + v + b"}"),
)
plain_lines = st.sampled_from(
    [
        line({"command": "subscribe", "topic": "t"}).rstrip(b"\n"),
        line({"command": "send", "topic": "t", "msg": "m", "delivery": "all"}).rstrip(b"\n"),
        b"",
        b"nope",
    ]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(deep_lines, plain_lines), min_size=1, max_size=6), st.data())
def test_deeply_nested_lines_get_one_json_reply_each_and_never_raise(
    parts: list[bytes], data: st.DataObject
) -> None:
    payload = b"\n".join(parts) + b"\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    h = Harness(Broker())
    c = h.connect()
    for chunk in chunks:
        h.feed(c, chunk)  # must not raise
    objects = [json.loads(x) for x in h.take_bytes(c).split(b"\r\n")[:-1]]
    replies = [o for o in objects if "success" in o]
    assert len(replies) == sum(1 for part in parts if part.strip())
    assert all(o["success"] or o["reason"] in {Reason.NOT_JSON, Reason.MALFORMED} for o in replies)

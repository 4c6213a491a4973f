"""The Broker core, driven synchronously through its public API: no sockets."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from mqcore import (
    Broker,
    CacheAdd,
    CacheRemove,
    CacheTrim,
    ConnectionId,
    DropTopic,
    MemoryStore,
    NextIndex,
    Output,
    Reason,
    TopicState,
)

from ..helpers import Harness, subscribed
from ..wire import OK, delivered, fail, line, send, sub, unsub

#: Valid JSON nested about 1,000 deep: "Could not parse json" where the decoder
#: gives up on it (its limit follows the interpreter's: Python 3.10 and 3.11),
#: "Malformed json message" where it parses (3.12+: valid JSON, not a
#: command). Either way one error reply, and the connection goes on.
DEEP = "deep valid JSON"
DEEP_REPLIES = ([fail(Reason.NOT_JSON)], [fail(Reason.MALFORMED)])


# -- framing and error replies -----------------------------------------------------


def test_success_and_error_bytes_match_the_reference() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, b'{"command": "subscribe", "topic": "t"}\nnope\n')
    assert h.take_bytes(c) == (
        b'{"success": true}\r\n{"success": false, "reason": "Could not parse json"}\r\n'
    )


def test_crlf_whitespace_and_empty_lines() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, b'\n\r\n   \t \r\n  {"command":"subscribe","topic":"t"}  \r\n\n')
    assert h.take(c) == [OK]


def test_unicode_whitespace_is_stripped_like_the_reference() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, '\u00a0{"command":"subscribe","topic":"t"}\u2003\n\u00a0\n'.encode())
    assert h.take(c) == [OK]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", Reason.NOT_UTF8),
        (b'{"command":"send","topic":"t","msg":"\xff","delivery":"all"}', Reason.NOT_UTF8),
        (b'{"comm\xffand":"subscribe","topic":"t"}', Reason.NOT_UTF8),
        (b"hello", Reason.NOT_JSON),
        (b"{", Reason.NOT_JSON),
        (b'{"command":"subscribe","topic":"t"} x', Reason.NOT_JSON),
        (b"[1, 2", Reason.NOT_JSON),
        (b"[]", Reason.MALFORMED),
        (b"42", Reason.MALFORMED),
        (b'"subscribe"', Reason.MALFORMED),
        (b"null", Reason.MALFORMED),
        (b"{}", Reason.MALFORMED),
        (b'{"topic":"t"}', Reason.MALFORMED),
        (b'{"command":"nope","topic":"t"}', Reason.MALFORMED),
        (b'{"command":123,"topic":"t"}', Reason.MALFORMED),
        (b'{"command":"subscribe"}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":123}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","extra":1}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","last_seen":"1"}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","last_seen":true}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","last_seen":1.5}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","last_seen":null}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","cache":1}', Reason.MALFORMED),
        (b'{"command":"subscribe","topic":"t","cache":"yes"}', Reason.MALFORMED),
        (b'{"command":"unsubscribe"}', Reason.MALFORMED),
        (b'{"command":"unsubscribe","topic":"t","cache":true}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":"m"}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","delivery":"all"}', Reason.MALFORMED),
        (b'{"command":"send","msg":"m","delivery":"all"}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":1,"delivery":"all"}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":"m","delivery":"some"}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":"m","delivery":1}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":"m","delivery":"all","cache":0}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":"m","delivery":"all","index":3}', Reason.MALFORMED),
        (b'{"command":"send","topic":"t","msg":{"a":1},"delivery":"all"}', Reason.MALFORMED),
        (b'{"command":"hello"}', Reason.MALFORMED),  # no epoch: a plain server
        (b"[" * 100_000, Reason.NOT_JSON),
        # JSON is parsed whole before it is validated, as the reference does.
        (b'{"command":"subscribe","topic":"t","x":' + b"[" * 100_000, Reason.NOT_JSON),
        (b"[" * 100_000 + b"]" * 100_000, Reason.NOT_JSON),
        # Nesting past the decoder's limit, where the decoder skips a value
        # (an unknown key, a missing tag): it raises RecursionError there.
        (b'{"a":' * 1_000 + b"1" + b"}" * 1_000, DEEP),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, Reason.NOT_JSON),
        (b'{"x":' + b'{"a":' * 1_000 + b"1" + b"}" * 1_001, DEEP),
        (b'{"x":' + b"[" * 1_000 + b"]" * 1_000 + b',"command":"subscribe"}', DEEP),
        (
            b'{"command":"send","topic":"t","msg":"m","delivery":"all","x":'
            + b'{"a":' * 1_000
            + b"1"
            + b"}" * 1_001,
            DEEP,
        ),
        (
            b'{"command":"subscribe","topic":"t","x":' + b"[" * 100 + b"]" * 100 + b"}",
            Reason.MALFORMED,
        ),
    ],
)
def test_error_replies(raw: bytes, reason: str) -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, raw + b"\n")
    if reason is DEEP:
        assert h.take(c) in DEEP_REPLIES
    else:
        assert h.take(c) == [fail(reason)]
    # The connection is still usable afterwards.
    h.send(c, sub("t"))
    assert h.take(c) == [OK]


def test_a_failed_send_takes_no_index() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, b'{"command":"send","topic":"t","msg":"m","delivery":"x"}\n')
    h.send(c, send("t", "m"))
    assert h.broker.next_index("t") == 1


def test_every_line_gets_one_reply_in_order() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, b"x\n" + line(sub("t")) + b"\xff\n" + line({"command": "unsubscribe"}))
    assert h.take(c) == [
        fail(Reason.NOT_JSON),
        OK,
        fail(Reason.NOT_UTF8),
        fail(Reason.MALFORMED),
    ]


# -- line length -----------------------------------------------------------------------


def test_line_too_long_in_one_chunk() -> None:
    h = Harness(Broker(max_line_bytes=64))
    c = h.connect()
    long = line(send("t", "x" * 100))
    h.feed(c, long + line(sub("t")))
    assert h.take(c) == [fail(Reason.LINE_TOO_LONG), OK]
    assert h.broker.next_index("t") == 0


def test_line_at_the_limit_is_accepted() -> None:
    raw = line(send("t", "m"))[:-1]
    h = Harness(Broker(max_line_bytes=len(raw)))
    c = h.connect()
    h.feed(c, raw + b"\n")
    assert h.take(c) == [OK]
    h.feed(c, raw + b" \n")
    assert h.take(c) == [fail(Reason.LINE_TOO_LONG)]


def test_long_line_streamed_is_answered_early_and_discarded() -> None:
    limit = 1000
    h = Harness(Broker(max_line_bytes=limit))
    c = h.connect()
    h.feed(c, b'{"command":"send","topic":"t","msg":"')
    assert h.take(c) == []
    h.feed(c, b"x" * 600)
    h.feed(c, b"x" * 600)
    # Answered as soon as the limit is passed, not when the line ends.
    assert h.take(c) == [fail(Reason.LINE_TOO_LONG)]
    for _ in range(100):  # 10 MB more of the same line: nothing is kept or answered
        h.feed(c, b"x" * 100_000)
    assert h.take(c) == []
    h.feed(c, b'","delivery":"all"}\n' + line(sub("t")))
    assert h.take(c) == [OK]
    assert h.broker.next_index("t") == 0


def test_partial_line_that_ends_too_long() -> None:
    h = Harness(Broker(max_line_bytes=50))
    c = h.connect()
    h.feed(c, b"x" * 40)
    h.feed(c, b"y" * 20 + b"\n" + line(sub("t")))
    assert h.take(c) == [fail(Reason.LINE_TOO_LONG), OK]


# -- quit ------------------------------------------------------------------------------


def test_quit_closes_after_what_is_owed() -> None:
    h = Harness()
    c = h.connect()
    h.feed(c, line(sub("t")) + b"  quit \r\n" + line(sub("u")))
    assert h.take(c) == [OK]
    assert h.closed == [c]
    # Anything after quit is ignored, and the connection no longer subscribes.
    h.feed(c, line(sub("v")))
    assert h.take(c) == []
    assert h.broker.subscribers("t") == []
    assert h.broker.subscribers("u") == []


def test_quit_inside_json_is_a_normal_string() -> None:
    h = Harness()
    c = h.connect()
    h.send(c, sub("quit"))
    assert h.take(c) == [OK]
    assert h.closed == []


# -- subscribe / unsubscribe / send -------------------------------------------------


def test_send_index_counts_every_send_and_delivers_to_all() -> None:
    h = Harness()
    a, b = h.subscribers(2, "t")
    p = h.connect()
    h.send(p, send("t", "m0"), send("t", "m1", cache=False), send("u", "x"), send("t", "m2"))
    assert h.take(p) == [OK] * 4
    expected = [
        delivered("t", "m0", 0),
        delivered("t", "m1", 1, cache=False),
        delivered("t", "m2", 2),
    ]
    assert h.take(a) == expected
    assert h.take(b) == expected
    assert h.broker.next_index("u") == 1


def test_delivery_keeps_the_senders_keys_and_adds_index() -> None:
    h, a, p = subscribed("t")
    h.feed(p, b'{"delivery": "all", "msg": "q\\"\\u00e9", "command": "send", "topic": "t"}\n')
    [msg] = h.take(a)
    assert msg == {"delivery": "all", "msg": 'q"é', "command": "send", "topic": "t", "index": 0}
    assert list(msg) == ["delivery", "msg", "command", "topic", "index"]


def test_one_message_bytes_are_shared_by_all_subscribers() -> None:
    broker = Broker()
    subs = [broker.open_connection() for _ in range(3)]
    p = broker.open_connection()
    for s in subs:
        broker.receive_data(s, line(sub("t")))
    broker.take_output()
    broker.receive_data(p, line(send("t", "m")))
    out = broker.take_output()
    chunks = [out.writes[s][0] for s in subs]
    assert all(chunk is chunks[0] for chunk in chunks)


def test_sender_subscribed_gets_its_copy_before_its_reply() -> None:
    h = Harness()
    c = h.connect()
    h.send(c, sub("t"), send("t", "m"))
    assert h.take(c) == [OK, delivered("t", "m", 0), OK]


def test_subscribe_and_unsubscribe_are_idempotent() -> None:
    h = Harness()
    a, p = h.connect(), h.connect()
    h.send(a, sub("t"), sub("t"), unsub("never"))
    assert h.take(a) == [OK, OK, OK]
    h.send(p, send("t", "m"))
    assert h.take(a) == [delivered("t", "m", 0)]
    h.send(a, unsub("t"), unsub("t"))
    assert h.take(a) == [OK, OK]
    h.send(p, send("t", "m"))
    assert h.take(a) == []


def test_one_reaches_exactly_the_chosen_subscriber() -> None:
    picks: list[int] = []

    def choose(n: int) -> int:
        picks.append(n)
        return 1

    h = Harness(Broker(choose=choose))
    subs = h.subscribers(3, "t")
    p = h.connect()
    h.send(p, send("t", "job", "one"))
    assert picks == [3]
    assert [h.take(s) for s in subs] == [[], [delivered("t", "job", 0, "one")], []]
    # Delivered `one` messages are not cached.
    assert h.broker.cached("t") == []


def test_one_is_spread_over_subscribers_by_default() -> None:
    h = Harness()
    subs = h.subscribers(3, "t")
    p = h.connect()
    h.send(p, *[send("t", f"j{i}", "one") for i in range(30)])
    counts = [len(h.take(s)) for s in subs]
    assert counts == [10, 10, 10]


def test_one_without_subscribers_is_cached_and_consumed_by_the_first_replay() -> None:
    h = Harness()
    p, a, b = h.connect(), h.connect(), h.connect()
    h.send(p, send("t", "j0", "one"), send("t", "a1"), send("t", "j2", "one"))
    h.send(a, sub("t"))
    assert h.take(a) == [
        OK,
        delivered("t", "j0", 0, "one"),
        delivered("t", "a1", 1),
        delivered("t", "j2", 2, "one"),
    ]
    h.send(b, sub("t"))
    assert h.take(b) == [OK, delivered("t", "a1", 1)]


def test_replay_consumes_only_the_one_messages_it_sent() -> None:
    h = Harness()
    p, a, b = h.connect(), h.connect(), h.connect()
    h.send(p, send("t", "j0", "one"), send("t", "j1", "one"))
    h.send(a, sub("t", last_seen=0))
    assert h.take(a) == [OK, delivered("t", "j1", 1, "one")]
    h.send(b, sub("t"))
    assert h.take(b) == [OK, delivered("t", "j0", 0, "one")]


def test_replay_with_last_seen_and_cache_false() -> None:
    h = Harness()
    p, a, b, c = h.connect(), h.connect(), h.connect(), h.connect()
    h.send(p, *[send("t", f"m{i}") for i in range(5)])
    h.send(a, sub("t", last_seen=2))
    assert h.take(a) == [OK, delivered("t", "m3", 3), delivered("t", "m4", 4)]
    h.send(b, sub("t", cache=False))
    assert h.take(b) == [OK]
    h.send(c, sub("t", last_seen=-5, cache=True))
    assert len(h.take(c)) == 6
    h.send(p, send("t", "m5"))
    assert h.take(a) == [delivered("t", "m5", 5)]
    assert h.take(b) == [delivered("t", "m5", 5)]


def test_replay_then_live_without_duplicates() -> None:
    h = Harness()
    p, a = h.connect(), h.connect()
    h.send(p, send("t", "m0"), send("t", "m1"))
    # Subscribe and keep sending in the same chunk: replay comes before live.
    h.feed(a, line(sub("t")) + line(send("t", "m2")))
    assert h.take(a) == [
        OK,
        delivered("t", "m0", 0),
        delivered("t", "m1", 1),
        delivered("t", "m2", 2),
        OK,
    ]
    h.send(a, sub("t"))  # resubscribing replays again, as the reference does
    assert [m.get("index") for m in h.take(a)] == [None, 0, 1, 2]


def test_cache_keeps_the_newest_n_and_respects_cache_false() -> None:
    h = Harness(Broker(cache_size=3))
    p, a = h.connect(), h.connect()
    h.send(p, *[send("t", f"m{i}", cache=(i != 4)) for i in range(6)])
    h.send(a, sub("t"))
    assert [m.get("index") for m in h.take(a)] == [None, 2, 3, 5]


def test_cache_size_zero_disables_the_cache() -> None:
    h = Harness(Broker(cache_size=0))
    p, a = h.connect(), h.connect()
    h.send(p, send("t", "m"), send("t", "j", "one"))
    h.send(a, sub("t"))
    assert h.take(a) == [OK]
    assert h.broker.next_index("t") == 2


def test_closed_connection_leaves_no_subscription() -> None:
    h = Harness(Broker(choose=lambda n: 0))
    a, b, p = h.connect(), h.connect(), h.connect()
    h.send(a, sub("t"), sub("u"))
    h.send(b, sub("t"))
    h.broker.connection_lost(a)
    h.broker.connection_lost(a)  # idempotent
    assert h.broker.subscribers("t") == [b]
    assert h.broker.subscribers("u") == []
    h.take(b)
    h.send(p, send("t", "job", "one"), send("u", "job", "one"))
    assert h.take(b) == [delivered("t", "job", 0, "one")]
    # The `one` message to a topic with no live subscriber waits in the cache.
    assert len(h.broker.cached("u")) == 1
    # Input for a lost connection is ignored.
    h.broker.receive_data(a, line(sub("t")))
    assert not h.broker.take_output()


def test_output_for_a_connection_lost_before_take_output_is_dropped() -> None:
    broker = Broker()
    a, p = broker.open_connection(), broker.open_connection()
    broker.receive_data(a, line(sub("t")))
    broker.receive_data(p, line(send("t", "m")))
    broker.connection_lost(a)
    assert list(broker.take_output().writes) == [p]


# -- hello -------------------------------------------------------------------------------


def test_hello_reports_the_epoch_and_limits() -> None:
    h = Harness(Broker(cache_size=7, max_line_bytes=4096, epoch="e-1"))
    c = h.connect()
    h.send(c, {"command": "hello"})
    [reply] = h.take(c)
    assert reply["success"] is True
    assert reply["server"] == "mqcore"
    assert reply["epoch"] == "e-1"
    assert reply["cache_size"] == 7
    assert reply["max_line_bytes"] == 4096
    assert "epoch" in reply["features"]
    assert reply["durable"] is False
    durable = Harness(Broker(durable=True, epoch="e-2"))
    d = durable.connect()
    durable.send(d, {"command": "hello"})
    assert durable.take(d)[0]["durable"] is True
    h.send(c, {"command": "hello", "x": 1})
    assert h.take(c) == [fail(Reason.MALFORMED)]


# -- durable records ---------------------------------------------------------------------


def test_durable_broker_emits_records_and_restores_exactly() -> None:
    broker = Broker(cache_size=2, durable=True)
    p = broker.open_connection()
    broker.receive_data(p, line(send("t", "m0")) + line(send("t", "m1", "one")))
    broker.receive_data(p, line(send("t", "m2", cache=False)) + line(send("t", "m3")))
    records = broker.take_output().records
    assert [r for r in records if isinstance(r, NextIndex)] == [NextIndex("t", 4)]
    assert CacheTrim("t", 1) in records  # m0 was cached and evicted within the batch: never stored
    assert [r.index for r in records if isinstance(r, CacheAdd)] == [1, 3]
    a = broker.open_connection()
    broker.receive_data(a, line(sub("t")))
    out = broker.take_output()
    assert out.records == []
    assert out.after_write == {a: [CacheRemove("t", 1)]}  # stored once the replay is written

    restored = Broker(cache_size=2)
    restored.restore([TopicState("t", 4, [(3, "all", broker.cached("t")[0])])])
    assert restored.next_index("t") == 4
    assert restored.cached("t") == broker.cached("t")


# -- arbitrary chunking --------------------------------------------------------------------

SCRIPT = (
    line(sub("t"))
    + b"  \r\n"
    + line(send("t", "caf\u00e9 \u2603"))
    + b"\xff\xfe\n"
    + line(send("t", "j", "one", cache=True))
    + b"not json\r\n"
    + line(unsub("t"))
    + b'{"command":"send","topic":"t","msg":"'
    + b"x" * 200
    + b'","delivery":"all"}\n'
    + line(send("t", "after"))
    + b"quit\n"
    + line(sub("t"))
)


def run_chunks(chunks: list[bytes]) -> tuple[bytes, list[int]]:
    h = Harness(Broker(max_line_bytes=150, choose=lambda n: 0))
    c = h.connect()
    for chunk in chunks:
        h.feed(c, chunk)
    return h.take_bytes(c), [int(x) for x in h.closed]


def test_input_split_at_every_position_gives_the_same_output() -> None:
    whole = run_chunks([SCRIPT])
    replies = [json.loads(x) for x in whole[0].split(b"\r\n")[:-1]]
    assert replies == [
        OK,
        delivered("t", "caf\u00e9 \u2603", 0),
        OK,
        fail(Reason.NOT_UTF8),
        delivered("t", "j", 1, "one", cache=True),
        OK,
        fail(Reason.NOT_JSON),
        OK,
        fail(Reason.LINE_TOO_LONG),
        OK,
    ]
    assert whole[1] == [0]
    for i in range(len(SCRIPT) + 1):
        assert run_chunks([SCRIPT[:i], SCRIPT[i:]]) == whole, i
    for i in range(0, len(SCRIPT), 7):
        for j in range(i, len(SCRIPT), 11):
            assert run_chunks([SCRIPT[:i], SCRIPT[i:j], SCRIPT[j:]]) == whole, (i, j)
    assert run_chunks([SCRIPT[i : i + 1] for i in range(len(SCRIPT))]) == whole


def test_broker_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        Broker(cache_size=-1)
    with pytest.raises(ValueError, match="max_line_bytes"):
        Broker(max_line_bytes=0)


def test_random_chooser_is_deterministic_when_seeded() -> None:
    def run(seed: int) -> list[int]:
        h = Harness(Broker(choose=random.Random(seed).randrange))
        subs = h.subscribers(4, "t")
        p = h.connect()
        h.send(p, *[send("t", f"j{i}", "one") for i in range(20)])
        return [i for i, s in enumerate(subs) for _ in h.take(s)]

    assert run(5) == run(5)


# -- memory bounds -----------------------------------------------------------------------


def test_max_topics_refuses_new_topics_only_when_every_topic_has_subscribers() -> None:
    h = Harness(Broker(max_topics=2))
    c = h.connect()
    h.send(c, sub("a"), sub("b"), sub("c"), send("d", "m"), unsub("e"))
    assert h.take(c) == [OK, OK, fail(Reason.TOO_MANY_TOPICS), fail(Reason.TOO_MANY_TOPICS), OK]
    assert h.broker.next_index("d") == 0
    h.send(c, send("a", "m"), send("b", "m"))
    assert h.take(c) == [delivered("a", "m", 0), OK, delivered("b", "m", 0), OK]


def test_max_cache_bytes_evicts_the_oldest_messages_over_all_topics() -> None:
    probe = Harness()
    probe.send(probe.connect(), send("t0", "x" * 100))
    one = len(probe.broker.cached("t0")[0])  # the size of one cached message
    h = Harness(Broker(cache_size=10, max_cache_bytes=5 * one))
    p = h.connect()
    for _ in range(4):
        h.send(p, send("t0", "x" * 100), send("t1", "x" * 100))
    # Eight messages do not fit: only the newest ones, across both topics, stay.
    cached = h.broker.cached("t0") + h.broker.cached("t1")
    assert sum(map(len, cached)) <= 5 * one
    assert [json.loads(m)["index"] for m in h.broker.cached("t0")] == [2, 3]
    assert [json.loads(m)["index"] for m in h.broker.cached("t1")] == [1, 2, 3]


def test_cache_byte_budget_survives_churn_of_consumed_and_evicted_messages() -> None:
    h = Harness(Broker(cache_size=3, max_cache_bytes=10_000, choose=lambda n: 0))
    p, w = h.connect(), h.connect()
    for round_ in range(300):
        # `one` messages cached with no subscriber, then consumed by a replay;
        # `all` messages evicted by the per-topic bound.
        h.send(p, send("jobs", f"j{round_}", "one"), send(f"t{round_ % 7}", "m"))
        h.send(w, sub("jobs"), {"command": "unsubscribe", "topic": "jobs"})
        assert len(h.take(w)) == 3
    assert h.broker.cached("jobs") == []
    assert sum(len(h.broker.cached(f"t{i}")) for i in range(7)) == 21
    # The broker-wide eviction order is compacted rather than keeping every message.
    assert len(h.broker._table.order) < 2 * 21 + 1024 + 1


def test_durable_eviction_for_the_byte_budget_is_recorded_for_untouched_topics() -> None:
    size = len(line(send("a", "x" * 50))) + 20
    broker = Broker(cache_size=10, max_cache_bytes=3 * size, durable=True)
    p = broker.open_connection()
    broker.receive_data(p, line(send("a", "x" * 50)) + line(send("a", "x" * 50)))
    broker.take_output()
    broker.receive_data(p, line(send("b", "x" * 50)) + line(send("b", "x" * 50)))
    records = broker.take_output().records
    # Topic "a" was not sent to in this batch, but lost its oldest message.
    assert CacheRemove("a", 0) in records
    assert not [r for r in records if isinstance(r, CacheTrim)]
    assert [json.loads(m)["index"] for m in broker.cached("a")] == [1]


def live_job(broker: Broker) -> tuple[MemoryStore, ConnectionId, ConnectionId, Output]:
    """A `one` message sent to a subscriber of "jobs", its records stored, its bytes not written."""
    store = MemoryStore("e")
    w, p = broker.open_connection(), broker.open_connection()
    broker.receive_data(w, line(sub("jobs")))
    broker.receive_data(p, line(send("jobs", "job", "one")))
    out = broker.take_output()
    store.apply(out.records)
    return store, w, p, out


def test_byte_budget_eviction_keeps_a_one_message_awaiting_its_write_in_the_store() -> None:
    broker = Broker(cache_size=100, max_cache_bytes=300, durable=True)
    store, w, p, out = live_job(broker)
    # The job went out live, but its bytes are not written yet: its
    # consumption (after_write) is not stored, so a crash must redeliver it.
    assert out.after_write == {w: [CacheRemove("jobs", 0)]}
    broker.receive_data(p, line(send("jobs", "m")) + line(send("other", "y" * 200)))
    store.apply(broker.take_output().records)
    assert broker.cached("jobs") == []  # "m" was evicted for the byte budget
    [jobs] = [t for t in store.load().topics if t.topic == "jobs"]
    assert [index for index, _, _ in jobs.cache] == [0]


def test_evicted_messages_do_not_keep_their_bytes() -> None:
    broker = Broker(cache_size=1, max_cache_bytes=1 << 20)
    p = broker.open_connection()
    for i in range(200):
        broker.receive_data(p, line(send(f"small{i}", "s")))
    for _ in range(500):
        broker.receive_data(p, line(send("big", "x" * 10_000)))
        broker.take_output()
    # Entries that left their cache may wait in the eviction order, but empty.
    held = sum(len(e.data) for e in broker._table.order)
    assert held <= sum(
        len(m) for t in ["big", *(f"small{i}" for i in range(200))] for m in broker.cached(t)
    )


def test_re_encoded_delivery_keeps_exactly_the_senders_keys() -> None:
    h, a, p = subscribed("cache")
    # 20 quotes: re-encoded; the topic is the string "cache", not the key.
    h.feed(p, b'{"command":"send","topic":"cache","msg":"\\"a\\" \\"b\\"","delivery":"all"}\n')
    [msg] = h.take(a)
    assert msg == {
        "command": "send",
        "topic": "cache",
        "msg": '"a" "b"',
        "delivery": "all",
        "index": 0,
    }
    h.feed(
        p,
        b'{"command":"send","topic":"cache","msg":"\\"\\"\\"","delivery":"all",'
        b'"\\u0063ache":false}\n',
    )
    [msg] = h.take(a)
    assert msg["cache"] is False


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_topics"):
        Broker(max_topics=0)
    with pytest.raises(ValueError, match="max_cache_bytes"):
        Broker(max_cache_bytes=-1)


def test_a_repeated_key_is_delivered_once_with_the_value_that_counted() -> None:
    h, a, p = subscribed("b")
    h.feed(p, b'{"command":"send","topic":"a","topic":"b","msg":"m","delivery":"all"}\n')
    assert h.take(p) == [OK]
    raw = h.take_bytes(a)
    assert raw.count(b'"topic"') == 1
    assert json.loads(raw) == delivered("b", "m", 0)
    assert h.broker.next_index("a") == 0


@pytest.mark.parametrize(
    "obj",
    [
        send("t", 'say "hi" and "bye" and "more" quotes'),
        send("t", "x", cache=False),
        send("t", '"', cache=True),
        send("t", "x", "one", cache=True),
    ],
)
def test_delivery_has_the_senders_keys_whether_spliced_or_re_encoded(obj: Any) -> None:
    h, a, p = subscribed("t")
    h.send(p, obj)
    [msg] = h.take(a)
    assert msg == {**obj, "index": 0}


def test_a_forgotten_topic_with_a_one_message_awaiting_its_write_keeps_it_in_the_store() -> None:
    broker = Broker(durable=True)
    store, w, _, out = live_job(broker)
    broker.receive_data(w, line(unsub("jobs")))  # forgotten before the job's bytes are written
    records = broker.take_output().records
    assert not [r for r in records if isinstance(r, DropTopic)]
    store.apply(records)
    [jobs] = store.load().topics
    assert [index for index, _, _ in jobs.cache] == [0]  # a crash now redelivers it
    store.apply(out.after_write[w])
    assert store.load().topics[0].cache == []

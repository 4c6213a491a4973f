"""Connection lifecycle and robustness: end of input, lines that fail, storage, counters."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from mqcore import Broker, ConnectionId, Reason

from ..helpers import Ending, Harness, subscribed
from ..wire import OK, delivered, fail, line, lines, send, sub

# -- end of input ----------------------------------------------------------------------


def test_eof_keeps_what_is_owed_then_closes_and_stops_deliveries() -> None:
    h = Harness()
    c, p = h.connect(), h.connect()
    # A partial line at the end never ended: it is not a command.
    h.feed(c, lines(sub("t"), send("t", "m")) + b'{"command":"subscribe","topic":"u"}')
    h.broker.receive_eof(c)
    h.collect()
    assert h.take(c) == [OK, delivered("t", "m", 0), OK]
    assert h.closed == [c]
    assert h.broker.subscribers("t") == []
    assert h.broker.subscribers("u") == []
    # Nothing more is read from it or delivered to it.
    h.feed(c, line(sub("v")))
    h.send(p, send("t", "m2"))
    assert h.take(c) == []
    assert h.take(p) == [OK]


def test_eof_lists_the_connection_after_writes_of_the_same_output() -> None:
    broker = Broker()
    c = broker.open_connection()
    broker.receive_data(c, line(sub("t")))
    broker.receive_eof(c)
    out = broker.take_output()
    assert out.writes == {c: [b'{"success": true}\r\n']}
    assert out.close == [c]


@pytest.mark.parametrize(
    "events",
    [
        ["eof", "eof"],
        ["eof", "lost", "eof", "lost"],
        ["quit", "eof"],
        ["lost", "eof"],
        ["eof-mid-long-line", "eof"],
    ],
)
def test_eof_is_idempotent_and_mixes_with_quit_and_loss(
    events: list[Ending | Literal["eof-mid-long-line"]],
) -> None:
    h = Harness(Broker(max_line_bytes=64))
    c = h.connect()
    for event in events:
        if event == "eof-mid-long-line":
            h.feed(c, b"x" * 100)  # answered "Line too long" at once, rest discarded
            h.end(c, "eof")
        else:
            h.end(c, event)
    assert h.closed.count(c) <= 1
    assert h.closed == [] or h.closed == [c]
    assert not h.broker.take_output()


def test_eof_of_an_unknown_connection_is_ignored() -> None:
    broker = Broker()
    broker.receive_eof(broker.open_connection())
    broker.receive_eof(ConnectionId(999))
    assert len(broker.take_output().close) == 1


# -- no line can break a connection ------------------------------------------------------


def test_a_deeply_nested_line_gets_its_reply_and_the_read_goes_on() -> None:
    h, s, c = subscribed("t")
    nested = b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"\n"
    # The send before it in the same read is acknowledged, the one after is carried out.
    h.feed(c, line(send("t", "before")) + nested + line(send("t", "after")))
    # Past the decoder's limit on 3.10/3.11; parsed (valid JSON, not a command) on 3.12+.
    assert h.take(c) in ([OK, fail(Reason.NOT_JSON), OK], [OK, fail(Reason.MALFORMED), OK])
    assert h.take(s) == [delivered("t", "before", 0), delivered("t", "after", 1)]


def test_an_exception_while_handling_a_line_becomes_its_reply() -> None:
    def choose(n: int) -> int:
        raise ZeroDivisionError  # a faulty chooser the embedder passed in

    h, _worker, c = subscribed("jobs", broker=Broker(choose=choose))
    h.send(c, send("jobs", "j", "one"), sub("t"), send("t", "m"))
    assert h.take(c) == [fail(Reason.INTERNAL_ERROR), OK, delivered("t", "m", 0), OK]
    assert h.broker.stats().failures == {Reason.INTERNAL_ERROR: 1}


# -- storage unavailable ---------------------------------------------------------------------


def test_storage_unavailable_refuses_sends_and_changes_nothing() -> None:
    h = Harness(Broker(durable=True, epoch="e"))
    s, p = h.connect(), h.connect()
    h.send(p, send("t", "m0"))
    assert h.take(p) == [OK]
    h.broker.set_storage_available(False)
    h.send(s, sub("t"), {"command": "hello"})
    replies = h.take(s)
    assert replies[:2] == [OK, delivered("t", "m0", 0)]  # replays keep working
    assert replies[2]["storage"] == "unavailable"
    h.broker.receive_data(p, lines(send("t", "m1"), send("new", "m", "one")))
    out = h.broker.take_output()
    assert out.records == []
    assert out.after_write == {}
    assert [json.loads(x) for x in out.writes[p]] == [fail(Reason.STORAGE_UNAVAILABLE)] * 2
    assert s not in out.writes
    assert h.broker.next_index("t") == 1
    assert h.broker.subscribers("new") == []
    assert h.broker.stats().topics == 1
    h.broker.set_storage_available(True)
    h.send(p, send("t", "m1"))
    assert h.take(p) == [OK]
    assert h.take(s) == [delivered("t", "m1", 1)]
    h.send(s, {"command": "hello"})
    assert h.take(s)[0]["storage"] == "ok"


def test_storage_state_is_for_durable_brokers_and_absent_from_a_plain_hello() -> None:
    with pytest.raises(ValueError, match="durable"):
        Broker().set_storage_available(False)
    h = Harness(Broker(epoch="e"))
    c = h.connect()
    h.send(c, {"command": "hello"})
    assert "storage" not in h.take(c)[0]


# -- counters ----------------------------------------------------------------------------------


def test_stats_count_sends_deliveries_failures_and_sizes() -> None:
    h = Harness(Broker(max_line_bytes=100))
    a, b, p = h.connect(), h.connect(), h.connect()
    h.send(a, sub("t"))
    h.send(b, sub("t"))
    h.send(p, send("t", "m0"), send("t", "m1"), send("u", "j", "one"))
    h.send(b, sub("u"))  # replays the `one` message: consumed
    h.feed(p, b"nope\n\xff\n" + b"x" * 200 + b"\n")
    stats = h.broker.stats()
    assert stats.lines == 1 + 1 + 3 + 1 + 3
    assert stats.sends == 3
    assert stats.chunks == 2 + 3 + 2 * 2 + 2 + 3  # replies, deliveries, the replay, failures
    assert stats.failures == {Reason.NOT_JSON: 1, Reason.NOT_UTF8: 1, Reason.LINE_TOO_LONG: 1}
    assert stats.connections == 3
    assert stats.topics == 2
    assert stats.idle_topics == 0
    assert stats.cached_messages == 2
    assert stats.cached_bytes == sum(map(len, h.broker.cached("t")))
    assert stats.index_floor == 0

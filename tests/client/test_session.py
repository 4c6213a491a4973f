"""The client's sans-I/O session against the sans-I/O broker: no sockets, no event loop.

In the style of h11's ``ConnectionPair``: :class:`Pair` moves bytes between
a :class:`Session` and a real :class:`mqcore.Broker` until neither has more
to say, so every rule (reply matching, duplicates, resume, epochs, fences,
queue bounds) is tested in a few microseconds, deterministically.
"""

from __future__ import annotations

from typing import Literal

import pytest

from mqcore import SUCCESS, Broker, ConnectionId, Reason, Send
from mqcore_client import (
    ConnectionLostError,
    ProtocolError,
    Received,
    ServerError,
    SubscriptionOverflowError,
)
from mqcore_client._protocol import OK, LineReader, classify
from mqcore_client._session import Session
from mqcore_client._subscription_state import SubscriptionState, SubState

from ..wire import line, send


class Pair:
    """A client :class:`Session` wired to a :class:`Broker`, plus a producer connection."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker if broker is not None else Broker(epoch="epoch-1")
        self.session = Session()
        self.producer = self.broker.open_connection()
        self.cid = self.connect()

    def connect(self, *, first: bool = True) -> ConnectionId:
        """Open a connection, do the ``hello`` handshake, go online."""
        self.cid = self.broker.open_connection()
        hello = self.session.start_connection()
        self.pump()
        assert hello.done
        self.session.establish(self.session.hello_reply(hello), first=first)
        self.pump()
        return self.cid

    def drop(self) -> None:
        """The connection breaks."""
        self.broker.connection_lost(self.cid)
        self.session.connection_lost(ConnectionLostError("dropped"))

    def restart(self, epoch: str) -> None:
        """The server restarts with new numbering; the connection breaks."""
        self.drop()
        self.broker = Broker(epoch=epoch)
        self.producer = self.broker.open_connection()

    def produce(self, topic: str, *msgs: str, cache: bool = True) -> None:
        """Another client sends ``msgs`` to ``topic``."""
        for msg in msgs:
            self.broker.receive_data(self.producer, line(send(topic, msg, cache=cache)))
        self.pump()

    def pump(self) -> None:
        """Move bytes both ways until both sides are quiet."""
        while True:
            data = bytes(self.session.out)
            self.session.out.clear()
            if data:
                self.broker.receive_data(self.cid, data)
            chunks = self.broker.take_output().writes.get(self.cid, [])
            for chunk in chunks:
                self.session.receive_data(chunk)
            if not data and not chunks:
                return

    def subscribe(self, topic: str, *args: object, **options: object) -> SubscriptionState:
        state = SubscriptionState(topic, *args, **options)  # type: ignore[arg-type]
        self.session.subscribe(state)
        self.pump()
        return state


def taken(
    state: SubscriptionState, label: Literal["msg", "topic"] = "msg"
) -> list[tuple[str, int, bool]]:
    """Everything queued in ``state``: (msg, index, gap) each, or (topic, ...) if ``label`` says."""
    out = []
    while (message := state.take()) is not None:
        out.append((message.topic if label == "topic" else message.msg, message.index, message.gap))
    return out


# -- replies and lines ---------------------------------------------------------------


def test_replies_match_their_commands_in_order() -> None:
    pair = Pair(Broker(epoch="e", max_line_bytes=100))
    session = pair.session
    first = session.request(Send("t", "ok", "all"))
    session.enqueue(Send("t", "x" * 200, "all"), None)  # A publish, refused.
    bad = session.request(Send("t", "x", "bogus"))  # type: ignore[arg-type]
    last = session.request(Send("t", "ok again", "all"))
    pair.pump()
    assert first.done
    assert first.error is None
    assert isinstance(bad.error, ServerError)
    assert bad.error.reason == Reason.MALFORMED
    assert last.done
    assert last.error is None
    assert session.take_publish_failures() == (0, 1, Reason.LINE_TOO_LONG)
    assert session.completed == session.enqueued == 5  # With hello.


def test_a_lost_connection_fails_what_it_owed() -> None:
    pair = Pair()
    waiting = pair.session.request(Send("t", "m", "all"))
    pair.session.enqueue(Send("t", "m", "all"), None)
    pair.drop()  # Before any reply.
    assert isinstance(waiting.error, ConnectionLostError)
    assert pair.session.take_publish_failures()[0] == 1
    assert pair.session.completed == pair.session.enqueued


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SUCCESS.rstrip(b"\n"), OK),
        (b'{"success":true}', OK),
        (b' {"success" : true} ', OK),
        (b"", None),
        (b"  \r", None),
        (b'{"success": false, "reason": "Too many topics"}', ServerError),
        (b'{"command":"send","topic":"t","msg":"m","delivery":"all","index":3}', Received),
        (b"<html>", ProtocolError),
        (b'{"success": false, "reason": "\xff"}', ProtocolError),
        (b"[" * 100_000, ProtocolError),
    ],
    ids=["ok", "ok-tight", "ok-spaced", "empty", "blank", "failure", "delivery", "garbage",
         "bad-utf8", "too-deep"],
)
def test_every_line_is_a_reply_a_delivery_nothing_or_a_protocol_error(
    text: bytes, expected: object
) -> None:
    if expected is ProtocolError:
        with pytest.raises(ProtocolError, match="unexpected line"):
            classify(text)
        return
    outcome = classify(text)
    if expected is ServerError:
        assert outcome is not None
        assert not isinstance(outcome, Received)
        assert not outcome.success
    elif expected is Received:
        assert outcome == Received("t", "m", "all", 3)
    else:
        assert outcome == expected


def test_a_reply_with_no_command_is_a_protocol_error_and_is_counted() -> None:
    pair = Pair()
    with pytest.raises(ProtocolError, match="no command to answer"):
        pair.session.receive_data(SUCCESS)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_lines_are_framed_the_same_whatever_the_chunking(chunk: int) -> None:
    data = b"a\r\nbb\n\nccc" + b"x" * 5000 + b"\nd"
    reader = LineReader(max_line=10_000)
    lines = []
    for start in range(0, len(data), chunk):
        lines.extend(reader.feed(data[start : start + chunk]))
    assert lines == [b"a\r", b"bb", b"", b"ccc" + b"x" * 5000]
    assert reader.feed(b"\n") == [b"d"]


@pytest.mark.parametrize("chunk", [1000, 1 << 20])
def test_a_line_longer_than_the_bound_is_a_protocol_error(chunk: int) -> None:
    reader = LineReader(max_line=4096)
    data = b"y" * 10_000

    def feed_all() -> None:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])

    with pytest.raises(ProtocolError, match="longer than"):
        feed_all()


# -- subscriptions ---------------------------------------------------------------------


def test_a_subscription_goes_from_new_to_active_to_closed_and_unsubscribes() -> None:
    pair = Pair()
    state = SubscriptionState("t")
    seen = [state.state]
    pair.session.subscribe(state)
    seen.append(state.state)
    pair.pump()
    seen.append(state.state)
    assert seen == [SubState.NEW, SubState.SUBSCRIBING, SubState.ACTIVE]
    assert state.answered
    assert state.epoch == "epoch-1"
    pair.session.remove(state)
    assert state.state is SubState.CLOSED
    assert b'"unsubscribe"' in pair.session.out
    pair.pump()
    pair.produce("t", "after")
    assert taken(state) == []


def test_a_second_subscription_replay_does_not_duplicate_the_first() -> None:
    pair = Pair()
    first = pair.subscribe("t")
    pair.produce("t", "a", "b")
    second = pair.subscribe("t")  # Its replay of a, b reaches `first` too.
    third = pair.subscribe("t", 0)
    pair.produce("t", "c")
    assert taken(first) == [("a", 0, False), ("b", 1, False), ("c", 2, False)]
    assert taken(second) == [("a", 0, False), ("b", 1, False), ("c", 2, False)]
    assert taken(third) == [("b", 1, False), ("c", 2, False)]


def test_a_cache_false_subscription_is_fenced_from_another_replay() -> None:
    pair = Pair()
    pair.produce("t", "old0", "old1")
    fresh = pair.subscribe("t", None, False)
    replayed = pair.subscribe("t")
    assert fresh.state is SubState.ACTIVE  # The fence is over.
    pair.produce("t", "live")
    assert taken(fresh) == [("live", 2, False)]
    assert [m for m, _, _ in taken(replayed)] == ["old0", "old1", "live"]


def test_resume_after_a_drop_has_no_gap_and_no_duplicate() -> None:
    pair = Pair()
    state = pair.subscribe("t")
    pair.produce("t", "0", "1", "2")
    pair.drop()
    offline = state.state
    pair.produce("t", "3", "4")  # Missed while away: only a replay brings them.
    pair.connect(first=False)  # Resubscribes with last_seen=2.
    assert (offline, state.state) == (SubState.OFFLINE, SubState.ACTIVE)
    pair.produce("t", "5")
    assert taken(state) == [(str(i), i, False) for i in range(6)]


def test_a_new_epoch_replays_from_the_start_and_flags_the_gap() -> None:
    pair = Pair()
    state = pair.subscribe("t")
    pair.produce("t", "old0", "old1", "old2")
    assert taken(state) == [("old0", 0, False), ("old1", 1, False), ("old2", 2, False)]
    pair.restart("epoch-2")
    pair.produce("t", "new0")  # Index 0 again: last_seen=2 would skip it.
    pair.connect(first=False)
    pair.produce("t", "new1")
    assert taken(state) == [("new0", 0, True), ("new1", 1, False)]
    assert state.epoch == "epoch-2"


def test_a_saved_epoch_that_no_longer_matches_replays_from_the_start() -> None:
    pair = Pair()
    pair.produce("t", "a", "b")
    state = pair.subscribe("t", 0, epoch="an old epoch")
    assert taken(state) == [("a", 0, True), ("b", 1, False)]


def test_a_subscription_without_a_position_is_told_of_the_gap() -> None:
    pair = Pair()
    state = pair.subscribe("t", None, False)
    pair.drop()
    pair.produce("t", "lost")
    pair.connect(first=False)
    pair.produce("t", "back")
    assert taken(state) == [("back", 1, True)]


@pytest.mark.parametrize(
    ("bounds", "kept"),
    [
        ({"max_queued": 2}, 2),
        ({"max_queued_bytes": 2500}, 2),  # Three 1000-byte messages are over 2500 bytes.
        ({"max_queued_bytes": 10}, 1),  # One message over the bound still gets through.
    ],
    ids=["count", "bytes", "one-message-over-the-bound"],
)
def test_a_full_queue_ends_the_subscription_with_its_position(
    bounds: dict[str, int], kept: int
) -> None:
    pair = Pair()
    state = pair.subscribe("t", **bounds)
    pair.produce("t", *["x" * 1000] * 5)
    assert state.state is SubState.CLOSED
    assert isinstance(state.error, SubscriptionOverflowError)
    assert state.error.last_index == kept - 1
    assert state.error.epoch == "epoch-1"
    assert [i for _, i, _ in taken(state)] == list(range(kept))
    assert state.queued_bytes == 0
    assert "t" not in pair.session.subs  # And it unsubscribed.


def test_taking_frees_room_in_the_byte_bound() -> None:
    pair = Pair()
    state = pair.subscribe("t", max_queued_bytes=2500)
    for i in range(10):
        pair.produce("t", str(i) * 1000)
        assert [m[0] for m, _, _ in taken(state)] == [str(i)]
    assert state.state is SubState.ACTIVE

"""Pattern subscriptions in the client: routing, and gapless resume per topic.

The session against the sans-I/O broker first (every rule, deterministically),
then a real client across a SIGKILL of a durable server.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import mqcore_client
from mqcore_client._pattern_state import PatternSubscriptionState
from mqcore_client._subscription_state import SubscriptionState, SubState

from ..helpers import TIMEOUT
from ..server.test_restart_resume import servers
from .test_session import Pair
from .test_session import taken as session_taken


def pattern(pair: Pair, name: str, cache: bool = True) -> PatternSubscriptionState:
    state = PatternSubscriptionState(name, cache)
    pair.session.subscribe(state)
    pair.pump()
    return state


def taken(state: SubscriptionState) -> list[tuple[str, int, bool]]:
    """(topic, index, gap) of everything queued."""
    return session_taken(state, "topic")


def test_a_pattern_gets_every_matching_topic_and_exact_subscribers_still_theirs() -> None:
    pair = Pair()
    star = pattern(pair, "s.*")
    exact = pair.subscribe("s.a")
    pair.produce("s.a", "1")
    pair.produce("s.b", "2")
    pair.produce("t.a", "3")
    assert taken(star) == [("s.a", 0, False), ("s.b", 0, False)]
    assert taken(exact) == [("s.a", 0, False)]


def test_resume_after_a_drop_is_gapless_and_without_duplicates_per_topic() -> None:
    pair = Pair()
    star = pattern(pair, "s.*")
    pair.produce("s.a", "a0", "a1")
    pair.produce("s.b", "b0")
    pair.drop()
    pair.produce("s.a", "a2")  # missed while away: the replay brings them
    pair.produce("s.c", "c0")
    pair.connect(first=False)
    assert star.state is SubState.ACTIVE
    pair.produce("s.b", "b1")
    got = taken(star)
    expected = {"s.a": [0, 1, 2], "s.b": [0, 1], "s.c": [0]}
    assert sorted(got) == sorted((t, i, False) for t, ids in expected.items() for i in ids)
    for topic in ("s.a", "s.b", "s.c"):
        indices = [i for t, i, _ in got if t == topic]
        assert indices == sorted(set(indices)), topic  # per topic: in order, once


def test_a_second_pattern_replay_does_not_duplicate_into_the_first() -> None:
    pair = Pair()
    pair.produce("s.a", "a0")
    first = pattern(pair, "s.*")
    second = pattern(pair, "s.>")  # its replay reaches `first` too: dropped there
    assert taken(first) == [("s.a", 0, False)]
    assert taken(second) == [("s.a", 0, False)]


def test_a_new_epoch_forgets_positions_and_flags_the_gap() -> None:
    pair = Pair()
    star = pattern(pair, "s.*")
    pair.produce("s.a", "0", "1", "2")
    assert [i for _, i, _ in taken(star)] == [0, 1, 2]
    pair.restart("epoch-2")
    pair.produce("s.a", "new0")  # index 0 again: the old position would drop it
    pair.connect(first=False)
    assert taken(star) == [("s.a", 0, True)]


def test_removing_a_pattern_stops_its_routing_and_unsubscribes_it() -> None:
    pair = Pair()
    star = pattern(pair, "s.*")
    keep = pattern(pair, "s.>")
    pair.session.remove(star)
    pair.pump()
    pair.produce("s.a", "x")
    assert taken(star) == []
    assert taken(keep) == [("s.a", 0, False)]
    pair.session.remove(keep)
    pair.pump()
    assert pair.broker.stats().connections == 2
    assert pair.broker._table.patterns.count == 0


@pytest.mark.anyio
async def test_a_pattern_consumer_resumes_per_topic_across_a_durable_sigkill(
    data_dir: Path,
) -> None:
    args = ("--data-dir", str(data_dir))
    seen: list[mqcore_client.Received] = []

    async def produce(port: int, first: int, count: int) -> None:
        async with mqcore_client.connect("127.0.0.1", port) as producer:
            for n in range(first, first + count):
                await producer.send(f"jobs.{n % 3}", f"m{n}")

    async def read_until(sub: mqcore_client.Subscription, msg: str) -> None:
        async for message in sub:
            seen.append(message)
            if message.msg == msg:
                return

    with anyio.fail_after(TIMEOUT):
        async with servers() as s:
            port = await s.start(0, *args)
            async with (
                mqcore_client.connect(
                    "127.0.0.1", port, reconnect=True, reconnect_delay=0.02, offline_timeout=None
                ) as client,
                client.subscribe("jobs.*") as sub,
            ):
                with pytest.raises(ValueError, match="last_seen"):
                    client.subscribe("jobs.*", last_seen=3)
                await produce(port, 0, 30)
                await read_until(sub, "m29")
                await produce(port, 30, 15)
                await s.kill()
                await s.start(port, *args)
                await produce(port, 45, 15)
                await read_until(sub, "m59")
    # Every message exactly once; per topic, indices in order; no gap flagged.
    assert sorted(m.msg for m in seen) == sorted(f"m{n}" for n in range(60))
    for topic in ("jobs.0", "jobs.1", "jobs.2"):
        assert [m.index for m in seen if m.topic == topic] == list(range(20)), topic
    assert not any(m.gap for m in seen)

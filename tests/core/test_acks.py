"""Acknowledged delivery in the core, without sockets: each rule of mqcore._acks, time by hand."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from mqcore import Broker, ConnectionId, MemoryStore, Reason

from ..helpers import Ending, Harness
from ..wire import OK, delivered, fail, send, sub, unsub


def ack(topic: str, index: int) -> dict[str, Any]:
    return {"command": "ack", "topic": topic, "index": index}


def nack(topic: str, index: int, **extra: Any) -> dict[str, Any]:
    return {"command": "nack", "topic": topic, "index": index, **extra}


def job(topic: str, msg: str, index: int, attempt: int) -> Any:
    return {**delivered(topic, msg, index, "one"), "attempt": attempt}


def harness(**options: Any) -> Harness:
    return Harness(Broker(**options))


def holding_a_job(now: float, **options: Any) -> tuple[Harness, ConnectionId, ConnectionId]:
    """A harness with its clock at ``now``, a worker (prefetch 1) holding the job
    ``j`` of ``jobs``, and the connection that sent it."""
    h = harness(**options)
    worker, producer = h.connect(), h.connect()
    h.broker.advance(now)
    h.send(worker, sub("jobs", ack=True, prefetch=1))
    h.send(producer, send("jobs", "j", "one"))
    h.take(worker)
    return h, worker, producer


def due_at(h: Harness, cid: ConnectionId, deadline: float) -> list[Any]:
    """What ``cid`` is sent when the clock reaches ``deadline``, the broker's next
    one, having been sent nothing a moment before."""
    assert h.broker.next_deadline() == deadline
    h.advance(deadline - 0.1)
    assert h.take(cid) == []
    h.advance(deadline)
    return h.take(cid)


def test_a_job_carries_its_attempt_and_is_pending_until_acked() -> None:
    h = harness()
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True))
    h.send(producer, send("jobs", "j0", "one"))
    assert h.take(producer) == [OK]
    assert h.take(worker) == [OK, job("jobs", "j0", 0, 1)]
    assert h.broker.pending(worker, "jobs") == [0]
    h.send(worker, ack("jobs", 0))
    assert h.take(worker) == [OK]
    assert h.broker.pending(worker, "jobs") == []


def test_bad_acks_get_clear_reasons_and_change_nothing() -> None:
    h = harness()
    worker, other = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True), send("jobs", "j0", "one"))
    h.take(worker)
    h.send(
        worker,
        ack("jobs", 7),  # unknown index
        ack("other", 0),  # wrong topic
        nack("jobs", 0, delay=-1),  # bad delay
        nack("jobs", 0, delay=1e9),
    )
    assert h.take(worker) == [
        fail(Reason.NOT_PENDING),
        fail(Reason.NOT_ACKING),
        fail(Reason.BAD_DELAY),
        fail(Reason.BAD_DELAY),
    ]
    h.send(other, sub("jobs", ack=True), ack("jobs", 0))  # another's job
    assert h.take(other) == [OK, fail(Reason.NOT_PENDING)]
    h.send(worker, ack("jobs", 0), ack("jobs", 0))  # double ack
    assert h.take(worker) == [OK, fail(Reason.NOT_PENDING)]
    h.send(
        worker,
        {"command": "ack", "topic": "jobs"},
        {"command": "ack", "topic": "jobs", "index": "0"},
    )
    assert h.take(worker) == [fail(Reason.MALFORMED)] * 2


def test_bad_subscriptions_are_refused() -> None:
    h = harness(max_topic_bytes=10)
    c = h.connect()
    h.send(
        c,
        sub("jobs", ack=True, prefetch=-1),
        sub("jobs", ack=True, prefetch=10_001),
        sub("jobs.*", ack=True),
        sub("0123456", ack=True),  # 0123456.dead is over 10 bytes
    )
    assert h.take(c) == [
        fail(Reason.BAD_PREFETCH),
        fail(Reason.BAD_PREFETCH),
        fail(Reason.ACK_PATTERN),
        fail(Reason.TOPIC_TOO_LONG),
    ]
    assert h.broker.subscribers("jobs") == []


def test_plain_subscribers_see_no_change() -> None:
    """Reference clients: no attempt key, and `one` messages behave as before without consumers."""
    h = harness()
    plain, producer = h.connect(), h.connect()
    h.send(plain, sub("jobs"))
    h.send(producer, send("jobs", "a", "one"), send("jobs", "b", "all"))
    assert h.take(plain) == [OK, delivered("jobs", "a", 0, "one"), delivered("jobs", "b", 1)]
    h.send(producer, unsub("jobs"))
    h.send(plain, unsub("jobs"))
    h.send(producer, send("jobs", "c", "one"))
    assert h.broker.cached("jobs") != []  # cached, as today
    h.take(plain)
    h.send(plain, sub("jobs"))
    assert h.take(plain)[1:] == [delivered("jobs", "b", 1), delivered("jobs", "c", 2, "one")]
    assert [b for b in h.broker.cached("jobs") if b'"one"' in b] == []  # the replay consumed it


def test_all_messages_need_no_ack() -> None:
    h = harness()
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True))
    h.send(producer, send("jobs", "news", "all"))
    assert h.take(worker) == [OK, delivered("jobs", "news", 0)]
    assert h.broker.pending(worker, "jobs") == []


def test_one_messages_go_to_consumers_only_while_there_are_some() -> None:
    h = harness()
    plain, worker, producer = h.connect(), h.connect(), h.connect()
    h.send(plain, sub("jobs"))
    h.send(worker, sub("jobs", ack=True))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(3)])
    assert h.take(plain) == [OK]
    assert h.take(worker) == [OK] + [job("jobs", str(n), n, 1) for n in range(3)]


def test_prefetch_bounds_what_is_pending_and_acks_free_room() -> None:
    h = harness()
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True, prefetch=2))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(5)])
    assert h.take(worker) == [OK, job("jobs", "0", 0, 1), job("jobs", "1", 1, 1)]
    h.send(worker, ack("jobs", 1))
    # Like a send's deliveries, what an ack frees comes before its reply.
    assert h.take(worker) == [job("jobs", "2", 2, 1), OK]
    # A new prefetch takes effect at once.
    h.send(worker, sub("jobs", ack=True, prefetch=4))
    assert h.take(worker) == [OK, job("jobs", "3", 3, 1), job("jobs", "4", 4, 1)]
    assert h.broker.pending(worker, "jobs") == [0, 2, 3, 4]


def test_prefetch_0_pauses_a_consumer() -> None:
    h = harness()
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True, prefetch=1))
    h.send(producer, send("jobs", "0", "one"), send("jobs", "1", "one"))
    h.send(worker, sub("jobs", ack=True, prefetch=0), ack("jobs", 0))
    assert h.take(worker) == [OK, job("jobs", "0", 0, 1), OK, OK]  # nothing more
    h.send(worker, sub("jobs", ack=True, prefetch=1))
    assert h.take(worker) == [OK, job("jobs", "1", 1, 1)]


def test_jobs_go_round_robin_among_consumers_with_room() -> None:
    h = harness()
    a, b, producer = h.connect(), h.connect(), h.connect()
    h.send(a, sub("jobs", ack=True))
    h.send(b, sub("jobs", ack=True))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(4)])
    assert h.broker.pending(a, "jobs") == [0, 2]
    assert h.broker.pending(b, "jobs") == [1, 3]


def test_cached_one_messages_are_claimed_on_subscribe_up_to_prefetch() -> None:
    h = harness()
    producer, worker = h.connect(), h.connect()
    h.send(producer, send("jobs", "old", "all"))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(1, 5)])
    h.take(producer)
    h.send(worker, sub("jobs", ack=True, prefetch=2))
    assert h.take(worker) == [
        OK,
        delivered("jobs", "old", 0),  # the replay of `all` messages, no attempt
        job("jobs", "1", 1, 1),
        job("jobs", "2", 2, 1),
    ]
    # Claimed: a plain replay no longer consumes them.
    plain = h.connect()
    h.send(plain, sub("jobs"))
    assert h.take(plain) == [OK, delivered("jobs", "old", 0)]
    h.send(worker, ack("jobs", 1), ack("jobs", 2))
    assert h.take(worker) == [job("jobs", "3", 3, 1), OK, job("jobs", "4", 4, 1), OK]


def test_nack_hands_back_at_once_or_after_its_delay() -> None:
    h, worker, _producer = holding_a_job(100.0)
    h.send(worker, nack("jobs", 0))
    assert h.take(worker) == [job("jobs", "j", 0, 2), OK]
    h.send(worker, nack("jobs", 0, delay=5))
    assert h.take(worker) == [OK]
    assert due_at(h, worker, 105.0) == [job("jobs", "j", 0, 3)]


def test_ack_wait_expiry_redelivers_to_any_consumer() -> None:
    h, slow, _producer = holding_a_job(0.0, ack_wait=30)
    quick = h.connect()
    h.send(quick, sub("jobs", ack=True))
    assert h.take(quick) == [OK]
    # slow is back in line behind quick: quick gets it.
    assert due_at(h, quick, 30.0) == [job("jobs", "j", 0, 2)]
    h.send(slow, ack("jobs", 0))
    assert h.take(slow) == [fail(Reason.NOT_PENDING)]  # too late: no longer its job
    h.send(quick, ack("jobs", 0))
    assert h.take(quick) == [OK]
    assert h.broker.next_deadline() is None


@pytest.mark.parametrize("how", ["lost", "eof", "quit", "unsubscribe"])
def test_a_leaving_consumer_hands_its_jobs_to_another(how: Ending | Literal["unsubscribe"]) -> None:
    h = harness()
    a, producer = h.connect(), h.connect()
    h.send(a, sub("jobs", ack=True, prefetch=3))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(3)])
    h.send(a, ack("jobs", 1))
    b = h.connect()
    h.send(b, sub("jobs", ack=True))
    assert h.take(b) == [OK]
    if how == "unsubscribe":
        h.send(a, unsub("jobs"))
    else:
        h.end(a, how)
    assert h.take(b) == [job("jobs", "0", 0, 2), job("jobs", "2", 2, 2)]


def test_jobs_without_consumers_wait_for_the_next_one() -> None:
    h = harness()
    a, producer = h.connect(), h.connect()
    h.send(a, sub("jobs", ack=True))
    h.send(producer, send("jobs", "j", "one"))
    h.broker.connection_lost(a)
    b = h.connect()
    h.send(b, sub("jobs", ack=True))
    assert h.take(b) == [OK, job("jobs", "j", 0, 2)]


def test_a_poison_message_reaches_dead_after_max_deliver() -> None:
    h = harness(max_deliver=3)
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True))
    h.send(producer, send("jobs", "poison", "one"))
    h.send(worker, nack("jobs", 0, reason="boom"), nack("jobs", 0, reason="boom"))
    assert h.take(worker) == [
        OK,
        job("jobs", "poison", 0, 1),
        job("jobs", "poison", 0, 2),
        OK,
        job("jobs", "poison", 0, 3),
        OK,
    ]
    h.send(worker, nack("jobs", 0, delay=10, reason="still boom"))
    assert h.take(worker) == [OK]  # no more attempts: dead at once, not delayed
    dead = {
        **delivered("jobs.dead", "poison", 0, "one"),
        "dead_index": 0,
        "attempts": 3,
        "reason": "still boom",
    }
    watcher = h.connect()
    h.send(watcher, sub("jobs.dead"))
    assert h.take(watcher) == [OK, dead]  # it was cached; the replay consumed it
    assert h.broker.stats().failures == {}


def test_dead_letters_of_expired_and_disconnected_jobs_say_why() -> None:
    h = harness(max_deliver=1, ack_wait=5)
    watcher, worker, producer = h.connect(), h.connect(), h.connect()
    h.send(watcher, sub("jobs.dead"))
    h.broker.advance(0.0)
    h.send(worker, sub("jobs", ack=True))
    h.send(producer, send("jobs", "a", "one"))
    h.advance(5.0)
    h.send(producer, send("jobs", "b", "one"))
    h.end(worker, "lost")
    reasons = [m["reason"] for m in h.take(watcher)[1:]]
    assert reasons == ["ack wait expired", "consumer disconnected"]


def test_dead_topic_consumers_get_dead_letters_as_jobs() -> None:
    h = harness(max_deliver=1)
    worker, janitor, producer = h.connect(), h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True))
    h.send(janitor, sub("jobs.dead", ack=True))
    h.send(producer, send("jobs", "x", "one"))
    h.send(worker, nack("jobs", 0))
    [_, letter] = h.take(janitor)
    assert (letter["topic"], letter["attempt"], letter["dead_index"]) == ("jobs.dead", 1, 0)


def test_jobs_are_bounded_broker_wide() -> None:
    h = harness(max_jobs=2)
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True, prefetch=1))
    h.send(producer, *[send("jobs", str(n), "one") for n in range(3)])
    assert h.take(producer) == [OK, OK, fail(Reason.WORK_QUEUE_FULL)]
    h.send(worker, ack("jobs", 0))
    h.send(producer, send("jobs", "again", "one"))
    assert h.take(producer) == [OK]
    # The refused send took no index.
    assert h.broker.next_index("jobs") == 3


def test_many_garbage_acks_leave_the_broker_serving() -> None:
    h = harness()
    worker, producer = h.connect(), h.connect()
    h.send(worker, sub("jobs", ack=True))
    h.send(worker, *[ack("jobs", n) for n in range(1000)])
    assert h.take(worker) == [OK] + [fail(Reason.NOT_PENDING)] * 1000
    h.send(producer, send("jobs", "j", "one"))
    h.send(worker, ack("jobs", 0))
    assert h.take(worker) == [job("jobs", "j", 0, 1), OK]


def test_jobs_survive_a_restart_with_their_attempts() -> None:
    store = MemoryStore("e1")

    def durable() -> Harness:
        snapshot = store.load()
        broker = Broker(durable=True, epoch="e1")
        broker.restore(snapshot.topics, snapshot.index_floor)
        broker.restore_jobs(snapshot.jobs)
        return Harness(broker)

    def commit(h: Harness) -> None:
        output = h.broker.take_output()
        store.apply(output.records)
        for records in output.after_write.values():
            store.apply(records)
        for target, chunks in output.writes.items():
            h.written[target].extend(chunks)

    h = durable()
    producer = h.connect()
    h.broker.receive_data(
        producer,
        b"".join(
            b'{"command": "send", "topic": "jobs", "msg": "%d", "delivery": "one"}\n' % n
            for n in range(3)
        ),
    )
    commit(h)  # cached: no consumer yet
    worker = h.connect()
    h.broker.receive_data(worker, b'{"command": "subscribe", "topic": "jobs", "ack": true}\n')
    commit(h)
    h.broker.receive_data(worker, b'{"command": "ack", "topic": "jobs", "index": 1}\n')
    commit(h)
    assert [(j.index, j.attempts) for j in store.load().jobs] == [(0, 1), (2, 1)]
    assert store.cached_count() == 0  # claimed: jobs now, not cache

    h = durable()  # "crash": the old broker is just dropped
    worker = h.connect()
    h.broker.receive_data(worker, b'{"command": "subscribe", "topic": "jobs", "ack": true}\n')
    commit(h)
    assert h.take(worker) == [OK, job("jobs", "0", 0, 2), job("jobs", "2", 2, 2)]
    h.broker.receive_data(
        producer := h.connect(),
        b'{"command": "send", "topic": "jobs", "msg": "3", "delivery": "one"}\n',
    )
    commit(h)
    assert h.take(producer) == [OK]
    assert h.take(worker) == [job("jobs", "3", 3, 1)]
    assert [(j.index, j.attempts) for j in store.load().jobs] == [(0, 2), (2, 2), (3, 1)]

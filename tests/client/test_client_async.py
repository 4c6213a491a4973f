"""The async client against a real server on 127.0.0.1 (port 0, in-process), on asyncio and trio."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from mqcore import SUCCESS, Broker, Reason, hello_reply
from mqcore_client import (
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    ProtocolError,
    Received,
    ServerError,
    SubscriptionOverflowError,
    connect,
)

from ..conftest import BOTH_BACKENDS
from .support import DEADLINE, PLAIN_HELLO, Events, flaky, scripted, serving, take

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]

#: A JSON value nested deeper than msgspec will decode.
DEEP = b"[" * 200_000 + b"]" * 200_000


# -- the basics ---------------------------------------------------------------------


async def test_send_subscribe_replay_and_live() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client:
            assert client.server is not None
            assert client.server.server == "mqcore"
            assert client.epoch == client.server.epoch
            await client.send("t", "cached")
            await client.send("t", "uncached", cache=False)
            async with client.subscribe("t") as sub:
                await client.send("t", "live", "all")
                first = await take(sub, 2)
            async with client.subscribe("t", last_seen=0) as sub:
                await client.send("t", "later")
                second = await take(sub, 2)
            async with client.subscribe("t", cache=False) as sub:
                await client.send("t", "only live")
                third = await take(sub, 1)
    assert first == [Received("t", "cached", "all", 0), Received("t", "live", "all", 2)]
    assert second == [Received("t", "live", "all", 2), Received("t", "later", "all", 3)]
    assert third == [Received("t", "only live", "all", 4)]
    assert sub.epoch == client.epoch
    assert sub.last_index == 4


async def test_server_error_carries_the_reason_and_the_connection_stays_usable() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving(max_line_bytes=200) as port, connect(port=port) as client:
            with pytest.raises(ServerError) as bad_delivery:
                await client.send("t", "x", "some")  # type: ignore[arg-type]
            with pytest.raises(ServerError) as too_long:
                await client.send("t", "x" * 300)
            await client.send("t", "fine")
    assert bad_delivery.value.reason == Reason.MALFORMED
    assert too_long.value.reason == Reason.LINE_TOO_LONG


async def test_pipelined_publish_flush_reports_failures_and_keeps_order() -> None:
    n = 3000
    with anyio.fail_after(DEADLINE):
        async with (
            serving(max_line_bytes=200) as port,
            connect(port=port) as consumer,
            connect(port=port, max_in_flight=64) as producer,
            consumer.subscribe("t") as sub,
        ):
            for i in range(n):
                await producer.publish("t", str(i))
                if i in (10, 2000):
                    await producer.publish("t", "x" * 300)  # Refused: too long.
            with pytest.raises(ServerError) as failed:
                await producer.flush()
            await producer.flush()  # Failures are reported once.
            got = await take(sub, n)
    assert failed.value.count == 2
    assert failed.value.reason == Reason.LINE_TOO_LONG
    assert [m.msg for m in got] == [str(i) for i in range(n)]
    assert [m.index for m in got] == list(range(n))


async def test_many_tasks_on_one_connection_get_their_own_replies_and_messages() -> None:
    tasks, sends = 12, 15
    results: dict[int, tuple[list[str], int, list[int]]] = {}
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client:

            async def worker(w: int) -> None:
                async with (
                    client.subscribe(f"own.{w}") as own,
                    client.subscribe("shared") as shared,
                ):
                    refused = 0
                    for i in range(sends):
                        # Every third send is refused, at a different step in
                        # each task: a reply matched to the wrong command would
                        # raise in the wrong place.
                        if (i + w) % 3 == 2:
                            with pytest.raises(ServerError):
                                await client.send(f"own.{w}", str(i), "bogus")  # type: ignore[arg-type]
                            refused += 1
                        else:
                            await client.send(f"own.{w}", f"{w}:{i}")
                        await anyio.lowlevel.checkpoint()
                    await client.send("shared", str(w))
                    mine = [m.msg for m in await take(own, sends - refused)]
                    everyone = [m.index for m in await take(shared, tasks)]
                    results[w] = (mine, refused, everyone)

            async with anyio.create_task_group() as tg:
                for w in range(tasks):
                    tg.start_soon(worker, w)
    for w in range(tasks):
        mine, refused, everyone = results[w]
        assert mine == [f"{w}:{i}" for i in range(sends) if (i + w) % 3 != 2]
        assert refused == sends // 3
        # Twelve subscriptions to one topic on one connection: each sees every
        # message once, in order, whatever the others' replays.
        assert everyone == list(range(tasks))


async def test_a_second_subscription_to_a_topic_does_not_duplicate_the_first() -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            serving() as port,
            connect(port=port) as client,
            client.subscribe("t") as first,
        ):
            for i in range(3):
                await client.send("t", str(i))
            # Their subscribes replay 0..2 (and 1..2) to the connection again.
            async with (
                client.subscribe("t") as second,
                client.subscribe("t", last_seen=0) as third,
            ):
                await client.send("t", "3")
                got = [await take(sub, n) for sub, n in ((first, 4), (second, 4), (third, 3))]
                await client.send("t", "4")
                after = [await take(sub, 1) for sub in (first, second, third)]
    assert [[m.index for m in messages] for messages in got] == [
        [0, 1, 2, 3],
        [0, 1, 2, 3],
        [1, 2, 3],
    ]
    assert [[m.index for m in messages] for messages in after] == [[4], [4], [4]]


async def test_a_subscription_starts_with_its_replay_when_live_messages_race_it() -> None:
    second: list[Received] = []
    with anyio.fail_after(DEADLINE):
        async with (
            flaky(reconnect=False) as link,
            link.client.subscribe("t") as first,
            anyio.create_task_group() as tg,
        ):
            client, producer = link.client, link.producer
            for i in range(2):
                await producer.send("t", str(i))
            await take(first, 2)
            link.proxy.hold()
            # The server delivers this to `first` before it sees the next subscribe.
            await producer.send("t", "2")

            async def subscribe(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                task_status.started()
                async with client.subscribe("t") as sub:
                    second.extend(await take(sub, 3))

            await tg.start(subscribe)
            # The client now reads: the live 2, the subscribe's reply, the replay 0..2.
            link.proxy.release()
            assert [m.index for m in await take(first, 1)] == [2]
    assert [m.index for m in second] == [0, 1, 2]


async def test_leaving_the_last_subscription_of_a_topic_unsubscribes() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client, connect(port=port) as other:
            async with client.subscribe("t", cache=False) as a:
                async with client.subscribe("t", cache=False) as b:
                    await other.send("t", "both")
                    assert [m.msg for m in await take(b, 1)] == ["both"]
                await other.send("t", "a only")
                assert [m.msg for m in await take(a, 2)] == ["both", "a only"]
            await client.send("x", "sync")  # The unsubscribe is answered before this.
            # With no subscriber left, a `one` message stays in the cache.
            await other.send("t", "job", "one")
            async with client.subscribe("t", last_seen=1) as late:
                assert [m.msg for m in await take(late, 1)] == ["job"]


# -- cache=False beside subscriptions that replay ----------------------------------------


async def test_a_cache_false_subscription_does_not_get_another_subscriptions_replay() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client:
            for i in range(3):
                await client.send("t", f"old{i}")
            # The second one's replay of old0..old2 reaches the connection,
            # so it reaches the first one's topic too.
            async with (
                client.subscribe("t", cache=False) as fresh,
                client.subscribe("t") as replayed,
            ):
                await client.send("t", "live")
                got = await take(fresh, 1)
                assert [m.msg for m in await take(replayed, 4)] == ["old0", "old1", "old2", "live"]
    assert [(m.msg, m.index) for m in got] == [("live", 3)]


async def test_pipelined_subscribes_keep_a_replay_from_cache_false_subscriptions() -> None:
    got: dict[str, list[Received]] = {}
    with anyio.fail_after(DEADLINE):
        async with flaky(reconnect=False) as link, anyio.create_task_group() as tg:
            client = link.client
            for i in range(3):
                await client.send("t", f"old{i}")
            all_ready = anyio.Event()
            ready: list[str] = []
            # Held, so the three subscribes are all written before any reply:
            # `before` is active when the replay arrives, `after` is not yet.
            link.proxy.hold()

            async def subscribe(
                name: str, cache: bool, n: int, *, task_status: anyio.abc.TaskStatus[None]
            ) -> None:
                task_status.started()
                async with client.subscribe("t", cache=cache) as sub:
                    ready.append(name)
                    if len(ready) == 3:
                        all_ready.set()
                    got[name] = await take(sub, n)

            # Entering a subscription queues its subscribe before it first
            # waits, so each start() returns with that subscribe queued.
            await tg.start(subscribe, "before", False, 1)
            await tg.start(subscribe, "replayed", True, 4)
            await tg.start(subscribe, "after", False, 1)
            link.proxy.release()
            await all_ready.wait()
            await client.send("t", "live")
    assert {name: [m.msg for m in messages] for name, messages in got.items()} == {
        "before": ["live"],
        "replayed": ["old0", "old1", "old2", "live"],
        "after": ["live"],
    }


async def test_a_cache_false_subscription_after_an_unsubscribe_ignores_what_came_between() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client, connect(port=port) as other:
            async with client.subscribe("t") as first:
                await other.send("t", "seen")
                await take(first, 1)
            await client.send("x", "sync")  # The unsubscribe is answered before this.
            # Sent while the client is not subscribed: older than what follows.
            await other.send("t", "unseen")
            async with (
                client.subscribe("t", cache=False) as fresh,
                client.subscribe("t") as replayed,
            ):
                await other.send("t", "live")
                got = await take(fresh, 1)
                assert [m.msg for m in await take(replayed, 3)] == ["seen", "unseen", "live"]
    assert [(m.msg, m.index) for m in got] == [("live", 2)]


async def test_a_cache_false_subscription_resumes_after_what_the_connection_had_seen() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky() as link, link.client.subscribe("t") as replayed:
            for i in range(3):
                await link.producer.send("t", f"old{i}")
            await take(replayed, 3)
            async with link.client.subscribe("t", cache=False) as fresh:
                # It starts after old2, the newest the connection has: a position
                # to resume from, though it has not received a message yet.
                async with link.away():
                    await link.producer.send("t", "while away")
                got = await take(fresh, 1)
    assert [(m.msg, m.index, m.gap) for m in got] == [("while away", 3, False)]


async def test_a_resubscription_that_replays_skips_cache_false_subscriptions() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky() as link, anyio.create_task_group() as tg:
            client, producer = link.client, link.producer
            for i in range(4):
                await producer.send("t", f"old{i}")
            async with client.subscribe("t", cache=False) as fresh:
                link.proxy.hold()

                async def resume(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    task_status.started()
                    async with client.subscribe("t", last_seen=1) as replayed:
                        await take(replayed, 4)

                # Its subscribe is queued, and unanswered when the connection
                # drops: the resubscription replays from its last_seen, 1.
                await tg.start(resume)
                async with link.away():
                    link.proxy.release()
                    await producer.send("t", "while away")
                await client.send("sync", "x")  # Answered after the resubscription.
                await producer.send("t", "live")
                got = await take(fresh, 1)
    # old2, old3 are older than `fresh`; "while away" is lost to it, as to
    # any subscription without a position, and the gap is flagged.
    assert [(m.msg, m.index, m.gap) for m in got] == [("live", 5, True)]


async def test_connect_refused_and_connect_timeout() -> None:
    with anyio.fail_after(DEADLINE):
        async with scripted([]) as silent_port:  # Reads, never answers.
            with pytest.raises(ConnectTimeoutError, match="did not answer hello"):
                async with connect(port=silent_port, connect_timeout=0.2):
                    pass
        # The listener is closed now: nothing listens on its port.
        with pytest.raises(ConnectError, match="cannot connect") as refused:
            async with connect(port=silent_port):
                pass
    assert not isinstance(refused.value, TimeoutError)


async def test_a_plain_server_without_hello_works() -> None:
    with anyio.fail_after(DEADLINE):
        # A Broker without an epoch answers `hello` as the reference does.
        async with serving(broker=Broker()) as port, connect(port=port) as client:
            assert client.server is None
            assert client.epoch is None
            async with client.subscribe("t") as sub:
                await client.send("t", "hi")
                assert [m.msg for m in await take(sub, 1)] == ["hi"]


async def test_a_line_that_is_not_the_protocol_drops_the_connection() -> None:
    events = Events()
    with anyio.fail_after(DEADLINE):
        async with (
            scripted([PLAIN_HELLO, b"<html>\r\n"]) as port,
            connect(port=port, **events.options()) as client,
        ):
            with pytest.raises(ProtocolError):
                await client.send("t", "x")
            with pytest.raises(ConnectionLostError):
                await client.send("t", "x")
    assert isinstance(events.errors[0], ProtocolError)


async def test_success_replies_are_recognised_however_the_server_spaces_them() -> None:
    # The exact reply (mqcore's, the reference's), then what another server may write.
    replies = [
        SUCCESS,
        b'{"success":true}\n',
        b' {"success": true} \r\n',
        b'{"success" : true}\r\n',
    ]
    with anyio.fail_after(DEADLINE):
        async with scripted([PLAIN_HELLO, *replies]) as port, connect(port=port) as client:
            for _ in replies:
                await client.send("t", "x")
            assert client.server is None


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b'{"success":false,"reason":"\xff"}\r\n', id="invalid-utf8"),
        pytest.param(b'{"success":false,"reason":"x","more":' + DEEP + b"}\r\n", id="too-deep"),
        pytest.param(
            hello_reply("EPOCH", cache_size=1, max_line_bytes=1).replace(b'"EPOCH"', b'"\xff"'),
            id="hello-with-invalid-utf8",
        ),
    ],
)
async def test_a_hello_reply_that_cannot_be_decoded_fails_connect_with_a_protocol_error(
    reply: bytes,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with scripted([reply]) as port:
            # A ProtocolError, not an ExceptionGroup nor a UnicodeDecodeError/RecursionError.
            with pytest.raises(ProtocolError, match="unexpected line from the server"):
                async with connect(port=port):
                    pass


@pytest.mark.parametrize(
    "delivery",
    [
        pytest.param(
            b'{"command":"send","topic":"t","msg":"\xff","delivery":"all","index":0}\r\n',
            id="invalid-utf8",
        ),
        pytest.param(
            b'{"command":"send","topic":"t","msg":"m","delivery":"all","index":0,"more":'
            + DEEP
            + b"}\r\n",
            id="too-deep",
        ),
    ],
)
async def test_a_delivery_that_cannot_be_decoded_ends_the_subscription_with_a_protocol_error(
    delivery: bytes,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            scripted([PLAIN_HELLO, SUCCESS + delivery]) as port,
            connect(port=port) as client,
        ):
            # The reply and the delivery arrive together, so the error may come
            # as soon as entering the subscription.
            with pytest.raises(ProtocolError, match="unexpected line from the server"):
                async with client.subscribe("t") as sub:
                    await anext(sub)
            with pytest.raises(ConnectionLostError):
                await client.send("t", "x")


# -- resume ---------------------------------------------------------------------------


async def test_resume_after_a_drop_mid_stream_has_no_gap_and_no_duplicate() -> None:
    n, drop_at = 3000, 700
    with anyio.fail_after(DEADLINE):
        async with (
            flaky({"cache_size": n}) as link,
            link.client.subscribe("t") as sub,
            anyio.create_task_group() as tg,
        ):
            producer = link.producer

            async def produce() -> None:
                for i in range(n // 2):
                    await producer.publish("t", str(i))
                await producer.flush()
                await link.events.lost.wait()
                # The consumer is cut off: these can only reach it by replay.
                for i in range(n // 2, n):
                    await producer.publish("t", str(i))
                await producer.flush()
                link.proxy.paused = False

            tg.start_soon(produce)
            got = []
            async for message in sub:
                got.append(message)
                if message.index == drop_at:
                    link.proxy.paused = True
                    link.proxy.drop()
                if len(got) == n:
                    break
    assert [m.index for m in got] == list(range(n))
    assert [m.msg for m in got] == [str(i) for i in range(n)]
    assert not any(m.gap for m in got)
    assert link.events.reconnects == 1
    assert len(link.events.errors) == 1


async def test_a_new_epoch_replays_from_the_start_and_flags_the_gap() -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            flaky() as link,
            serving() as new_port,
            connect(port=new_port) as new,
            link.client.subscribe("t") as sub,
        ):
            client, old = link.client, link.producer
            for i in range(5):
                await old.send("t", f"old {i}")
            before = await take(sub, 5)
            old_epoch = client.epoch
            # The "restarted" server numbers from 0 again.
            for i in range(3):
                await new.send("t", f"new {i}")
            link.proxy.target_port = new_port
            link.proxy.drop()
            after = await take(sub, 3)
            new_epoch = sub.epoch
    assert [m.index for m in before] == [0, 1, 2, 3, 4]
    assert new_epoch == client.epoch != old_epoch
    # Resuming with last_seen=4 would have skipped all three.
    assert [(m.msg, m.index, m.gap) for m in after] == [
        ("new 0", 0, True),
        ("new 1", 1, False),
        ("new 2", 2, False),
    ]


async def test_a_saved_epoch_that_no_longer_matches_replays_from_the_start() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client:
            for i in range(3):
                await client.send("t", str(i))
            async with client.subscribe("t", last_seen=1, epoch=client.epoch) as same:
                same_epoch = await take(same, 1)
            async with client.subscribe("t", last_seen=1, epoch="an old epoch") as other:
                other_epoch = await take(other, 3)
    assert [(m.index, m.gap) for m in same_epoch] == [(2, False)]
    assert [(m.index, m.gap) for m in other_epoch] == [(0, True), (1, False), (2, False)]


async def test_a_plain_server_resumes_with_last_seen() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky({"broker": Broker()}) as link, link.client.subscribe("t") as sub:
            for i in range(3):
                await link.producer.send("t", str(i))
            before = await take(sub, 3)
            async with link.away():
                for i in range(3, 6):
                    await link.producer.send("t", str(i))
            after = await take(sub, 3)
    assert [m.index for m in before + after] == list(range(6))
    assert not any(m.gap for m in before + after)


async def test_a_subscription_with_no_position_is_told_of_the_gap() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky() as link, link.client.subscribe("t", cache=False) as sub:
            async with link.away():
                # No message yet, so no index to resume after: this one is lost.
                await link.producer.send("t", "while away")
            await link.client.send("sync", "x")  # Answered after the resubscribe.
            await link.producer.send("t", "back")
            got = await take(sub, 1)
    assert [(m.msg, m.index, m.gap) for m in got] == [("back", 1, True)]


# -- while disconnected ---------------------------------------------------------------


async def test_without_reconnect_a_lost_connection_ends_the_client() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky(reconnect=False) as link, link.client.subscribe("t") as sub:
            client = link.client
            await client.send("t", "before")
            await link.cut()
            assert not client.connected
            with pytest.raises(ConnectionLostError):
                await client.send("t", "after")
            with pytest.raises(ConnectionLostError):
                await client.publish("t", "after")
            # What was received is still yielded, then the error.
            assert [m.msg for m in await take(sub, 1)] == ["before"]
            with pytest.raises(ConnectionLostError):
                await anext(sub)


async def test_while_reconnecting_sends_wait_up_to_offline_timeout() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky(offline_timeout=0.05) as link:
            async with link.away():
                with pytest.raises(ConnectionLostError, match="still reconnecting"):
                    await link.client.send("t", "x")
            await link.client.send("t", "x")


async def test_a_send_made_while_offline_goes_out_on_reconnection() -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            flaky(offline_timeout=None) as link,
            link.producer.subscribe("t") as sub,
            anyio.create_task_group() as tg,
        ):

            async def send_offline(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                task_status.started()
                await link.client.send("t", "sent while offline")

            async with link.away():
                await tg.start(send_offline)  # Now waiting for the connection.
                assert not link.client.connected
            assert [m.msg for m in await take(sub, 1)] == ["sent while offline"]


async def test_commands_in_flight_when_the_connection_drops_raise() -> None:
    with anyio.fail_after(DEADLINE):
        async with flaky() as link, anyio.create_task_group() as tg:
            client, proxy = link.client, link.proxy
            proxy.hold()  # No reply will come back.
            await client.publish("t", "a")
            lost: list[BaseException] = []

            async def send(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                task_status.started()
                try:
                    await client.send("t", "b")
                except ConnectionLostError as exc:
                    lost.append(exc)

            await tg.start(send)
            proxy.drop()
            proxy.release()
            with pytest.raises(ConnectionLostError, match="1 published message"):
                await client.flush()
            await link.events.back.wait()
            await client.send("t", "c")
    assert len(lost) == 1


# -- bounded queues -------------------------------------------------------------------


async def test_a_full_subscription_queue_ends_the_subscription_and_resumes() -> None:
    with anyio.fail_after(DEADLINE):
        async with serving() as port, connect(port=port) as client:
            async with client.subscribe("t", max_queued=3) as sub:
                for i in range(6):
                    # Subscribed on this connection: each copy arrives before the reply.
                    await client.send("t", str(i))
                got = await take(sub, 3)
                with pytest.raises(SubscriptionOverflowError) as overflow:
                    await anext(sub)
            error = overflow.value
            async with client.subscribe("t", error.last_index, epoch=error.epoch) as again:
                rest = await take(again, 3)
    assert [m.index for m in got] == [0, 1, 2]
    assert error.last_index == 2
    assert error.epoch == client.epoch
    assert [m.index for m in rest] == [3, 4, 5]

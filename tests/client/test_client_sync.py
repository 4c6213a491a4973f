"""The blocking client against a real server on 127.0.0.1, run in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal

from mqcore import Reason
from mqcore_client import (
    Client,
    ConnectError,
    MQError,
    MQTimeoutError,
    ServerError,
    Subscription,
    SyncClient,
    SyncSubscription,
)
from mqcore_tcp import TCPServer

from ..helpers import free_port


@pytest.fixture
def port() -> Iterator[int]:
    """A server on a free port, in its own thread and event loop."""
    with start_blocking_portal() as portal:
        server = TCPServer(host="127.0.0.1", port=0, max_line_bytes=200)
        future, bound = portal.start_task(server.serve)
        yield bound
        portal.call(server.shutdown)
        future.result(timeout=10)


def test_send_subscribe_and_iterate_until_idle(port: int) -> None:
    with SyncClient(port=port) as client:
        assert client.epoch is not None
        assert client.server is not None
        client.send("t", "cached")
        with client.subscribe("t", timeout=0.05) as sub:
            client.send("t", "live", "all", cache=False)
            got = [(m.msg, m.index) for m in sub]  # Stops after 50 ms without a message.
        assert sub.last_index == 1
        assert sub.epoch == client.epoch
        with client.subscribe("t", last_seen=0, timeout=0.05) as sub:
            assert list(sub) == []  # Index 1 was not cached.
    assert got == [("cached", 0), ("live", 1)]


def test_a_url_and_a_request_timeout(port: int) -> None:
    with SyncClient(f"mqcore://127.0.0.1:{port}", timeout=5) as client:
        client.send("t", "by url")
        with client.subscribe("t") as sub:
            assert sub.get(timeout=5).msg == "by url"


def test_get_times_out_then_returns_the_next_message(port: int) -> None:
    with SyncClient(port=port) as client:
        with client.subscribe("t") as sub:
            with pytest.raises(MQTimeoutError):
                sub.get(timeout=0.02)
            client.send("t", "hello")
            assert sub.get(timeout=5).msg == "hello"
        with pytest.raises(MQError, match="ended"):
            sub.get(timeout=5)


def test_server_errors_and_pipelined_publish(port: int) -> None:
    with SyncClient(port=port) as client:
        with pytest.raises(ServerError) as refused:
            client.send("t", "x" * 300)
        assert refused.value.reason == Reason.LINE_TOO_LONG
        with client.subscribe("t") as sub:
            for i in range(100):
                client.publish("t", str(i))
            client.flush()
            assert [sub.get(timeout=5).msg for _ in range(100)] == [str(i) for i in range(100)]


def test_threads_share_one_client(port: int) -> None:
    threads, sends = 4, 25
    with SyncClient(port=port) as client, client.subscribe("t") as sub:

        def send_some(n: int) -> None:
            for i in range(sends):
                client.send("t", f"{n}:{i}")

        workers = [threading.Thread(target=send_some, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        got = [sub.get(timeout=5) for _ in range(threads * sends)]
    assert [m.index for m in got] == list(range(threads * sends))
    for n in range(threads):
        assert [m.msg for m in got if m.msg.startswith(f"{n}:")] == [
            f"{n}:{i}" for i in range(sends)
        ]


def test_connect_refused_raises_and_use_before_enter_is_an_error() -> None:
    client = SyncClient(port=free_port())
    with pytest.raises(RuntimeError):
        client.send("t", "x")
    with pytest.raises(ConnectError), client:
        pass


def test_forwarded_attributes_are_read_only_and_documented_as_the_async_ones() -> None:
    client = SyncClient(port=free_port())
    with pytest.raises(RuntimeError):
        _ = client.epoch  # Not entered: nothing to read from.
    with pytest.raises(AttributeError):
        client.server = None  # type: ignore[assignment]
    assert SyncClient.server.__doc__ == Client.server.__doc__
    assert SyncClient.epoch.__doc__ == Client.epoch.__doc__
    assert SyncSubscription.epoch.__doc__ == Subscription.epoch.__doc__
    assert SyncSubscription.last_index.__doc__ == Subscription.last_index.__doc__

"""Several server addresses: parsed alike everywhere, tried in order, failed over round-robin.

Real single-node servers (``python -m mqcore_tcp`` subprocesses); no Redis.
The failover that must lose nothing uses a standby: a second server started
on the first one's ``--data-dir`` once the first is SIGKILLed, so the
numbering (and the epoch) carries on and ``last_seen`` means the same there.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mqcore_client import (
    Address,
    ConnectError,
    ConnectionLostError,
    ConnectTimeoutError,
    Received,
    SyncClient,
    connect,
)
from mqcore_client._cli import main
from mqcore_client._connect import resolve
from mqcore_client._url import parse_urls
from mqcore_tcp.testing import ServerProcess, launch_async

from ..conftest import BOTH_BACKENDS
from ..helpers import free_port
from ..security.support import write_auth

#: Seconds any one test may take.
DEADLINE = 60.0

pytestmark = pytest.mark.anyio


# -- parsing --------------------------------------------------------------------------


def test_a_list_or_commas_give_the_same_addresses() -> None:
    listed = parse_urls(["mqcore://a:7001", "b:7002", "unix:///run/mq.sock"])
    assert listed == parse_urls("mqcore://a:7001, b:7002,unix:///run/mq.sock")
    assert [a.url for a in listed] == ["mqcore://a:7001", "mqcore://b:7002", "unix:///run/mq.sock"]
    assert parse_urls("mqcore://a:7001") == [Address("a", 7001)]
    assert parse_urls(Address("c", 1)) == [Address("c", 1)]


def test_credentials_belong_to_their_own_url_and_may_hold_a_comma() -> None:
    first, second = parse_urls("mqcore://ann:p%2Cw@a:7001,mqcore://b:7002")
    assert (first.user, first.password) == ("ann", "p,w")
    assert (second.user, second.password) == (None, None)


@pytest.mark.parametrize(
    ("urls", "why"),
    [
        ("", "empty server address"),
        ("mqcore://a:1,,mqcore://b:2", "empty server address"),
        ("mqcore://a:1,", "empty server address"),
        ([], "no server address"),
        ("mqcore://a:1,http://b:2", "unknown scheme"),
        (["mqcore://a:1", "b:99999"], "port must be a number"),
        ("mqcore://u:secret@a:1,,b", "mqcore://\\*\\*\\*@"),  # credentials never shown
    ],
)
def test_bad_address_lists_are_refused_saying_why(urls: str | list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        parse_urls(urls)
    assert "secret" not in str(refused.value)


def test_connect_resolves_lists_and_refuses_a_port_with_them() -> None:
    assert resolve(["a:1", "b:2"], None) == [Address("a", 1), Address("b", 2)]
    assert resolve("a:1,b:2", None) == [Address("a", 1), Address("b", 2)]
    assert resolve("example.org", 7001) == [Address("example.org", 7001)]  # as before
    with pytest.raises(ValueError, match="not both"):
        resolve(["a:1", "b:2"], 7000)


# -- servers ----------------------------------------------------------------------------


@asynccontextmanager
async def servers(count: int) -> AsyncIterator[list[ServerProcess]]:
    """``count`` independent in-memory servers, stopped on leaving."""
    started: list[ServerProcess] = []
    try:
        for _ in range(count):
            started.append(await launch_async("--in-memory"))
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for server in started:
                await server.stop_async()


async def send(url: str, topic: str, *messages: str) -> None:
    async with connect(url) as client:
        for message in messages:
            await client.send(topic, message)


async def take(sub: AsyncIterator[Received], count: int) -> list[Received]:
    return [await anext(sub) for _ in range(count)]


def dead_url() -> str:
    """A loopback address nothing listens on (connections are refused)."""
    return f"mqcore://127.0.0.1:{free_port()}"


@BOTH_BACKENDS
async def test_the_first_connection_tries_the_addresses_in_order() -> None:
    with anyio.fail_after(DEADLINE):
        async with servers(2) as (first, second):
            dead = dead_url()
            async with connect([dead, second.url, first.url]) as client:
                assert client.address.url == second.url
                assert [a.url for a in client.addresses] == [dead, second.url, first.url]
                await client.send("t", "hello")
            async with connect(f"{first.url},{second.url}") as client:
                assert client.port == first.port


async def test_when_no_server_answers_connect_names_each_failure() -> None:
    dead = [dead_url(), dead_url()]
    with anyio.fail_after(DEADLINE), pytest.raises(ConnectError) as refused:
        async with connect(dead, reconnect=True):
            pass
    assert not isinstance(refused.value, ConnectTimeoutError)
    assert "no server of 2 answered" in str(refused.value)
    for url in dead:
        assert url.removeprefix("mqcore://") in str(refused.value)


async def test_a_long_list_of_dead_addresses_gives_a_short_error() -> None:
    dead = [dead_url() for _ in range(40)]
    with anyio.fail_after(DEADLINE), pytest.raises(ConnectError) as refused:
        async with connect(",".join(dead)):
            pass
    message = str(refused.value)
    assert "no server of 40 answered" in message
    assert message.endswith("; and 35 more")
    assert len(message) < 1000


async def test_when_every_server_is_silent_connect_times_out() -> None:
    """Listeners that accept but never answer ``hello``: a timeout per address, then one error."""
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as one,
        await anyio.create_tcp_listener(local_host="127.0.0.1") as two,
    ):
        ports = [listener.extra(anyio.abc.SocketAttribute.local_port) for listener in (one, two)]
        held: list[anyio.abc.SocketStream] = []

        async def hold(stream: anyio.abc.SocketStream) -> None:
            held.append(stream)  # never read, never answered
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(one.serve, hold)
            tg.start_soon(two.serve, hold)
            with anyio.fail_after(DEADLINE), pytest.raises(ConnectTimeoutError) as timed_out:
                async with connect([f"127.0.0.1:{port}" for port in ports], connect_timeout=0.3):
                    pass
            tg.cancel_scope.cancel()
        for stream in held:
            await stream.aclose()
    assert "no server of 2 answered" in str(timed_out.value)
    assert len(held) == 2  # both were tried


async def test_a_single_address_fails_exactly_as_before() -> None:
    url = dead_url()
    with anyio.fail_after(DEADLINE), pytest.raises(ConnectError) as refused:
        async with connect(url):
            pass
    assert str(refused.value).startswith(f"cannot connect to {url.removeprefix('mqcore://')}")


@BOTH_BACKENDS
async def test_failover_to_a_standby_resumes_without_a_gap(tmp_path: Path) -> None:
    """SIGKILL the server under a subscribed client; the standby takes its data; nothing is lost.

    Checked on the old client: with only the first address it never comes back.
    """
    data = str(tmp_path / "data")
    standby_port = free_port()
    standby_url = f"mqcore://127.0.0.1:{standby_port}"
    primary = await launch_async("--data-dir", data)
    standby: ServerProcess | None = None
    reconnected = anyio.Event()
    try:
        with anyio.fail_after(DEADLINE):
            await send(primary.url, "news", "m0", "m1", "m2")
            async with (
                connect(
                    [primary.url, standby_url],
                    reconnect=True,
                    reconnect_delay=0.05,
                    offline_timeout=DEADLINE,
                    on_reconnect=reconnected.set,
                ) as client,
                client.subscribe("news", last_seen=0) as sub,
            ):
                assert [m.msg for m in await take(sub, 2)] == ["m1", "m2"]
                epoch = client.epoch
                primary.send_signal(signal.SIGKILL)
                await primary.wait_async()
                standby = await launch_async("--data-dir", data, port=standby_port)
                await reconnected.wait()
                assert client.address.url == standby_url
                assert client.epoch == epoch
                await send(standby_url, "news", "m3", "m4")
                resumed = await take(sub, 2)
        assert [(m.msg, m.index, m.gap) for m in resumed] == [("m3", 3, False), ("m4", 4, False)]
    finally:
        with anyio.CancelScope(shield=True):
            for server in (primary, standby):
                if server is not None:
                    await server.stop_async()


async def test_reconnection_goes_round_robin_from_the_failed_address() -> None:
    """A, B, C: A dies, the client lands on B; A is back, B dies: the client goes to C, not A.

    Then each landing is a new server, so the session flags the changed numbering.
    """
    ports = [free_port() for _ in range(3)]
    urls = [f"mqcore://127.0.0.1:{port}" for port in ports]
    running = {
        url: await launch_async("--in-memory", port=port)
        for url, port in zip(urls, ports, strict=True)
    }
    landed: list[str] = []
    online = anyio.Event()

    def on_reconnect() -> None:
        landed.append(client.address.url)
        online.set()

    try:
        with anyio.fail_after(DEADLINE):
            async with connect(
                urls,
                reconnect=True,
                reconnect_delay=0.05,
                offline_timeout=DEADLINE,
                on_reconnect=on_reconnect,
            ) as client:
                assert client.address.url == urls[0]
                for dying, revived in ((urls[0], None), (urls[1], urls[0])):
                    if revived is not None:
                        running[revived] = await launch_async(
                            "--in-memory", port=ports[urls.index(revived)]
                        )
                    online = anyio.Event()
                    running[dying].kill()
                    await running[dying].wait_async()
                    await online.wait()
                await client.send("t", "still here")
        assert landed == [urls[1], urls[2]]
    finally:
        with anyio.CancelScope(shield=True):
            for server in running.values():
                await server.stop_async()


async def test_a_flapping_list_keeps_backing_off_and_the_client_stays_usable() -> None:
    """Every address dead after the first connection: many rounds of attempts, bounded waits."""
    async with servers(1) as (only,):
        with anyio.fail_after(DEADLINE):
            lost = anyio.Event()
            async with connect(
                [only.url, dead_url(), dead_url()],
                reconnect=True,
                reconnect_delay=0.01,
                reconnect_max_delay=0.05,
                offline_timeout=0.5,
                on_disconnect=lambda _error: lost.set(),
            ) as client:
                only.kill()
                await only.wait_async()
                await lost.wait()
                with pytest.raises(ConnectionLostError, match="still reconnecting"):
                    await client.send("t", "m")
                relaunched = await launch_async("--in-memory", port=only.port)
                try:
                    # The client comes back to the first address on a later round.
                    with anyio.fail_after(10):
                        while True:
                            try:
                                await client.send("t", "back")
                                break
                            except ConnectionLostError:
                                continue
                    assert client.address.url == only.url
                finally:
                    with anyio.CancelScope(shield=True):
                        await relaunched.stop_async()


# -- the sync client and the command line ----------------------------------------------


async def test_the_sync_client_takes_several_addresses() -> None:
    async with servers(1) as (live,):

        def use() -> str | None:
            with SyncClient([dead_url(), live.url]) as client:
                client.send("t", "m")
                return client.epoch

        assert await anyio.to_thread.run_sync(use) is not None


@pytest.mark.parametrize(
    "where",
    [
        lambda dead, live: (["--url", dead, "--url", live], {}),
        lambda dead, live: (["--url", f"{dead},{live}"], {}),
        lambda dead, live: ([], {"MQCORE_URL": f"{dead}, {live}"}),
    ],
    ids=["url-repeated", "url-commas", "env-commas"],
)
async def test_the_command_line_takes_several_addresses(
    where: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with servers(1) as (live,):
        argv, env = where(dead_url(), live.url)  # type: ignore[operator]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with anyio.fail_after(DEADLINE):
            assert await anyio.to_thread.run_sync(main, [*argv, "send", "news", "hi"]) == 0
            command = ["subscribe", "news", "--count", "1", *argv]
            assert await anyio.to_thread.run_sync(main, command) == 0
    assert capsys.readouterr().out == "hi\n"




async def test_credentials_in_a_command_line_url_are_used(tmp_path: Path) -> None:
    """Checked on the old command line: it dropped them (Authentication required)."""
    users = write_auth(tmp_path / "users.toml", {"ann": {"password": "p,w", "publish": [">"]}})
    server = await launch_async("--in-memory", "--auth", str(users))
    try:
        url = f"mqcore://ann:p%2Cw@127.0.0.1:{server.port}"
        argv = ["--url", f"{dead_url()},{url}", "send", "t", "m"]
        with anyio.fail_after(DEADLINE):
            assert await anyio.to_thread.run_sync(main, argv) == 0
    finally:
        with anyio.CancelScope(shield=True):
            await server.stop_async()

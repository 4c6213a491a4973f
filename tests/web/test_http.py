"""The HTTP listener over loopback, on asyncio and trio: pages, paging, and bad HTTP."""

from __future__ import annotations

import anyio
import pytest

from mqcore_tcp import _http

from ..conftest import BOTH_BACKENDS
from ..helpers import LineClient
from ..wire import OK, fail, send, sub
from .support import WSClient, get, parse_response, raw_request, read_all, web_server

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


async def test_healthz_metrics_and_stats_count_what_happened() -> None:
    async with web_server() as web:
        assert (await get(web.http_port, "/healthz")).json() == {"status": "ok"}
        async with await LineClient.open(web.tcp_port) as client:
            assert await client.request(sub("t")) == OK
            for n in range(3):
                await client.write(send("t", f"m{n}"))
            replies = await client.read_n(6)  # 3 replies, 3 deliveries, in some order
            assert replies.count(OK) == 3
            assert await client.request({"command": "nope"}) == fail("Malformed json message")
            metrics = await get(web.http_port, "/metrics")
            stats = (await get(web.http_port, "/api/stats")).json()
        assert metrics.status == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.body.decode()
        for name in (
            "mqcore_connections 1.0",
            "mqcore_topics 1.0",
            "mqcore_messages_received_total 3.0",
            "mqcore_slow_consumer_disconnects_total 0.0",
            "mqcore_cached_messages 3.0",
            "# TYPE mqcore_replies_failed_total counter",
            "# TYPE mqcore_cached_bytes gauge",
        ):
            assert name in text, name
        assert "mqcore_store_commit_seconds" not in text  # durable only
        assert stats["server"]["name"] == "mqcore"
        assert stats["server"]["health"] == "ok"
        assert stats["counters"]["sends"] == 3
        assert stats["counters"]["topics"] == 1
        assert stats["limits"]["max_line_bytes"] == 1 << 20


async def test_topics_are_paged_filtered_and_sorted() -> None:
    async with web_server() as web, await LineClient.open(web.tcp_port) as client:
        await client.write(*(send(f"topic-{n:03d}", "x") for n in range(250)))
        await client.read_n(250)
        await client.write(sub("topic-007"), send("topic-007", "more"))
        await client.read_n(4)  # subscribe reply, replay, delivery, send reply
        seen: list[str] = []
        offset = 0
        while True:
            page = (await get(web.http_port, f"/api/topics?offset={offset}&limit=100")).json()
            assert page["total"] == 250
            seen += [row["name"] for row in page["items"]]
            offset += 100
            if not page["more"]:
                break
        assert seen == [f"topic-{n:03d}" for n in range(250)]  # creation order
        matched = (await get(web.http_port, "/api/topics?match=-00&limit=1000")).json()
        assert [row["name"] for row in matched["items"]] == [f"topic-00{n}" for n in range(10)]
        newest = (await get(web.http_port, "/api/topics?sort=name&order=desc&limit=2")).json()
        assert [row["name"] for row in newest["items"]] == ["topic-249", "topic-248"]
        busiest = await get(web.http_port, "/api/topics?sort=subscribers&order=desc&limit=1")
        assert busiest.json()["items"] == [
            {
                "name": "topic-007",
                "next_index": 2,
                "cached": 2,
                "cached_bytes": 175,
                "subscribers": 1,
            }
        ]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "sort=size",
        "order=up",
        "sort=name&offset=100001",
    ],
)
async def test_bad_paging_is_400(query: str) -> None:
    async with web_server() as web:
        response = await get(web.http_port, f"/api/topics?{query}")
        assert response.status == 400
        assert "error" in response.json()
        assert (await get(web.http_port, "/healthz")).status == 200


async def test_connections_list_tcp_and_websocket_peers() -> None:
    async with web_server() as web, await LineClient.open(web.tcp_port) as client:
        ws = await WSClient.open(web.http_port)
        assert await ws.request(sub("a")) == OK
        assert await ws.request(sub("b")) == OK
        assert await client.request(sub("a")) == OK
        rows = (await get(web.http_port, "/api/connections")).json()["items"]
        await ws.aclose()
    by_transport = {row["transport"]: row for row in rows}
    assert set(by_transport) == {"tcp", "websocket"}
    assert by_transport["websocket"]["subscriptions"] == 2
    assert by_transport["tcp"]["subscriptions"] == 1
    assert by_transport["tcp"]["queued_bytes"] == 0
    assert by_transport["tcp"]["since"] > 0


async def test_keep_alive_serves_several_requests_and_the_console() -> None:
    async with web_server() as web:
        async with await anyio.connect_tcp("127.0.0.1", web.http_port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await read_all(stream)
        assert data.count(b"HTTP/1.1 200 ") == 3
        assert b"<canvas" in data
        head = await raw_request(
            web.http_port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 200 ")
        assert head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
        (b"\x00\xff\xfe binary\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"POST /api/stats HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100000, 413),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            426,
        ),
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "request-line",
        "header",
        "binary",
        "huge-headers",
        "404",
        "post",
        "body",
        "no-upgrade",
        "ws-version",
        "ws-no-key",
    ],
)
async def test_bad_http_gets_its_status_and_the_server_keeps_serving(
    request_bytes: bytes, status: int
) -> None:
    async with web_server() as web:
        response = parse_response(await raw_request(web.http_port, request_bytes))
        assert response.status == status
        if status != 404:
            assert "error" in response.json()
        assert (await get(web.http_port, "/healthz")).json() == {"status": "ok"}


async def test_slow_headers_get_408_and_an_idle_connection_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_http, "HEAD_TIMEOUT", 0.2)
    async with web_server() as web:
        slow = await raw_request(web.http_port, b"GET /healthz HTTP/1.1\r\nHost:")
        assert parse_response(slow).status == 408
        idle = await raw_request(web.http_port, b"")
        assert idle == b""  # closed without a word
        assert (await get(web.http_port, "/healthz")).status == 200


async def test_healthz_is_503_while_shutting_down() -> None:
    async with web_server() as web:
        ws = await WSClient.open(web.http_port)  # keeps the shutdown waiting for it
        async with await anyio.connect_tcp("127.0.0.1", web.http_port) as stream:
            web.server.shutdown()
            # The server sends the WebSocket its close frame once shutting down.
            while await ws.pump():
                pass
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = parse_response(await read_all(stream))
        await ws.aclose()
    assert response.status == 503
    assert response.json() == {"status": "unavailable", "reason": "shutting down"}

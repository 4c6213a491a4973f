"""A node's ``/healthz`` follows Redis: 200 while it answers, 503 while it is down, 200 again.

Real ``redis-server`` and a real node with an HTTP listener; the state is
awaited by polling the endpoint (bounded), never by a sleep alone.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from mqcore_tcp.testing import launch
from mqcore_tcp.testing_redis import RedisServer

from ..wire import OK, fail, line, send
from .support import Peer

#: Seconds a node may take to notice Redis left or came back (heartbeat retries grow to 2 s).
WITHIN = 20.0
#: Seconds between two polls of /healthz.
POLL = 0.05


def _healthz(port: int) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _await_health(port: int, status: int) -> Any:
    """Poll /healthz until it answers ``status``; its body. Fails after :data:`WITHIN`."""
    deadline = time.monotonic() + WITHIN
    seen: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        seen = _healthz(port)
        if seen[0] == status:
            return seen[1]
        time.sleep(POLL)  # a poll's pace, not a wait for an event
    raise AssertionError(f"/healthz never answered {status} within {WITHIN} s; last {seen}")


def test_healthz_is_503_while_redis_is_down_and_200_after(redis_server: RedisServer) -> None:
    node = launch(
        "--cluster",
        redis_server.url,
        "--listen",
        "mqcore://127.0.0.1:0",
        "--listen",
        "http://127.0.0.1:0",
    )
    try:
        http_port = int(node.addresses[1].rsplit(":", 1)[1])
        assert _healthz(http_port) == (200, {"status": "ok"})
        sender = Peer(node.port)
        sender.send(line(send("t", "before")))
        assert sender.lines(1) == [OK]

        redis_server.stop()
        body = _await_health(http_port, 503)
        assert body["reason"] == "backend unavailable"
        # What /healthz says is what a sender gets: refused, with the reason.
        sender.send(line(send("t", "during")))
        assert sender.lines(1) == [fail("Backend unavailable")]
        # It stays 503 while Redis is down (a second poll, not a flap).
        assert _healthz(http_port)[0] == 503

        redis_server.start()
        assert _await_health(http_port, 200) == {"status": "ok"}
        sender.send(line(send("t", "after")))
        assert sender.lines(1) == [OK]
    finally:
        node.stop()

"""The core's half of permissions (``mqcore._guard``), no sockets: reloads prune subscriptions."""

from __future__ import annotations

from mqcore import Broker, ConnectionId
from mqcore._auth import Permissions

from ..helpers import Harness
from ..wire import OK, delivered, send, sub


def _granted(h: Harness, permissions: Permissions) -> ConnectionId:
    cid = h.connect()
    h.send(cid, {"command": "hello", "user": "u", "password": "p"})
    h.broker.auth_result(cid, permissions)
    h.collect()
    h.take(cid)  # the hello reply
    return cid


def _harness() -> Harness:
    return Harness(Broker(epoch="e", auth=True))


def test_restricting_a_user_drops_its_pattern_subscriptions_it_may_no_longer_hold() -> None:
    h = _harness()
    everything = Permissions(publish=(">",), subscribe=(">",))
    reader, pub = _granted(h, everything), _granted(h, everything)
    h.send(reader, sub("orders.*"), sub("alerts.>"), sub("orders.eu"))
    assert h.take(reader) == [OK, OK, OK]
    # Reload: only orders.eu may still be read; orders.* and alerts.> go, orders.eu stays.
    h.broker.set_permissions(reader, Permissions(subscribe=("orders.eu",)))
    h.collect()
    h.send(pub, send("orders.us", "1"), send("orders.eu", "2"), send("alerts.x.y", "3"))
    assert h.take(reader) == [delivered("orders.eu", "2", 0)]
    assert h.broker.stats().connections == 2


def test_a_pattern_the_new_permissions_still_cover_is_kept() -> None:
    h = _harness()
    reader = _granted(h, Permissions(subscribe=(">",)))
    pub = _granted(h, Permissions(publish=(">",)))
    h.send(reader, sub("orders.*"), sub("news.>"))
    h.take(reader)
    restricted = Permissions(subscribe=("orders.>",), deny_subscribe=("news.x",))
    h.broker.set_permissions(reader, restricted)
    h.collect()
    h.send(pub, send("orders.us", "1"), send("news.y", "2"))
    # orders.* is covered by orders.>; news.> overlaps a denied topic (and is no longer allowed).
    assert h.take(reader) == [delivered("orders.us", "1", 0)]


def test_a_removed_user_is_closed() -> None:
    h = _harness()
    reader = _granted(h, Permissions(subscribe=(">",)))
    h.send(reader, sub("a.*"))
    h.broker.set_permissions(reader, None)
    h.collect()
    assert reader in h.closed

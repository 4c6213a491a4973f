"""Pattern mirrors in cluster mode: what a pattern change rechecks (issue 13), sans-I/O.

Only a pattern removal can release a mirror, and only one the removed pattern
matched: a subscribe/unsubscribe of a pattern on a node following many
pattern topics must cost the names that pattern matches, not every mirrored
name times every waiting pattern subscribe.
"""

from __future__ import annotations

from mqcore import ConnectionId, Permissions
from mqcore._cluster import ClusterBroker

from ..wire import OK, line, parse, sub, unsub


def _broker() -> ClusterBroker:
    return ClusterBroker.for_node("n1", epoch="e")


def _load_all(broker: ClusterBroker) -> list[str]:
    """Answer every load asked for (empty caches); the names loaded."""
    loads = broker.take_work().loads
    for name, _ in loads:
        broker.loaded(name, 0, [], [])
    return [name for name, _ in loads]


def _subscribe(broker: ClusterBroker, cid: ConnectionId, pattern: str, registry: list[str]) -> None:
    """A pattern subscribe, the registry read as ``registry``, every load answered."""
    broker.receive_data(cid, line(sub(pattern)))
    assert broker.take_work().scans == [pattern]
    broker.pattern_mirrors.scanned(pattern, registry)
    _load_all(broker)
    assert parse(broker.take_output().writes[cid]) == [OK]


def _unsubscribe(broker: ClusterBroker, cid: ConnectionId, name: str) -> list[str]:
    """Unsubscribe ``cid`` from ``name``; the mirrors dropped."""
    broker.receive_data(cid, line(unsub(name)))
    assert parse(broker.take_output().writes[cid]) == [OK]
    return broker.take_work().drops


def test_the_last_pattern_matching_a_topic_drops_its_mirror_others_keep_theirs() -> None:
    broker = _broker()
    wide, narrow, exact = (broker.open_connection() for _ in range(3))
    registry = ["t.a", "t.b", "t.c", "u.b"]
    _subscribe(broker, wide, "t.*", registry)
    _subscribe(broker, narrow, "*.b", registry)
    broker.receive_data(exact, line(sub("t.c")))
    broker.take_output()
    assert sorted(broker.pattern_mirrors.names) == ["t.a", "t.b", "t.c", "u.b"]
    # t.b still matched by *.b, t.c still has an exact subscriber.
    assert _unsubscribe(broker, wide, "t.*") == ["t.a"]
    assert _unsubscribe(broker, exact, "t.c") == ["t.c"]
    assert sorted(_unsubscribe(broker, narrow, "*.b")) == ["t.b", "u.b"]
    assert not broker.pattern_mirrors.names


def test_a_pattern_subscriber_gone_drops_what_only_it_kept() -> None:
    broker = _broker()
    first, second = broker.open_connection(), broker.open_connection()
    _subscribe(broker, first, "t.>", ["t.a.x", "t.b"])
    _subscribe(broker, second, "t.*", ["t.a.x", "t.b"])
    broker.connection_lost(first)
    assert broker.take_work().drops == ["t.a.x"]
    broker.connection_lost(second)
    assert broker.take_work().drops == ["t.b"]


def test_a_waiting_pattern_subscribe_keeps_the_mirrors_it_wants() -> None:
    broker = _broker()
    held, waiting = broker.open_connection(), broker.open_connection()
    _subscribe(broker, held, "t.*", ["t.a"])
    broker.receive_data(waiting, line(sub("t.>")))
    broker.take_work()
    broker.pattern_mirrors.scanned("t.>", ["t.a", "t.b"])
    assert [name for name, _ in broker.take_work().loads] == ["t.b"]
    # t.a was kept by t.*: now by the subscribe still waiting for t.b.
    assert _unsubscribe(broker, held, "t.*") == []
    broker.loaded("t.b", 0, [], [])
    assert parse(broker.take_output().writes[waiting]) == [OK]
    assert sorted(_unsubscribe(broker, waiting, "t.>")) == ["t.a", "t.b"]


def test_a_removal_the_broker_did_not_record_checks_every_name() -> None:
    broker = _broker()
    cid, other = broker.open_connection(), broker.open_connection()
    _subscribe(broker, cid, "t.*", ["t.a", "t.b"])
    # A path that removes a pattern without telling the mirrors (as a
    # permission change does): the table's count says a removal happened.
    broker._table.patterns.unsubscribe(broker._connections[cid], "t.*")
    assert sorted(_unsubscribe(broker, other, "x.y")) == ["t.a", "t.b"]


def test_pattern_churn_rechecks_only_the_names_the_removed_pattern_matched() -> None:
    broker = _broker()
    owner, churner = broker.open_connection(), broker.open_connection()
    topics = [f"{prefix}.{i}" for prefix in ("t", "u") for i in range(1000)]
    _subscribe(broker, owner, "*.*", topics)
    assert len(broker.pattern_mirrors.names) == 2000
    # Subscribes waiting for a mirror still loading: the old check went over
    # every one of them for every name.
    waiters = [broker.open_connection() for _ in range(20)]
    for cid in waiters:
        broker.receive_data(cid, line(sub("v.*")))
        broker.take_work()
        broker.pattern_mirrors.scanned("v.*", ["v.x"])
    broker.take_work()
    mirrors = broker.pattern_mirrors
    before = mirrors.rechecked
    for _ in range(100):
        _subscribe(broker, churner, "x.*", topics)  # matches nothing mirrored
        assert _unsubscribe(broker, churner, "x.*") == []
    # Old: 100 x 2,000 names checked again (each over the 20 waits, then a trie match).
    assert mirrors.rechecked == before
    for _ in range(100):
        _subscribe(broker, churner, "*.7", topics)  # matches t.7 and u.7
        assert _unsubscribe(broker, churner, "*.7") == []
    assert mirrors.rechecked == before + 200
    assert len(broker.pattern_mirrors.names) == 2001  # and v.x, wanted by the waits


def test_permissions_that_no_longer_allow_a_subscription_drop_its_mirror() -> None:
    broker = _broker()
    cid = broker.open_connection()
    for name in "ab":  # each subscribe waits for its mirror's load
        broker.receive_data(cid, line(sub(name)))
        assert _load_all(broker) == [name]
    broker.take_output()
    _subscribe(broker, cid, "t.*", ["t.x"])
    broker.set_permissions(cid, Permissions(subscribe=("b",)))
    # Before, the mirrors of `a` and `t.x` stayed (nobody here wanted them) until another check.
    assert sorted(broker.take_work().drops) == ["a", "t.x"]
    assert sorted(broker._mirrors) == ["b"]

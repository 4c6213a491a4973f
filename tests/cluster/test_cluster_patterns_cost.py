"""Pattern mirrors in cluster mode: what a pattern change rechecks (issue 13), sans-I/O.

Only a pattern removal can release a mirror, and only one the removed pattern
matched: a subscribe/unsubscribe of a pattern on a node following many
pattern topics must cost the names that pattern matches, not every mirrored
name times every waiting pattern subscribe.
"""

from __future__ import annotations

import pytest

import mqcore._cluster_patterns as cluster_patterns
from mqcore import ConnectionId
from mqcore._cluster import ClusterBroker
from mqcore._patterns import PatternTable

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


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls of the per-name checks of a release: keeps() and the pattern trie's match()."""
    if not cluster_patterns.__file__.endswith(".py"):
        pytest.skip("counting wraps pure-Python methods (the core here is compiled)")
    calls = {"keeps": 0, "match": 0}
    keeps = cluster_patterns.PatternMirrors.keeps
    match = PatternTable.match

    def counting_keeps(self: cluster_patterns.PatternMirrors, name: str) -> bool:
        calls["keeps"] += 1
        return keeps(self, name)

    def counting_match(self: PatternTable, name: str) -> dict[object, None]:
        calls["match"] += 1
        return match(self, name)  # type: ignore[return-value]

    monkeypatch.setattr(cluster_patterns.PatternMirrors, "keeps", counting_keeps)
    monkeypatch.setattr(PatternTable, "match", counting_match)
    return calls


def test_pattern_churn_rechecks_only_the_names_the_removed_pattern_matched(
    counted: dict[str, int],
) -> None:
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
    counted.update(keeps=0, match=0)
    for _ in range(100):
        _subscribe(broker, churner, "x.*", topics)  # matches nothing mirrored
        assert _unsubscribe(broker, churner, "x.*") == []
    # Old: 100 x 2,000 keeps() (each over 20 waits) and as many trie matches.
    assert counted == {"keeps": 0, "match": 0}
    for _ in range(100):
        _subscribe(broker, churner, "*.7", topics)  # matches t.7 and u.7
        assert _unsubscribe(broker, churner, "*.7") == []
    assert counted["keeps"] == 200
    assert counted["match"] <= 200 + 100 * 2  # rechecks, and the targets of a new pattern
    assert len(broker.pattern_mirrors.names) == 2001  # and v.x, wanted by the waits

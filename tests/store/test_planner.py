"""The write planner on its own, without SQLite: records in, rows out."""

from __future__ import annotations

from collections.abc import Sequence

from mqcore import CacheAdd, CacheRemove, CacheTrim, DropTopic, NextIndex, Record
from mqcore_tcp.store._planner import Mirror, WritePlan, plan

from .support import CountingIndex, wire


def add(topic: str, index: int, delivery: str = "all") -> CacheAdd:
    return CacheAdd(topic, index, delivery, wire(topic, f"m{index}", index, delivery))  # type: ignore[arg-type]


def stored(mirror: Mirror, records: Sequence[Record]) -> WritePlan:
    """Plan ``records`` and commit the plan to ``mirror``, as a successful write would."""
    writes = plan(mirror, records)
    assert writes is not None
    writes.commit(mirror)
    return writes


def rows(flat: list[object], width: int) -> list[tuple[object, ...]]:
    return [tuple(flat[i : i + width]) for i in range(0, len(flat), width)]


def test_a_batch_becomes_one_chunk_per_topic_and_one_row_per_topic() -> None:
    mirror = Mirror()
    writes = stored(mirror, [add("t", 0), add("u", 0), add("t", 1), NextIndex("t", 2)])
    chunks = rows(writes.new_chunks, 4)
    assert [(seq, topic) for seq, topic, _, _ in chunks] == [(1, 1), (2, 2)]
    assert chunks[0][2] == add("t", 0).data + add("t", 1).data
    assert sorted(r[:4] for r in rows(writes.topic_rows, 5)) == [(1, "t", 2, 0), (2, "u", 0, 0)]
    assert mirror.live == {1: 2, 2: 1}
    # Nothing changed: nothing to write.
    assert plan(mirror, []) is None
    assert plan(mirror, [NextIndex("t", 1)]) is not None  # planned, but no row changes
    assert plan(mirror, [NextIndex("t", 1)]).topic_rows == []  # type: ignore[union-attr]


def test_what_leaves_within_the_batch_never_reaches_the_file() -> None:
    mirror = Mirror()
    writes = stored(
        mirror,
        [add("t", 0), add("t", 1, "one"), add("t", 2), CacheRemove("t", 1), CacheTrim("t", 1)],
    )
    [(_, _, data, _)] = rows(writes.new_chunks, 4)
    assert data == add("t", 2).data


def test_consumption_rewrites_a_chunk_that_keeps_others_and_deletes_an_emptied_one() -> None:
    mirror = Mirror()
    stored(mirror, [add("t", i, "one") for i in range(4)] + [NextIndex("t", 4)])
    writes = stored(mirror, [CacheRemove("t", 2), CacheRemove("t", 3), CacheRemove("x", 0)])
    assert writes.rewrites == {1: {2, 3}}
    assert writes.deleted_chunks == []
    writes = stored(mirror, [CacheRemove("t", 0), CacheRemove("t", 1)])
    assert writes.rewrites == {}
    assert writes.deleted_chunks == [1]
    assert mirror.live == {}
    assert mirror.topics["t"].where == {}


def test_a_trim_deletes_emptied_chunks_without_rewriting_the_rest() -> None:
    mirror = Mirror()
    stored(mirror, [add("t", 0), add("t", 1), NextIndex("t", 2)])
    stored(mirror, [add("t", 2), add("t", 3), NextIndex("t", 4)])
    writes = stored(mirror, [CacheTrim("t", 3)])
    assert writes.deleted_chunks == [1]
    assert writes.rewrites == {}  # chunk 2 keeps 3; the floor hides 2
    assert [r[:4] for r in rows(writes.topic_rows, 5)] == [(1, "t", 4, 3)]
    assert mirror.topics["t"].below(10) == [3]


def test_drop_topic_deletes_its_rows_raises_the_floor_and_voids_earlier_records() -> None:
    mirror = Mirror()
    stored(mirror, [add("t", 0), add("t", 1), NextIndex("t", 2), add("u", 0), NextIndex("u", 1)])
    writes = stored(mirror, [add("t", 2), NextIndex("t", 3), DropTopic("t", 3)])
    assert writes.deleted_topics == [1]
    assert writes.deleted_chunks == [1]
    assert writes.new_chunks == []  # the add before the drop is void
    assert writes.index_floor == 3
    assert "t" not in mirror.topics
    assert mirror.index_floor == 3
    # Recreated after the drop in the same batch: a new id, numbering from the floor.
    writes = stored(mirror, [DropTopic("u", 1), add("u", 3), NextIndex("u", 4)])
    assert writes.index_floor is None  # 1 < 3: the floor only rises
    assert writes.deleted_topics == [2]
    [(new_id, name, next_index, _, _)] = rows(writes.topic_rows, 5)
    assert (name, next_index) == ("u", 4)
    assert new_id not in (1, 2)
    assert mirror.topics["u"].id == new_id
    assert mirror.topics["u"].below(10) == [3]
    # A removal of the old topic's message after the drop finds nothing.
    assert stored(mirror, [CacheRemove("u", 0)]).rewrites == {}


def test_a_mirror_is_unchanged_until_the_plan_is_committed() -> None:
    mirror = Mirror()
    stored(mirror, [add("t", 0), NextIndex("t", 1)])
    assert plan(mirror, [CacheRemove("t", 0), DropTopic("t", 1), add("v", 5)]) is not None
    assert mirror.topics["t"].where == {0: 1}
    assert set(mirror.topics) == {"t"}
    assert (mirror.next_seq, mirror.index_floor) == (2, 0)


def test_many_one_confirmations_are_linear() -> None:
    """600,000 confirmations in one batch: one pass, no list removal per index (issue 8 item 4)."""
    mirror = Mirror()
    n = 600_000
    data = b'{"command":"send","topic":"jobs","msg":"x","delivery":"one","index":0}\r\n'
    for start in range(0, n, 10_000):
        stored(
            mirror,
            [CacheAdd("jobs", i, "one", data) for i in range(start, start + 10_000)]
            + [NextIndex("jobs", start + 10_000)],
        )
    writes = stored(mirror, [CacheRemove("jobs", i) for i in reversed(range(n))])
    assert len(writes.deleted_chunks) == n // 10_000
    assert mirror.live == {}
    assert mirror.topics["jobs"].indices == []


def test_confirming_one_at_a_time_costs_o1_per_confirmation() -> None:
    """The structural check of item 4: removing n indices, one batch each, newest first,
    compares indices O(n) times in all (a list.remove per index compared n^2/2 times)."""
    mirror = Mirror()
    n = 3000
    indices = [CountingIndex(i) for i in range(n)]
    stored(mirror, [add("jobs", i, "one") for i in indices] + [NextIndex("jobs", n)])
    CountingIndex.comparisons = 0
    for index in reversed(indices):
        stored(mirror, [CacheRemove("jobs", index)])
    assert CountingIndex.comparisons < 10 * n
    assert mirror.live == {}

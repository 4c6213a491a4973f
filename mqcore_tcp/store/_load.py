"""Reading a store at start-up: every row is checked before anything is trusted.

A topic row is kept only if its name is UTF-8, its values are integers and
its checksum (when it has one: rows of schema 1 do not) matches. A chunk is
kept only if it belongs to a kept topic and its checksum matches; then each
message in it must be the JSON of a message of that topic (see
:mod:`._format`). What fails is counted, never returned: the caller deletes
it, logs it, and starts a new epoch. Messages below their topic's trim floor
are not live; a message stored again in a later chunk replaces its copy.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from mqcore import CacheAdd, TopicState

from ._format import checksum, parse_message, split_chunk, topic_checksum
from ._planner import Mirror, TopicMirror

__all__ = ["Found", "read_store"]


@dataclass
class Found:
    """What :func:`read_store` found."""

    mirror: Mirror
    topics: list[TopicState]
    #: Chunks with no live message left (damaged, or all below their floor).
    dead_chunks: list[int] = field(default_factory=list)
    #: Topic rows that are not intact.
    bad_topics: list[int] = field(default_factory=list)
    #: How many stored messages were not intact (a chunk that cannot be split counts one).
    dropped: int = 0


def read_store(conn: sqlite3.Connection, index_floor: int) -> Found:
    """Read and check every topic and chunk; build the planner's mirror of them."""
    mirror = Mirror()
    mirror.index_floor = index_floor
    found = Found(mirror, [])
    names: dict[int, str] = {}
    states: dict[str, TopicState] = {}
    query = "SELECT id, CAST(name AS BLOB), next_index, floor, crc FROM topics"
    for topic_id, raw, next_index, floor, crc in conn.execute(query):
        name = _topic_name(raw, next_index, floor, crc)
        if name is None:
            found.bad_topics.append(topic_id)
            continue
        names[topic_id] = name
        mirror.topics[name] = TopicMirror(topic_id, next_index, floor)
        states[name] = TopicState(name, next_index, [])
    by_topic: dict[str, dict[int, tuple[int, CacheAdd]]] = {}
    seqs: list[int] = []
    query = "SELECT seq, topic, data, crc FROM cache ORDER BY seq"
    for seq, topic_id, chunk, crc in conn.execute(query):
        seqs.append(seq)
        name = names.get(topic_id)
        messages = split_chunk(chunk)
        if name is None or not messages or (crc is not None and crc != checksum(chunk)):
            found.dropped += len(messages) or 1
            continue
        floor = mirror.topics[name].floor
        for data in messages:
            stored = parse_message(data)
            if stored is None or stored.topic != name:
                found.dropped += 1
            elif stored.index >= floor:
                add = CacheAdd(name, stored.index, stored.delivery, data)
                by_topic.setdefault(name, {})[stored.index] = (seq, add)
    for name, by_index in by_topic.items():
        topic = mirror.topics[name]
        cache = states[name].cache
        for index in sorted(by_index):
            seq, add = by_index[index]
            topic.add(index, seq)
            mirror.live[seq] = mirror.live.get(seq, 0) + 1
            cache.append((index, add.delivery, add.data))
    mirror.next_seq = 1 + max(seqs, default=0)
    mirror.next_id = 1 + max([*names, *found.bad_topics], default=0)
    found.dead_chunks = [seq for seq in seqs if seq not in mirror.live]
    found.topics = list(states.values())
    return found


def _topic_name(raw: object, next_index: object, floor: object, crc: object) -> str | None:
    """A topic row's name if the row is intact (UTF-8, integers, checksum), else None."""
    if not isinstance(raw, bytes) or not isinstance(next_index, int) or not isinstance(floor, int):
        return None
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        return None
    if crc is not None and crc != topic_checksum(name, next_index, floor):
        return None
    return name

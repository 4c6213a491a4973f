"""What the store tests share: message bytes as the broker makes them, and filled stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mqcore import Broker, Store
from mqcore_tcp import SQLiteStore
from mqcore_tcp.store import STORE_FILE

from ..wire import line


def send(topic: str, msg: str, delivery: str = "all", **extra: Any) -> bytes:
    return line({"command": "send", "topic": topic, "msg": msg, "delivery": delivery, **extra})


def sub(topic: str, **extra: Any) -> bytes:
    return line({"command": "subscribe", "topic": topic, **extra})


def wire(topic: str, msg: str, index: int, delivery: str = "all") -> bytes:
    """The bytes the broker delivers (and caches) for a send as :func:`send` writes it."""
    obj = {"command": "send", "topic": topic, "msg": msg, "delivery": delivery}
    return json.dumps(obj).encode()[:-1] + b', "index": %d}\r\n' % index


def restored(store: Store, cache_size: int) -> Broker:
    """A new durable broker from what ``store`` holds, as after a restart."""
    snapshot = store.load()
    broker = Broker(cache_size=cache_size, durable=True, epoch=snapshot.epoch)
    broker.restore(snapshot.topics, snapshot.index_floor)
    store.apply(broker.take_output().records)
    return broker


def fill(store: SQLiteStore, topics: int = 3, per_topic: int = 30, cache_size: int = 10) -> Broker:
    """Send ``per_topic`` messages to each of ``topics`` topics through a durable broker."""
    broker = restored(store, cache_size)
    p = broker.open_connection()
    for i in range(per_topic):
        broker.receive_data(p, b"".join(send(f"t{t}", f"m{i}") for t in range(topics)))
        store.apply(broker.take_output().records)
    return broker


def assert_intact(store: SQLiteStore, sent: int) -> None:
    """Every message the store returns is exactly what was sent with that index."""
    for state in store.load().topics:
        assert state.next_index <= sent
        for index, delivery, data in state.cache:
            assert delivery == "all"
            assert data == wire(state.topic, f"m{index}", index)


def make_store_file(data_dir: Path, topics: int = 20, per_topic: int = 60) -> Path:
    """A cleanly closed store file with several pages of messages."""
    path = data_dir / STORE_FILE
    with SQLiteStore(path) as store:
        fill(store, topics=topics, per_topic=per_topic, cache_size=50)
    return path


def chunks(store: SQLiteStore) -> list[list[int]]:
    """The indices of the messages in each stored chunk, oldest chunk first."""
    # Through the store's own connection: it holds the file locked.
    rows = store._conn.execute("SELECT data FROM cache ORDER BY seq").fetchall()
    return [[json.loads(m)["index"] for m in data.split(b"\r\n")[:-1]] for (data,) in rows]


class CountingIndex(int):
    """A message index that counts how often it is compared for equality.

    The structural check for linear confirmations: removing from a list one
    index at a time compares each index with the ones before it.
    """

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingIndex.comparisons += 1
        return int(self) == other

    __hash__ = int.__hash__

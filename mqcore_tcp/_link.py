"""The hub's side of one connection (:class:`Link`), and the broker a hub starts with.

A :class:`Link` holds what the hub and its :class:`~mqcore_tcp._watch.Watch`
keep per connection: the transport's connection, its peer and user, the
Watch's ticks, and the bytes written to it with the consumption records that
wait for those bytes to leave (see :mod:`mqcore_tcp._hub`).
:func:`new_broker` builds the hub's broker from the server's configuration,
restored from a store when there is one.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque

from mqcore import Broker, Record, Store

from ._config import ServerConfig
from ._connection import Connection

__all__ = ["Link", "new_broker"]


class Link:
    """The hub's side of one connection: the connection and what awaits its bytes."""

    __slots__ = (
        "beat",
        "born",
        "confirms",
        "conn",
        "heard",
        "heartbeat",
        "partial_since",
        "peer",
        "since",
        "user",
        "written",
    )

    def __init__(self, conn: Connection, peer: str, now: int) -> None:
        self.conn = conn
        self.peer = peer
        self.since = time.time()  # wall clock, for /api/connections
        # Ticks of the Watch (see _watch): when it was accepted, last read
        # from, last sent a heartbeat, and since when it holds a partial line (-1: none).
        self.born = self.heard = self.beat = now
        self.partial_since = -1
        # The agreed heartbeat interval in ticks (0: none).
        self.heartbeat = 0
        # The user it authenticated as (a name, never a secret).
        self.user: str | None = None
        # Bytes ever written to the connection.
        self.written = 0
        # (bytes written when they came, after-write records), oldest first;
        # None until the first (an empty deque is 760 bytes: most
        # connections, and every idle one, never need it).
        self.confirms: deque[tuple[int, list[Record]]] | None = None


def new_broker(config: ServerConfig, store: Store | None, auth: bool) -> Broker:
    snapshot = None if store is None else store.load()
    broker = Broker(
        **config.broker_bounds(),
        choose=random.Random().randrange,
        durable=snapshot is not None,
        # In memory, numbering starts from 0 at every start: a new epoch.
        epoch=uuid.uuid4().hex if snapshot is None else snapshot.epoch,
        ack_wait=config.ack_wait,
        max_deliver=config.max_deliver,
        auth=auth,
    )
    broker.advance(time.monotonic())
    if store is not None and snapshot is not None:
        broker.restore(snapshot.topics, snapshot.index_floor)
        broker.restore_jobs(snapshot.jobs)
        # Restoring may trim caches (a smaller cache size or byte budget than
        # last run): store that first.
        records = broker.take_output().records
        if records:
            store.apply(records)
    return broker

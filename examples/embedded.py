"""A Broker inside one process, with no network: decoupling parts of an application.

    python examples/embedded.py --orders 3

The shop's parts never call each other: ``orders`` publishes ``order.placed``;
``billing`` subscribes to it and publishes ``invoice.sent``; ``shipping``
subscribes to both. Two ``mailer`` parts share ``email`` with
``delivery: "one"``, so each email goes out once. The bus is the sans-I/O
``mqcore.Broker`` driven by plain function calls, using the protocol Structs.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Callable, Sequence

import msgspec

from mqcore import Broker, ConnectionId, Delivery, Message, Reply, Send, Subscribe

_ENCODER = msgspec.json.Encoder()
_MESSAGE = msgspec.json.Decoder(Message)
_REPLY = msgspec.json.Decoder(Reply)


class Bus:
    """An in-process bus: each part is a broker connection with a handler for its messages."""

    def __init__(self) -> None:
        self.broker = Broker(cache_size=0)  # Parts subscribe first; nothing to replay.
        self._handlers: dict[ConnectionId, Callable[[Message], object]] = {}
        self._inbox: deque[tuple[ConnectionId, bytes]] = deque()
        self._busy = False

    def join(self, handler: Callable[[Message], object], *topics: str) -> ConnectionId:
        """Add a part that gets the messages of ``topics``; return its connection."""
        cid = self.broker.open_connection()
        self._handlers[cid] = handler
        for topic in topics:
            self._feed(cid, _ENCODER.encode(Subscribe(topic)))
        return cid

    def publish(self, cid: ConnectionId, topic: str, msg: str, delivery: Delivery = "all") -> None:
        """Publish as part ``cid``."""
        self._feed(cid, _ENCODER.encode(Send(topic, msg, delivery)))

    def _feed(self, cid: ConnectionId, line: bytes) -> None:
        # Handlers publish while we deliver: queue their lines and run them
        # after, in order, instead of re-entering the broker.
        self._inbox.append((cid, line + b"\n"))
        if self._busy:
            return
        self._busy = True
        try:
            while self._inbox:
                sender, data = self._inbox.popleft()
                self.broker.receive_data(sender, data)
                for target, chunks in self.broker.take_output().writes.items():
                    for raw in b"".join(chunks).splitlines():
                        self._receive(target, raw)
        finally:
            self._busy = False

    def _receive(self, cid: ConnectionId, line: bytes) -> None:
        if line.startswith(b'{"success"'):
            reply = _REPLY.decode(line)
            if not reply.success:
                raise RuntimeError(f"the broker refused a command: {reply.reason}")
        else:
            self._handlers[cid](_MESSAGE.decode(line))


def run(orders: int, log: Callable[[str], object]) -> None:
    """Place ``orders`` orders and ``log`` what every part does."""
    bus = Bus()
    billing = bus.join(lambda m: bus.publish(billing, "invoice.sent", m.msg), "order.placed")
    bus.join(lambda m: log(f"shipping: {m.topic} {m.msg}"), "order.placed", "invoice.sent")
    bus.join(lambda m: log(f"mailer-1: email for {m.msg}"), "email")
    bus.join(lambda m: log(f"mailer-2: email for {m.msg}"), "email")
    shop = bus.join(lambda m: None)
    for n in range(1, orders + 1):
        log(f"orders: placing order-{n}")
        bus.publish(shop, "order.placed", f"order-{n}")
        bus.publish(shop, "email", f"order-{n}", delivery="one")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the example from the command line."""
    parser = argparse.ArgumentParser(description="Decouple an application's parts in-process.")
    parser.add_argument("--orders", type=int, default=3, help="orders to place (default: 3)")
    args = parser.parse_args(argv)
    run(args.orders, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The client's protocol state, without I/O: reply matching and the subscription rules.

A :class:`Session` is fed what the server writes (:meth:`Session.receive_data`)
and holds the bytes to write (:attr:`Session.out`); the anyio layer only moves
bytes and wakes tasks. It lives as long as the client, across connections.

**Reply matching.** The protocol has no request ids: every command line gets
exactly one reply, in order, with deliveries interleaved. So each command's
bytes and its entry in the FIFO :attr:`Session.pending` are queued in one
synchronous step, and each reply pops one entry: ``None`` for a pipelined
publish (a failure is counted for ``flush``), a :class:`Request` someone waits
for, or a handler of the session's own (subscribe, fence, unsubscribe).

**Subscriptions.** Each local subscription is a :class:`SubscriptionState`
(its ``state`` one of :class:`SubState`). Every delivery of a topic goes to
every subscription of that topic on the connection (replays for the others
included); each drops what is at or below its *position* (the index of the
last message it queued). On a reconnection, each topic is subscribed again
with ``last_seen`` = the least advanced position, so nothing is missed or
repeated. If the server's epoch changed, positions mean nothing any more:
positions go back to the start of the cache and the next message carries
``gap=True``.

A subscription with no position (``cache=False``, nothing received yet)
cannot tell a replay from live messages. Two rules cover it:

- When its subscribe is answered it takes as position the highest index the
  connection has seen on the topic (:attr:`Session.seen`), if any: a later
  replay holds nothing above that which was not delivered live too.
- Otherwise a subscribe that replays the topic is *fenced*: the same write
  carries a second, no-op subscribe (``cache=False``) right behind it. The
  server writes a replay right after its subscribe's reply, before it reads
  another line, so the fence's reply comes after the replay; position-less
  subscriptions are ``FENCED`` (ignore the topic) from one reply to the
  other, then take :attr:`Session.seen` as their position. What other
  clients send while the server is between the two lines is lost to them
  (the README says so).

**Patterns.** A subscription to a pattern is kept under the pattern in
:attr:`Session.subs` like any other; a delivery goes to the subscriptions of
its topic and to those of every pattern that matches it (each connection
gets a message once from the server, whatever matched). Which patterns
match a topic is cached per topic (bounded, cleared whenever patterns
change). Resume per topic is :mod:`mqcore_client._pattern_state`'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Final

from mqcore import Command, Hello, HelloReply, Reply, Subscribe, Unsubscribe
from mqcore._subjects import is_pattern, matches

from ._consume import ConsumerState
from ._errors import ConnectionLostError, MQError, ProtocolError, ServerError
from ._protocol import ENCODER, LineReader, Received, classify, decode_hello
from ._subscription_state import SubscriptionState, SubState

__all__ = ["Request", "Session", "SubState", "SubscriptionState"]

#: A line from the server longer than this is not the protocol (the server's
#: own default input limit is 1 MiB; a delivery is that plus its index).
MAX_LINE: Final = 64 << 20

#: How many topics' matching patterns the session remembers before starting over.
MAX_ROUTES: Final = 10_000

#: A pending entry: the handler of a command's reply (or of the error that lost it).
_Handler = Callable[[Reply | ConnectionLostError, bytes], None]


class Request:
    """A command someone waits for: ``done`` once answered (or lost); then ``error`` or ``line``."""

    __slots__ = ("done", "error", "line", "notify")

    def __init__(self) -> None:
        self.done = False
        self.error: MQError | None = None
        self.line = b""
        #: Called once the request is done (the I/O layer sets an event).
        self.notify: Callable[[], object] | None = None

    def __call__(self, outcome: Reply | ConnectionLostError, line: bytes) -> None:
        if isinstance(outcome, ConnectionLostError):
            self.error = outcome
        elif not outcome.success:
            self.error = ServerError(outcome.reason)
        self.line = line
        self.done = True
        if self.notify is not None:
            self.notify()


class Session:
    """One client's protocol state: feed it server bytes, write out its :attr:`out`."""

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        #: Bytes to write to the server, in order.
        self.out = bytearray()
        #: One entry per command written and not yet answered, oldest first.
        self.pending: deque[_Handler | None] = deque()
        #: Per topic, the highest index delivered on this connection since it
        #: last subscribed to the topic (see the module docstring).
        self.seen: dict[str, int] = {}
        #: Local subscriptions by topic; a list is replaced, never mutated.
        self.subs: dict[str, list[SubscriptionState]] = {}
        #: Acknowledging consumers by topic (see mqcore_client._consume).
        self.consumers: dict[str, ConsumerState] = {}
        #: The server's ``hello`` reply (``None`` for a plain server).
        self.server: HelloReply | None = None
        #: True between :meth:`establish` and :meth:`connection_lost`.
        self.online = False
        #: Commands queued and commands answered (or lost), over the session's life.
        self.enqueued = 0
        self.completed = 0
        #: Pipelined publishes refused or lost since :meth:`take_publish_failures`.
        self.failed_publishes = 0
        self.first_failure = ""
        self.lost_publishes = 0
        self._lines = LineReader(max_line)
        #: The patterns among the keys of :attr:`subs`, and per topic the
        #: subscriptions a delivery goes to (while there are patterns).
        self._patterns: list[str] = []
        self._routes: dict[str, list[SubscriptionState]] = {}

    @property
    def epoch(self) -> str | None:
        """The server's current index numbering (``None`` for a plain server)."""
        return None if self.server is None else self.server.epoch

    # -- the connection's life ---------------------------------------------------

    def start_connection(self, hello_command: Hello | None = None) -> Request:
        """A new connection: queue ``hello`` (credentials...) first; return its request."""
        self.out.clear()
        self.pending.clear()
        self.seen.clear()
        self._lines.clear()
        hello = Request()
        self.enqueue(Hello() if hello_command is None else hello_command, hello)
        return hello

    def hello_reply(self, hello: Request) -> HelloReply | None:
        """The server's description from the answered ``hello`` (raise ProtocolError if garbled)."""
        if isinstance(hello.error, ServerError):
            return None  # A reference server: "Malformed json message".
        return decode_hello(hello.line)

    def establish(self, info: HelloReply | None, *, first: bool) -> None:
        """The handshake is over: go online; after a reconnection, resubscribe."""
        old, self.server = self.server, info
        if not first:
            if old is None or info is None:
                # Plain before and after: no way to tell a restart (see the README).
                changed = (old is None) != (info is None)
            else:
                changed = old.epoch != info.epoch or old.server != info.server
            self._resubscribe(changed)
            for consumer in self.consumers.values():
                self.enqueue(consumer.command(), consumer.answered)
        self.online = True

    def connection_lost(self, error: ConnectionLostError) -> None:
        """The connection is over: fail what it owed; subscriptions wait to resubscribe."""
        pending = self.pending
        self.completed += len(pending)
        while pending:
            handler = pending.popleft()
            if handler is None:
                self.lost_publishes += 1
            else:
                handler(error, b"")
        self.out.clear()
        if self.online:
            self.online = False
            for subs in self.subs.values():
                for sub in subs:
                    sub.offline()
            for consumer in self.consumers.values():
                consumer.offline()

    def close(self, error: ConnectionLostError) -> None:
        """The client is done for good: every subscription ends with ``error``."""
        self.connection_lost(error)
        subs, self.subs = self.subs, {}
        self._patterns = []
        self._routes.clear()
        for topic_subs in subs.values():
            for sub in topic_subs:
                sub.fail(error)
        consumers, self.consumers = self.consumers, {}
        for consumer in consumers.values():
            consumer.fail(error)

    # -- commands ----------------------------------------------------------------

    def enqueue(self, command: Command, handler: _Handler | None) -> None:
        """Queue a command's bytes and its reply's handler, in one step."""
        ENCODER.encode_into(command, self.out, -1)
        self.out += b"\n"
        self.pending.append(handler)
        self.enqueued += 1

    def request(self, command: Command) -> Request:
        """Queue a command someone will wait for."""
        request = Request()
        self.enqueue(command, request)
        return request

    def take_publish_failures(self) -> tuple[int, int, str]:
        """Lost and refused publishes (with the first reason) since the last call."""
        counts = (self.lost_publishes, self.failed_publishes, self.first_failure)
        self.lost_publishes = self.failed_publishes = 0
        return counts

    def subscribe(self, sub: SubscriptionState) -> None:
        """Start ``sub`` (online only): its position, then its subscribe line."""
        last_seen = sub.last_seen
        if sub.expected_epoch is not None and sub.expected_epoch != self.epoch:
            # last_seen counts in an index numbering that has ended.
            last_seen = None
            sub.gap = True
        sub.start(last_seen)
        self.subs[sub.topic] = [*self.subs.get(sub.topic, ()), sub]
        self._subs_changed(sub.topic)
        command = Subscribe(sub.topic, -1 if last_seen is None else last_seen, sub.cache)
        self._subscribe(command, [sub])

    def remove(self, sub: SubscriptionState) -> None:
        """Forget a local subscription; unsubscribe if it was the topic's last."""
        sub.close()
        subs = self.subs.get(sub.topic)
        if subs is None or sub not in subs:
            return
        # A new list, not remove(): receive_data may be iterating the old one.
        rest = [other for other in subs if other is not sub]
        if rest:
            self.subs[sub.topic] = rest
        else:
            del self.subs[sub.topic]
        self._subs_changed(sub.topic)
        if not rest and self.online:
            # The reference server answers an unsubscribe it does not expect
            # with an error: nothing to do about it, so nothing waits for it.
            self.enqueue(Unsubscribe(sub.topic), partial(self._unsubscribed, sub.topic))

    def add_consumer(self, state: ConsumerState) -> Request:
        """Register ``state`` as its topic's consumer (one per topic) and queue its subscribe."""
        if state.topic in self.consumers:
            raise ValueError(f"this client already consumes {state.topic!r}")
        self.consumers[state.topic] = state
        return self.request(state.command())

    def remove_consumer(self, state: ConsumerState) -> bool:
        """Forget ``state``; True if that queued an unsubscribe (the writer must be woken).

        The unsubscribe hands back every job not acked. With a plain
        subscription to the topic left, they come back at their ack wait instead.
        """
        if self.consumers.get(state.topic) is not state:
            return False
        del self.consumers[state.topic]
        state.offline()
        if not self.online or state.topic in self.subs:
            return False
        self.enqueue(Unsubscribe(state.topic), _ignore)
        return True

    # -- what the server writes ------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Handle the lines ``data`` completes; raise ProtocolError if it is not the protocol."""
        lines = self._lines.feed(data)
        if not lines:
            return
        pending = self.pending
        subs = self.subs
        seen = self.seen
        replies = 0
        try:
            for line in lines:
                outcome = classify(line)
                if outcome is None:
                    continue
                if isinstance(outcome, Received):
                    topic = outcome.topic
                    if outcome.attempt and topic in self.consumers:
                        self.consumers[topic].deliver(outcome)
                        continue
                    targets = self._route(topic) if self._patterns else subs.get(topic)
                    if targets:
                        # max(): a replay goes back below live messages.
                        if outcome.index > seen.get(topic, -1):
                            seen[topic] = outcome.index
                        for sub in targets:
                            if sub.deliver(outcome):
                                self._overflowed(sub)
                    continue
                if not pending:
                    raise ProtocolError(f"a reply with no command to answer: {line[:200]!r}")
                handler = pending.popleft()
                replies += 1
                if handler is not None:
                    handler(outcome, line)
                elif not outcome.success:
                    if not self.failed_publishes:
                        self.first_failure = outcome.reason
                    self.failed_publishes += 1
        finally:
            # Also on a protocol error: flush() counts on every popped handler.
            self.completed += replies

    # -- subscriptions (see the module docstring) --------------------------------

    def _subs_changed(self, key: str) -> None:
        """The subscriptions under ``key`` changed: forget the routes they are in."""
        if self._patterns or is_pattern(key):
            self._patterns = [k for k in self.subs if is_pattern(k)]
            self._routes.clear()

    def _route(self, topic: str) -> list[SubscriptionState] | None:
        """The subscriptions a delivery of ``topic`` goes to: its own, then matching patterns'."""
        route = self._routes.get(topic)
        if route is None:
            subs = self.subs
            route = [*subs.get(topic, ())]
            for pattern in self._patterns:
                if matches(pattern, topic):
                    route.extend(subs[pattern])
            if len(self._routes) >= MAX_ROUTES:
                self._routes.clear()
            self._routes[topic] = route
        return route

    def _overflowed(self, sub: SubscriptionState) -> None:
        # deliver() has ended it; leaving the topic may unsubscribe.
        self.remove(sub)

    def _subscribe(self, command: Subscribe, subs: list[SubscriptionState]) -> None:
        """Queue ``command`` on behalf of ``subs``, fenced when its replay needs to be."""
        topic = command.topic
        fenced = command.cache and any(sub.position is None for sub in self.subs.get(topic, ()))
        self.enqueue(command, partial(self._subscribe_answered, topic, subs, fenced))
        if fenced:
            # Queued in the same synchronous step: one write carries both lines.
            self.enqueue(Subscribe(topic, cache=False), partial(self._fence_answered, topic))

    def _subscribe_answered(
        self,
        topic: str,
        subs: list[SubscriptionState],
        fenced: bool,
        outcome: Reply | ConnectionLostError,
        line: bytes,
    ) -> None:
        if isinstance(outcome, ConnectionLostError):
            # Reconnection re-issues it (or closing the client fails the subscriptions).
            return
        if outcome.success:
            floor = self.seen.get(topic)
            for sub in subs:
                sub.activate(self.epoch, floor)
            if fenced:
                # Its replay comes next: the fence's reply says when it is over.
                for sub in self.subs.get(topic, ()):
                    sub.fence()
        else:
            error = ServerError(outcome.reason)
            for sub in subs:
                sub.fail(error)
                self.remove(sub)

    def _fence_answered(
        self, topic: str, outcome: Reply | ConnectionLostError, line: bytes
    ) -> None:
        """The replay before the fence is over, whatever the reply says."""
        if isinstance(outcome, ConnectionLostError):
            return  # connection_lost() lifted the fence; the resubscription decides anew.
        floor = self.seen.get(topic)
        for sub in self.subs.get(topic, ()):
            sub.unfence(floor)

    def _unsubscribed(self, topic: str, outcome: Reply | ConnectionLostError, line: bytes) -> None:
        """Whatever the reply, the topic's deliveries are over.

        So what the connection has seen of the topic is no floor for a later
        subscription: messages sent from now on do not reach it.
        """
        self.seen.pop(topic, None)

    def _resubscribe(self, epoch_changed: bool) -> None:
        """After a reconnection, re-issue every topic's subscription from where it stopped."""
        for topic, subs in self.subs.items():
            for sub in subs:
                sub.resume(self.epoch, epoch_changed=epoch_changed)
            positions = [sub.position for sub in subs if sub.position is not None]
            # One subscribe per topic, from the least advanced subscription;
            # the others drop the replayed copies they already have.
            command = (
                Subscribe(topic, min(positions)) if positions else Subscribe(topic, cache=False)
            )
            self._subscribe(command, list(subs))


def _ignore(outcome: Reply | ConnectionLostError, line: bytes) -> None:
    """The reply to a consumer's unsubscribe: nothing waits for it (nor counts it as lost)."""

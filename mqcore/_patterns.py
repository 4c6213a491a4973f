"""Pattern subscriptions (``orders.*``, ``orders.>``): routing a topic to them in O(tokens).

Patterns are :mod:`mqcore._subjects`'s (NATS style: ``*`` one token, ``>``
one or more trailing tokens). Rules:

- **A subscribe to a pattern** is a *pattern subscription* of that
  connection: every message sent to a matching topic reaches it, as the very
  bytes object the topic's exact subscribers get (a delivery names its own
  topic and index). A malformed pattern (an empty token, ``>`` not last) is
  refused with ``Malformed pattern: ...``; ``last_seen`` with a pattern is
  refused (indices are per topic: one number cannot say where to resume in
  each), the client resumes per topic by dropping what it already has.
  ``unsubscribe`` of a pattern removes exactly that pattern subscription;
  neither touches the connection's exact subscriptions or other patterns.
- **Once per connection.** A connection subscribed to a topic exactly and
  through patterns (or through several patterns) gets each message once:
  the targets of a topic are its exact subscribers, then every other
  connection with a matching pattern, each once. A ``one`` message goes to
  exactly one of those targets.
- **Cost.** Patterns live in a trie keyed by token (``*`` and ``>`` are keys
  too): matching a topic walks its tokens, following the literal and the
  ``*`` child at each step, collecting ``>`` subscribers on the way, so it
  costs O(tokens x live branches), never O(pattern subscriptions). Each
  topic caches its merged targets with the table's *generation*; any
  pattern change bumps the generation and any change of a topic's exact
  subscribers stales its own cache, so a send to a topic pays the trie walk
  once per change, not per message. With no pattern subscription at all a
  send pays one attribute test.
- **Replay.** A subscribe to a pattern (with ``cache``) replays every
  matching topic's cache, topics in name order, each in index order; it
  consumes the ``one`` messages it replays, as an exact replay does. The
  matching topics are found in a trie of the names of the topics that cache
  something (:class:`TopicIndex`), built at the first pattern replay and kept
  up to date from then on (a topic enters when its cache stops being empty
  and leaves when it empties): a replay walks only names the pattern can
  reach, and every topic it finds holds at least one message to replay, so
  its work is bounded per replayed message, never per topic.
- **Bounds.** A pattern is a topic name, so it is bounded by
  ``max_topic_bytes``; pattern subscriptions over the whole broker are bounded
  by ``max_topics`` (past it: ``Too many pattern subscriptions``). Pattern
  subscribers never keep a topic alive: a topic whose only subscribers are
  patterns is *idle* (evictable, forgotten when it caches nothing), as topic
  forgetting requires, and a later send numbers it from the index floor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Generic, TypeVar

from ._connection import Connection
from ._state import Topic
from ._subjects import MULTI, SINGLE

V = TypeVar("V")

__all__ = ["PatternTable", "TopicIndex"]


class _Node:
    """One token of the pattern trie; ``subscribers`` hold the patterns ending here."""

    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        # A dict used as an ordered set: delivery order follows subscription order.
        self.subscribers: dict[Connection, None] = {}


_NO_TARGETS: Final[dict[Connection, None]] = {}


class PatternTable:
    """Every pattern subscription of a broker, in a trie, bounded by ``max_patterns``."""

    __slots__ = ("_root", "by_connection", "count", "generation", "max_patterns")

    def __init__(self, max_patterns: int) -> None:
        self.max_patterns = max_patterns
        self._root = _Node()
        #: Each connection's patterns: what makes dropping a connection O(its patterns).
        self.by_connection: dict[Connection, set[str]] = {}
        #: Pattern subscriptions over all connections (0: the send path skips routing).
        self.count = 0
        #: Bumped by every change; a topic's cached targets hold the one they were made at.
        self.generation = 0

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(self, conn: Connection, pattern: str) -> bool:
        """Add ``conn``'s subscription to ``pattern`` (idempotent); False if over the bound."""
        patterns = self.by_connection.get(conn)
        if patterns is not None and pattern in patterns:
            return True
        if self.count >= self.max_patterns:
            return False
        node = self._root
        for token in pattern.split("."):
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            node = child
        node.subscribers[conn] = None
        if patterns is None:
            patterns = self.by_connection[conn] = set()
        patterns.add(pattern)
        self.count += 1
        self.generation += 1
        return True

    def unsubscribe(self, conn: Connection, pattern: str) -> None:
        """Remove ``conn``'s subscription to ``pattern``, if it has one."""
        patterns = self.by_connection.get(conn)
        if patterns is None or pattern not in patterns:
            return
        patterns.discard(pattern)
        if not patterns:
            del self.by_connection[conn]
        self._remove(conn, pattern)

    def drop_connection(self, conn: Connection) -> None:
        """Remove every pattern subscription of ``conn``."""
        for pattern in self.by_connection.pop(conn, ()):
            self._remove(conn, pattern)

    def _remove(self, conn: Connection, pattern: str) -> None:
        path = [self._root]
        for token in pattern.split("."):
            path.append(path[-1].children[token])
        del path[-1].subscribers[conn]
        # Prune the branch back up to the first node still in use.
        tokens = pattern.split(".")
        for depth in range(len(tokens), 0, -1):
            node = path[depth]
            if node.subscribers or node.children:
                break
            del path[depth - 1].children[tokens[depth - 1]]
        self.count -= 1
        self.generation += 1

    # -- routing -------------------------------------------------------------------

    def match(self, name: str) -> dict[Connection, None]:
        """The connections with a pattern matching topic ``name``, each once."""
        root = self._root
        if not root.children:
            return _NO_TARGETS
        found: dict[Connection, None] = {}
        nodes = [root]
        for token in name.split("."):
            following: list[_Node] = []
            for node in nodes:
                children = node.children
                rest = children.get(MULTI)
                if rest is not None:
                    # `>` matches this token and everything after it.
                    found.update(rest.subscribers)
                child = children.get(token)
                if child is not None:
                    following.append(child)
                if token != SINGLE:
                    child = children.get(SINGLE)
                    if child is not None:
                        following.append(child)
            if not following:
                return found
            nodes = following
        for node in nodes:
            found.update(node.subscribers)
        return found

    def targets(self, topic: Topic) -> list[Connection]:
        """Who gets a message sent to ``topic``: exact subscribers, then pattern ones, each once."""
        if topic.targets_generation == self.generation:
            return topic.targets
        exact = topic.subscribers
        matched = self.match(topic.name)
        if not matched:
            # The exact list itself: it stays right as it changes.
            targets = exact
        elif not exact:
            targets = list(matched)
        else:
            # Connection.topics says, in O(1), whether it is an exact subscriber.
            name = topic.name
            targets = list(exact)
            targets.extend(c for c in matched if name not in c.topics)
        topic.targets = targets
        topic.targets_generation = self.generation
        return targets


class _NameNode(Generic[V]):
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _NameNode[V]] = {}
        self.value: V | None = None


class NameIndex(Generic[V]):
    """Values by name, in a trie by token: the names a pattern matches.

    Adding or removing a name costs O(its tokens); :meth:`matching` visits
    only the trie nodes the pattern can reach, never the other names.
    """

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _NameNode[V] = _NameNode()

    def add(self, name: str, value: V) -> None:
        """Index ``value`` under ``name`` (replacing what was there)."""
        node = self._root
        for token in name.split("."):
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _NameNode()
            node = child
        node.value = value

    def remove(self, name: str, only: V | None = None) -> None:
        """Forget ``name`` (only if ``only`` is what it holds, when given)."""
        tokens = name.split(".")
        path = [self._root]
        for token in tokens:
            child = path[-1].children.get(token)
            if child is None:
                return
            path.append(child)
        if path[-1].value is None or (only is not None and path[-1].value is not only):
            return
        path[-1].value = None
        # Prune the branch back up to the first node still in use.
        for depth in range(len(tokens), 0, -1):
            node = path[depth]
            if node.value is not None or node.children:
                break
            del path[depth - 1].children[tokens[depth - 1]]

    def matching(self, pattern: str) -> list[V]:
        """The values of the names ``pattern`` (well formed) matches, in no order."""
        nodes = [self._root]
        found: list[V] = []
        for token in pattern.split("."):
            if token == MULTI:
                # One or more further tokens: every name below these nodes.
                stack = [c for node in nodes for c in node.children.values()]
                while stack:
                    node = stack.pop()
                    if node.value is not None:
                        found.append(node.value)
                    stack.extend(node.children.values())
                return found
            if token == SINGLE:
                nodes = [c for node in nodes for c in node.children.values()]
            else:
                nodes = [c for node in nodes if (c := node.children.get(token)) is not None]
            if not nodes:
                return found
        found.extend(node.value for node in nodes if node.value is not None)
        return found


class TopicIndex:
    """Topics by name (a :class:`NameIndex`): which topics a pattern matches."""

    __slots__ = ("_names",)

    def __init__(self, topics: Iterable[Topic]) -> None:
        self._names: NameIndex[Topic] = NameIndex()
        for topic in topics:
            self.add(topic)

    def add(self, topic: Topic) -> None:
        """Index ``topic`` under its name."""
        self._names.add(topic.name, topic)

    def remove(self, topic: Topic) -> None:
        """Forget ``topic`` (if it is the one indexed under its name)."""
        self._names.remove(topic.name, topic)

    def matching(self, pattern: str) -> list[Topic]:
        """The topics ``pattern`` (well formed) matches, in name order."""
        found = self._names.matching(pattern)
        found.sort(key=_name)
        return found


def _name(topic: Topic) -> str:
    return topic.name

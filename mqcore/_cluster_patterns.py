"""Pattern subscriptions in cluster mode: every matching topic of the cluster, with replay.

A pattern subscriber on a node must see what it would see on one broker:
live messages of every matching topic, whichever node they were sent on and
whenever the topic was created, and a replay of the matching topics' caches.
The node learns topic names from the backend's *registry* (every topic ever
sent to, bounded; see ``mqcore_tcp.cluster._registry``) and from its
*announcements* of new topics. Rules:

- **Subscribe.** A pattern subscribe is validated as on one node (name
  length, malformed pattern, no ``last_seen``, at most ``max_topics`` pattern
  subscriptions). Its connection then pauses while the node reads the
  registry (:attr:`~mqcore._cluster.ClusterWork.scans`, answered by
  :meth:`PatternMirrors.scanned`); every matching topic gets a mirror (loaded
  as for an exact subscriber, taking the cached ``one`` messages when the
  subscribe asks for the cache). Once every one of them is loaded the reply
  is written, then the replay: matching topics in name order, each in index
  order (cached ``one`` messages it took included: consumed once, as on one
  node), then live deliveries, with no gap or duplicate (the mirrors' caches
  are kept from live deliveries meanwhile).
- **New topics.** An announced topic (:meth:`PatternMirrors.topic_created`)
  that a pattern subscription here matches gets a mirror expected from index
  0: its load hands the current pattern subscribers what the backend's cache
  holds of it (the core's gap rule), then live batches follow. A message of
  it sent, uncached, before this node heard of the topic is not seen (the
  window is about one Redis round trip after the topic's first send).
- **Keeping mirrors.** A mirror opened for patterns stays while a pattern
  subscription (or a waiting pattern subscribe) matches it; it is dropped as
  an exact mirror is when none does. Its targets are the matching pattern
  subscribers (each once), cached per pattern-table generation, so a batch
  pays a trie walk only after a pattern change. They count as the topic's
  local subscribers for picking this node for ``one`` messages.
- **Cost of a pattern change.** Only a removal can release a mirror, and only
  one the removed pattern matched: the broker records the patterns it removes
  (:meth:`PatternMirrors.removing`) and the next check (:meth:`released`)
  rechecks the mirrored names they match, found in a trie of those names, not
  every name. The table's generation and count say how many removals there
  were (each change bumps the generation, a subscribe adds one to the count, a
  removal takes one): if more than were recorded (a removal by another path),
  or more than ``_REMOVED_BOUND`` were, every name is checked once. Whether a
  waiting subscribe wants a name is a count per name, so a check is O(1) plus
  one trie match.
- **Bounds.** Mirrors opened for patterns are at most ``max_topics`` (the
  single-node limit on topics and on pattern subscriptions): a subscribe whose
  matches would pass it is refused with ``Too many topics`` (nothing
  mirrored); an announced topic past it is not mirrored and is counted in
  :attr:`PatternMirrors.skipped`. The registry holds names only, bounded by
  the node; names in it that are not topics (too long, patterns) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ._connection import Connection
from ._patterns import NameIndex
from ._protocol import REFUSED, SUCCESS, Reason, Subscribe
from ._subjects import is_pattern, matches

if TYPE_CHECKING:
    from ._cluster import ClusterBroker
    from ._cluster_batch import Delivered, Mirror

__all__ = ["PatternMirrors"]

#: Removed patterns recorded between two checks; past it, every name is checked once.
_REMOVED_BOUND = 64


class _Wait:
    """A pattern subscribe waiting for the registry, then for its topics' mirrors."""

    __slots__ = ("command", "conn", "loading", "names", "ones", "wanted")

    def __init__(self, conn: Connection, command: Subscribe) -> None:
        self.conn = conn
        self.command = command
        #: The matching topics in name order (None: the registry not read yet).
        self.names: list[str] | None = None
        self.wanted: set[str] = set()
        self.loading: set[str] = set()
        #: Cached ``one`` messages its loads took, by topic.
        self.ones: dict[str, list[Delivered]] = {}


class _Names:
    """The names mirrored for patterns, also in a :class:`NameIndex`: the ones a pattern matches."""

    __slots__ = ("_index", "_set")

    def __init__(self) -> None:
        self._index: NameIndex[str] = NameIndex()
        self._set: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._set

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self) -> Iterator[str]:
        return iter(self._set)

    def add(self, name: str) -> None:
        if name not in self._set:
            self._set.add(name)
            self._index.add(name, name)

    def discard(self, name: str) -> None:
        if name in self._set:
            self._set.discard(name)
            self._index.remove(name)

    def matching(self, pattern: str) -> list[str]:
        """The names ``pattern`` (well formed) matches."""
        return self._index.matching(pattern)


class PatternMirrors:
    """The pattern side of a :class:`~mqcore._cluster.ClusterBroker` (see this module)."""

    __slots__ = (
        "_announced",
        "_broker",
        "_checked",
        "_count",
        "_removed",
        "_targets",
        "_waits",
        "_wanted",
        "limit",
        "names",
        "rechecked",
        "skipped",
    )

    def __init__(self, broker: ClusterBroker) -> None:
        self._broker = broker
        #: At most this many mirrors opened for patterns.
        self.limit = broker.max_topics
        #: The topics mirrored because a pattern wants them.
        self.names = _Names()
        #: Announced topics a pattern matched but the bound kept from being mirrored.
        self.skipped = 0
        #: Mirrored names checked again after pattern removals, in all (the cost of churn).
        self.rechecked = 0
        self._waits: list[_Wait] = []
        #: How many waiting subscribes want each topic (what keeps() reads).
        self._wanted: dict[str, int] = {}
        # The pattern table's generation and count when names were last checked,
        # and the patterns removed since (None: too many, check every name).
        self._checked = broker._table.patterns.generation
        self._count = broker._table.patterns.count
        self._removed: list[str] | None = []
        self._targets: dict[str, tuple[int, list[Connection]]] = {}
        self._announced: set[str] = set()  # announced topics whose first load is under way

    # -- the broker's side -----------------------------------------------------------

    def subscribe(self, conn: Connection, command: Subscribe) -> None:
        """A subscribe to a pattern: validated, then paused until its mirrors are loaded."""
        broker = self._broker
        pattern = command.topic
        refusal = broker._pattern_refusal(command)
        if refusal is not None:
            broker._fail(conn, refusal)
        elif self._over_bound(conn, pattern):
            broker._fail(conn, REFUSED[Reason.TOO_MANY_PATTERNS])
        elif not broker._backend_available:
            broker._fail(conn, REFUSED[Reason.BACKEND_UNAVAILABLE])
        else:
            self._waits.append(_Wait(conn, command))
            broker._held[conn.id] = []
            broker._work.scans.append(pattern)

    def keeps(self, name: str) -> bool:
        """Whether a pattern (or a waiting pattern subscribe) keeps topic ``name`` mirrored.

        False forgets it here: the broker drops its mirror.
        """
        if name in self._wanted:
            return True
        patterns = self._broker._table.patterns
        if patterns.count and patterns.match(name):
            return True
        self.names.discard(name)
        self._targets.pop(name, None)
        return False

    def removing(self, patterns: Iterable[str]) -> None:
        """The broker is about to remove subscriptions to ``patterns`` (each one removal)."""
        removed = self._removed
        if removed is None:
            return
        removed.extend(patterns)
        if len(removed) > _REMOVED_BOUND:
            self._removed = None

    def released(self) -> list[str]:
        """The pattern mirrors to check again after pattern removals (none if nothing changed)."""
        patterns = self._broker._table.patterns
        changes = patterns.generation - self._checked
        if not changes:
            return []
        # changes = subscribes + removals; count moved by subscribes - removals.
        removals = (changes - (patterns.count - self._count)) // 2
        removed, self._removed = self._removed, []
        self._checked, self._count = patterns.generation, patterns.count
        if not removals or not self.names:
            return []
        names = self.names
        if removed is None or removals > len(removed):
            found = list(names)
        elif len(removed) == 1:
            found = names.matching(removed[0])
        else:
            unique: dict[str, None] = {}
            for pattern in removed:
                unique.update(dict.fromkeys(names.matching(pattern)))
            found = list(unique)
        self.rechecked += len(found)
        return found

    def targets(self, name: str) -> list[Connection]:
        """The local pattern subscribers of topic ``name`` (which has no exact subscriber here)."""
        patterns = self._broker._table.patterns
        cached = self._targets.get(name)
        if cached is not None and cached[0] == patterns.generation:
            return cached[1]
        targets = list(patterns.match(name))
        if name in self.names:
            self._targets[name] = (patterns.generation, targets)
        return targets

    def target_count(self, name: str) -> int:
        """Local subscribers of topic ``name``, exact and pattern, each once (weights ``one``)."""
        topic = self._broker._topics.get(name)
        patterns = self._broker._table.patterns
        if topic is None:
            return len(self.targets(name)) if patterns.count else 0
        return len(patterns.targets(topic)) if patterns.count else len(topic.subscribers)

    def rescan(self) -> None:
        """After a reconnect: read the registry again for every pattern (announcements missed)."""
        patterns = self._broker._table.patterns
        found = {p for ps in patterns.by_connection.values() for p in ps}
        self._broker._work.scans.extend(sorted(found))

    def loaded(self, name: str, ones: list[Delivered]) -> list[Delivered]:
        """Topic ``name``'s mirror is loaded: waiting subscribes may go on. The ``ones`` left."""
        for wait in list(self._waits):
            if name in wait.loading and wait in self._waits:
                wait.loading.discard(name)
                if ones and wait.command.cache:
                    wait.ones[name], ones = ones, []
                self._complete(wait)
        if name in self._announced:
            # Cached `one` messages of a topic new to this node: its pattern
            # subscribers are their consumers, as on one node.
            self._announced.discard(name)
            targets = self.targets(name) if ones else []
            broker = self._broker
            for _, _, line in ones if targets else ():
                broker._emit(targets[broker._pick_target(None, len(targets))], line)
            if targets:
                ones = []
        return ones

    def load_failed(self, name: str) -> None:
        """Topic ``name``'s load failed: the subscribes waiting for it are refused."""
        self._announced.discard(name)
        for wait in list(self._waits):
            if name in wait.loading and wait in self._waits:
                self._refuse(wait, REFUSED[Reason.BACKEND_UNAVAILABLE])

    # -- the node's side -------------------------------------------------------------

    def scanned(self, pattern: str, registry: Iterable[str]) -> None:
        """The registry's topic names, read for ``pattern``: mirror what it matches."""
        names = sorted(n for n in registry if self._is_topic(n) and matches(pattern, n))
        mirrors = self._broker._mirrors
        waits = [w for w in self._waits if w.names is None and w.command.topic == pattern]
        if not waits:  # a rescan: as if each were announced now
            for name in names:
                self.topic_created(name)
            return
        for wait in waits:
            new = [n for n in names if n not in mirrors]
            if len(self.names) + len(new) > self.limit:
                self._refuse(wait, REFUSED[Reason.TOO_MANY_TOPICS])
                continue
            wait.names = names
            wait.wanted = set(names)
            wanted = self._wanted
            for name in wait.wanted:
                wanted[name] = wanted.get(name, 0) + 1
            for name in names:
                mirror = mirrors.get(name)
                if mirror is None:
                    self._open(name, wait.command.cache)
                    wait.loading.add(name)
                elif mirror.loading:
                    wait.loading.add(name)
                else:
                    self.names.add(name)
            self._complete(wait)

    def scan_failed(self, pattern: str) -> None:
        """The registry was not read: the subscribes to ``pattern`` waiting for it are refused."""
        for wait in list(self._waits):
            if wait.names is None and wait.command.topic == pattern:
                self._refuse(wait, REFUSED[Reason.BACKEND_UNAVAILABLE])

    def topic_created(self, name: str) -> None:
        """The backend announced topic ``name``: mirror it if a pattern here matches it."""
        patterns = self._broker._table.patterns
        if not patterns.count or name in self._broker._mirrors or not self._is_topic(name):
            return
        if not patterns.match(name):
            return
        if len(self.names) >= self.limit:
            self.skipped += 1
            return
        # Expected from index 0: its load delivers what the cache holds of it.
        self._open(name, True).next = 0
        self._announced.add(name)

    # -- helpers ------------------------------------------------------------------------

    def _over_bound(self, conn: Connection, pattern: str) -> bool:
        """Whether ``conn`` subscribing to ``pattern`` passes the bound (again is no more)."""
        patterns = self._broker._table.patterns
        if pattern in patterns.by_connection.get(conn, ()):
            return False
        return patterns.count >= patterns.max_patterns

    def _is_topic(self, name: str) -> bool:
        return bool(name) and not is_pattern(name) and not self._broker._table.name_too_long(name)

    def _open(self, name: str, take_ones: bool) -> Mirror:
        mirror = self._broker._new_mirror(name, take_ones)
        self.names.add(name)
        return mirror

    def _complete(self, wait: _Wait) -> None:
        """Subscribe ``wait``'s connection once every mirror it needs is loaded."""
        if wait.names is None or wait.loading:
            return
        self._end_wait(wait)
        broker = self._broker
        conn = wait.conn
        if broker._connections.get(conn.id) is not conn or conn.closing:
            self._give_back(wait)
            broker._resume(conn)
            return
        if not broker._table.patterns.subscribe(conn, wait.command.topic):
            self._refuse(wait, REFUSED[Reason.TOO_MANY_PATTERNS], waiting=False)
            return
        broker._emit(conn, SUCCESS)
        if wait.command.cache:
            for name in wait.names:
                mirror = broker._mirrors.get(name)
                replay = [] if mirror is None else list(mirror.cache)
                replay += [(index, line) for index, _, line in wait.ones.get(name, ())]
                replay.sort(key=_index)
                for _, line in replay:
                    broker._emit(conn, line)
        broker._resume(conn)

    def _refuse(self, wait: _Wait, reply: bytes, *, waiting: bool = True) -> None:
        if waiting:
            self._end_wait(wait)
        self._broker._fail(wait.conn, reply)
        self._give_back(wait)
        self._broker._resume(wait.conn)

    def _end_wait(self, wait: _Wait) -> None:
        """``wait`` is no longer waiting: it keeps no topic mirrored any more."""
        self._waits.remove(wait)
        wanted = self._wanted
        for name in wait.wanted:
            left = wanted[name] - 1
            if left:
                wanted[name] = left
            else:
                del wanted[name]

    def _give_back(self, wait: _Wait) -> None:
        """Return the ``one`` messages ``wait`` took; drop mirrors nobody wants now."""
        broker = self._broker
        for name, ones in wait.ones.items():
            broker._return(name, ones)
        wait.ones = {}
        broker._left(sorted(wait.wanted))


def _index(entry: tuple[int, bytes]) -> int:
    return entry[0]

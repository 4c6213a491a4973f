"""Topic names as ``.``-separated tokens, and patterns over them (NATS style).

A *pattern* is a topic name with at least one wildcard token: ``*`` stands
for exactly one token, ``>`` (only as the last token) for one or more
trailing tokens. ``orders.*`` matches ``orders.eu`` but not ``orders`` or
``orders.eu.1``; ``orders.>`` matches both of the latter. A wildcard counts
only as a whole token: ``orders*`` and ``a.b>`` are plain names.

Plain names are free-form, as in the reference protocol (any string, empty
tokens included); only sending to a name that *is* a pattern is refused,
since a subscriber of that pattern could not tell it from a match. A pattern
must be well formed: no empty token, ``>`` last. This module is shared by
routing (subscriptions to patterns) and permissions (allow/deny lists), so
both agree on what a pattern matches.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EMPTY_TOKEN",
    "MULTI",
    "MULTI_NOT_LAST",
    "SINGLE",
    "covers",
    "is_pattern",
    "matches",
    "pattern_problem",
    "tokens",
]

#: Matches exactly one token.
SINGLE: Final = "*"
#: Matches one or more trailing tokens (last token only).
MULTI: Final = ">"

#: What :func:`pattern_problem` says of a pattern with an empty token.
EMPTY_TOKEN: Final = "a pattern has no empty tokens"
#: What :func:`pattern_problem` says of a pattern with ``>`` before its end.
MULTI_NOT_LAST: Final = "'>' may only be the last token"


def tokens(name: str) -> list[str]:
    """The tokens of a topic name or pattern."""
    return name.split(".")


def is_pattern(name: str) -> bool:
    """Whether ``name`` has a wildcard token (then it is a pattern, not a topic)."""
    if "*" not in name and ">" not in name:
        return False  # the common case, decided without splitting
    return any(token in (SINGLE, MULTI) for token in name.split("."))


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a well-formed pattern, or None if it is."""
    parts = pattern.split(".")
    if any(not token for token in parts):
        return EMPTY_TOKEN
    if MULTI in parts[:-1]:
        return MULTI_NOT_LAST
    return None


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` (a plain name) matches ``pattern`` (a pattern or a plain name).

    A plain-name pattern matches only itself. O(tokens).
    """
    if pattern == topic:
        return True
    return is_pattern(pattern) and covers(pattern, topic)


def covers(allow: str, wanted: str) -> bool:
    """Whether every topic that ``wanted`` (a topic or a pattern) matches, ``allow`` matches.

    For a plain ``wanted`` this is :func:`matches`; for a pattern, ``allow``
    must reach at least as far at every token (permissions, ``mqcore._auth``).
    """
    if allow in (wanted, MULTI):
        return True
    have = allow.split(".")
    want = wanted.split(".")
    for i, token in enumerate(have):
        if token == MULTI:
            return len(want) > i
        if i >= len(want):
            return False
        if want[i] == MULTI:
            return False  # `wanted` reaches topics longer than `allow` can
        if token != SINGLE and token != want[i]:
            return False  # a literal covers only itself (not a `*` in `wanted`)
    return len(want) == len(have)

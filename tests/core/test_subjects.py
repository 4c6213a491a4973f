"""Patterns over ``.``-separated topic names: what matches what, and what is well formed."""

from __future__ import annotations

import pytest

from mqcore._subjects import is_pattern, matches, pattern_problem


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders", "orders", True),
        ("orders", "orders.eu", False),
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.eu.1", False),
        ("orders.>", "orders.eu", True),
        ("orders.>", "orders.eu.1", True),
        ("orders.>", "orders", False),
        ("*.eu", "orders.eu", True),
        ("*.eu", "orders.us", False),
        ("*", "orders", True),
        ("*", "orders.eu", False),
        (">", "orders", True),
        (">", "orders.eu.1", True),
        ("a.*.c.>", "a.b.c.d.e", True),
        ("a.*.c.>", "a.b.x.d", False),
        ("orders*", "ordersX", False),  # a wildcard counts only as a whole token
        ("orders*", "orders*", True),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("name", "pattern"),
    [("a.b", False), ("a.*", True), ("a.>", True), ("a*", False), ("a.b>", False), (">", True)],
)
def test_is_pattern(name: str, pattern: bool) -> None:
    assert is_pattern(name) is pattern


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("a.*", True),
        ("a.>", True),
        ("*.*.>", True),
        ("a..*", False),
        ("a.>.b", False),
        (".*", False),
    ],
)
def test_pattern_problem(pattern: str, ok: bool) -> None:
    assert (pattern_problem(pattern) is None) is ok

"""Shared fixtures: anyio's built-in pytest plugin runs async tests on asyncio by default."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The one idiom for a test (or module, as ``pytestmark``) that runs on both backends.
BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio unless a test asks for trio too."""
    return "asyncio"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A server's ``--data-dir``: a path in a fresh temporary directory, not yet created."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "data"

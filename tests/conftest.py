"""Shared fixtures: anyio's built-in pytest plugin runs async tests on asyncio by default."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio unless a test asks for trio too."""
    return "asyncio"

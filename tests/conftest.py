"""Shared fixtures: anyio's built-in pytest plugin runs async tests on asyncio by default.

Before anything runs, a compiled core older than its sources stops the
session: the editable install builds it in place (see setup.py), so an edit
of ``mqcore/`` is not what would be tested until it is compiled again.
"""

from __future__ import annotations

import importlib.machinery
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import mqcore


def stale_compiled_modules() -> list[str]:
    """The core's sources changed (or gone) since this Python's compiled modules were built."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # this interpreter's: .cpython-313-...so
    stale = []
    for built in Path(mqcore.__file__).parent.glob("*" + suffix):
        source = built.with_name(built.name.removesuffix(suffix) + ".py")
        if not source.exists() or source.stat().st_mtime > built.stat().st_mtime:
            stale.append(source.name)
    return sorted(stale)


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_compiled_modules()
    if stale:
        pytest.exit(
            f"the compiled core is older than {', '.join(stale)}: run `make test`, or "
            "`MQCORE_COMPILE=1 pip install --no-deps -e .` to compile it again",
            returncode=3,
        )

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

"""Packaging: setuptools (metadata in pyproject.toml), plus the optional compiled core.

``MQCORE_COMPILE=1 pip install .`` compiles the core's modules with mypyc
(a C compiler and the Python headers needed); without it the pure-Python core
is installed, which needs nothing but Python. The two are the same source and
pass the same tests: ``make test`` runs the suite on the oldest Python with
the pure core and on the newest with the compiled one. An explicit
``MQCORE_COMPILE=1`` that cannot compile is an error, never a silent fallback.

Left pure: the modules that define msgspec Structs (mypyc drops the class
keywords, such as ``tag=``, that msgspec reads), the package's ``__init__``
and its version, and the in-memory store (tests subclass it, and Python
classes cannot subclass compiled ones).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

PURE = {"__init__.py", "_version.py", "_protocol.py", "_records.py", "_state.py", "_store.py"}


def compiled_modules() -> list[str]:
    """The core's modules mypyc compiles, by path."""
    core = Path(__file__).parent / "mqcore"
    return sorted(f"mqcore/{p.name}" for p in core.glob("*.py") if p.name not in PURE)


if os.environ.get("MQCORE_COMPILE") == "1":
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(compiled_modules(), opt_level="3"))
else:
    setup()

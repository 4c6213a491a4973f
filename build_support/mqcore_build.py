"""The build backend: setuptools', asking for mypy only when the compiled core is wanted.

``MQCORE_COMPILE=1`` (see setup.py) needs mypyc, which ships with mypy, in
the isolated build environment; a plain install does not download it.
"""

from __future__ import annotations

import os

from setuptools.build_meta import *  # noqa: F403  (the rest of the backend, as it is)

#: What compiling the core adds to the build's requirements: mypyc, and the
#: types the core uses (mypyc compiles from them).
COMPILE_REQUIRES = ["mypy>=1.10", "msgspec>=0.18"]


def _compile_requires() -> list[str]:
    return COMPILE_REQUIRES if os.environ.get("MQCORE_COMPILE") == "1" else []


# Not setuptools' own hooks: they run setup.py to find its setup_requires
# (there are none), which would import mypyc before it is installed.
def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    return _compile_requires()


def get_requires_for_build_editable(config_settings: dict[str, str] | None = None) -> list[str]:
    return _compile_requires()

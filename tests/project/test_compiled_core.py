"""The optional compiled core: the suite runs the core `make test` asked for, and a
plain install needs no compiler.

``make test`` runs the suite on the oldest Python with the pure core and on the
newest with the core compiled by mypyc, telling each which it must find in
``MQCORE_EXPECT_COMPILED``: a build that silently fell back to pure Python (or
a stale compiled core left where the pure one was asked for) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mqcore

ROOT = Path(__file__).resolve().parents[2]


def test_the_suite_runs_the_core_make_test_asked_for() -> None:
    expected = os.environ.get("MQCORE_EXPECT_COMPILED")
    if expected is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs the suite through `make test`, which sets MQCORE_EXPECT_COMPILED")
        pytest.skip("not run by `make test`: no core was asked for")
    compiled_asked = expected == "1"
    assert mqcore.COMPILED is compiled_asked


def test_a_plain_install_builds_a_pure_wheel_without_a_compiler(tmp_path: Path) -> None:
    # No MQCORE_COMPILE, and a C compiler that always fails: the wheel is the
    # pure-Python core, for any platform.
    env = {**os.environ, "CC": "false", "CXX": "false"}
    env.pop("MQCORE_COMPILE", None)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    wheel_of_root = ["wheel", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)]
    subprocess.run(pip + wheel_of_root, check=True, env=env, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("mqcore-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "mqcore/_commands.py" in names
    assert not [name for name in names if name.endswith(".so")]

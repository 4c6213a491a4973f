"""CI's choice of Pythons (.ci/pythons.py, used by `make test`) and its single command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHONS = ROOT / ".ci" / "pythons.py"
THIS = f"{sys.version_info[0]}.{sys.version_info[1]}"


def chosen(*versions: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(PYTHONS), *versions],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()


def test_ci_runs_exactly_make_test() -> None:
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    assert run[-1] == "make test"


def _stub(directory: Path, name: str, body: str = "") -> None:
    script = directory / name
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}')
    script.chmod(0o755)


def run_ci(tmp_path: Path, installed: tuple[str, ...]) -> list[str]:
    """Run .ci/run on a PATH of stubs (apt-get, make, and the ``installed`` programs); its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    for name in ("apt-get", "make", *installed):
        _stub(bin_dir, name)
    calls = tmp_path / "calls"
    calls.touch()
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": os.environ.get("HOME", "/")}
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, str(ROOT / ".ci" / "run")], env=env, check=True, timeout=60)
    return calls.read_text().splitlines()


INSTALLS = [
    ((), "chromium redis-server"),
    (("chromium",), "redis-server"),
    (("redis-server",), "chromium"),
]


@pytest.mark.parametrize(("installed", "packages"), INSTALLS)
def test_ci_installs_what_is_missing_with_one_update(
    tmp_path: Path, installed: tuple[str, ...], packages: str
) -> None:
    assert run_ci(tmp_path, installed) == [
        "apt-get update -qq",
        f"apt-get install -y -qq {packages}",
        "make test",
    ]


def test_ci_installs_nothing_when_all_is_there(tmp_path: Path) -> None:
    assert run_ci(tmp_path, ("chromium", "redis-server")) == ["make test"]


@pytest.mark.parametrize("versions", [(), ("0.1", "0.2"), ("2.0", "99.9")])
def test_with_no_supported_python_found_python3_runs_it(versions: tuple[str, ...]) -> None:
    assert chosen(*versions) == [f"3={sys.executable}"]


def test_the_running_python_is_found_and_kept_once() -> None:
    (line,) = chosen("0.1", THIS, THIS, "99.9")
    version, path = line.split("=", 1)
    assert version == THIS
    done = subprocess.run(
        [path, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == str(sys.version_info[:2])


def test_only_the_oldest_and_newest_are_chosen() -> None:
    found = [line.split("=", 1)[0] for line in chosen("3.10", "3.11", "3.12", "3.13", "3.14")]
    assert 1 <= len(found) <= 2
    assert found == sorted(found, key=lambda v: tuple(map(int, v.split("."))))

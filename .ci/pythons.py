"""Print the oldest and newest supported Pythons installed here, as `VERSION=PATH` lines.

Used by the Makefile (`make test`). Looks for `pythonX.Y` for each version
given on the command line: pyenv's installs first (their shims only work
for the versions pyenv has enabled), then `PATH`. A candidate counts only if
it runs. Versions that are missing are skipped, never an error; with none
found, this interpreter is the one (printed as `3=PATH`).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys


def runs(path: str) -> bool:
    try:
        done = subprocess.run([path, "-c", ""], capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return done.returncode == 0


def find(version: str) -> str | None:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")
    candidates = sorted(glob.glob(pattern), reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    return next((path for path in candidates if runs(path)), None)


def main() -> None:
    versions = dict.fromkeys(sys.argv[1:])  # once each, in the order given
    found = [(v, path) for v in versions if (path := find(v))]
    # `found` is in the order given (oldest first): keep its two ends.
    chosen = found[:1] + found[1:][-1:] if found else [("3", sys.executable)]
    for version, path in chosen:
        print(f"{version}={path}")


main()

"""What every benchmark script shares: which ports its servers use, and where mqload is.

Rules, so that a plain clone works anywhere:

- **Ports.** ``--port SPEC``: ``0`` (the default) lets each server bind a
  free port and report it (see :mod:`mqcore_tcp.testing`); ``N`` uses port
  ``N`` for every server (they run one after another); ``LO-HI`` hands out
  the ports of that range in turn, for machines where only a range is open.
- **The native load generator** (``mqload``, optional) is looked up in this
  order: ``--mqload PATH`` or ``$MQLOAD`` (given explicitly: a path that is
  not an executable file is an error, never a silent fallback), then
  ``build/mqload/release/mqload`` (where ``--build-mqload`` and the README's
  ``cargo build`` put it), ``../shared/loadgen/target/release/mqload``, and
  ``mqload`` on ``PATH``. Nothing is kept at a fixed temporary path.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BUILD_DIR",
    "LOADGEN_MANIFEST",
    "ROOT",
    "MqloadNotFoundError",
    "add_port_option",
    "build_mqload",
    "find_mqload",
    "port_spec",
]

ROOT = Path(__file__).resolve().parent.parent
#: Where ``--build-mqload`` (and the README's cargo command) builds mqload.
BUILD_DIR = ROOT / "build" / "mqload"
#: The load generator's sources, next to the checkout.
LOADGEN_MANIFEST = ROOT.parent / "shared" / "loadgen" / "Cargo.toml"


class MqloadNotFoundError(Exception):
    """An mqload path given explicitly is not an executable file."""


def _executable(path: str | Path) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def find_mqload(explicit: str | Path | None = None) -> str | None:
    """The mqload binary to use, or ``None`` when none is built (see the module docstring).

    Raises :class:`MqloadNotFoundError` when ``explicit`` (or ``$MQLOAD``) names
    no executable file.
    """
    for given, source in ((explicit, "--mqload"), (os.environ.get("MQLOAD"), "$MQLOAD")):
        if given:
            if not _executable(given):
                raise MqloadNotFoundError(f"{source} {given}: not an executable file")
            return str(given)
    candidates = [
        BUILD_DIR / "release" / "mqload",
        LOADGEN_MANIFEST.parent / "target" / "release" / "mqload",
    ]
    for candidate in candidates:
        if _executable(candidate):
            return str(candidate)
    return shutil.which("mqload")


def build_mqload() -> str | None:
    """Build mqload with cargo into :data:`BUILD_DIR`; its path, or ``None`` if it cannot be."""
    cargo = shutil.which("cargo")
    if cargo is None or not LOADGEN_MANIFEST.is_file():
        return None
    print(f"building mqload into {BUILD_DIR} ...", file=sys.stderr)
    command = [cargo, "build", "--release", "--manifest-path", str(LOADGEN_MANIFEST)]
    done = subprocess.run([*command, "--target-dir", str(BUILD_DIR)], check=False)
    binary = BUILD_DIR / "release" / "mqload"
    return str(binary) if done.returncode == 0 and _executable(binary) else None


def port_spec(spec: str) -> Iterator[int]:
    """The ports ``--port SPEC`` hands out, one per server started (endless)."""
    low, sep, high = spec.partition("-")
    try:
        first, last = int(low), int(high) if sep else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port or LO-HI range: {spec!r}") from None
    if not 0 <= first <= last <= 65535 or (sep and first == 0):
        raise argparse.ArgumentTypeError(f"not a port or LO-HI range: {spec!r}")
    return itertools.cycle(range(first, last + 1))


def add_port_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--port SPEC`` (parsed into an iterator of ports as ``args.port``)."""
    parser.add_argument(
        "--port",
        type=port_spec,
        default=port_spec("0"),
        metavar="SPEC",
        help="the servers' port: 0 = any free one (default), N, or a range LO-HI used in turn",
    )

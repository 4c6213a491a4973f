"""Every code block of the README runs as written.

The convention (also stated in the README's Development section):

- A fenced block's info string is its language, then optional words.
  ``python`` and ``sh`` blocks are run; ``sh norun`` marks a shell block
  that is documentation only: a command that serves until stopped
  (``make serve``), builds or installs (``pip install .``, ``cargo``), or
  shows placeholder syntax (``[--count N]``). Python blocks are always run.
  Any other language is an error here, so a block is never skipped by a typo.
- Each block gets a fresh in-memory server (``python -m mqcore_tcp`` on a free
  port, through the shared launcher); the port ``7000`` in a block stands
  for that server's port.
- Python blocks run as ``python -c``-style scripts in a scratch directory;
  shell blocks run with ``bash -e -o pipefail`` in the checkout (for
  ``examples/...`` and ``benchmarks/...``), with the virtual environment's
  ``bin`` first on ``PATH``, as after ``. .venv/bin/activate``.
- A block passes when it exits 0 within :data:`BLOCK_TIMEOUT` seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqcore_tcp.testing import running

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK_TIMEOUT = 60
RUN = {"python", "sh"}
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts, its info string's words and its text."""

    line: int
    language: str
    words: tuple[str, ...]
    code: str

    @property
    def runs(self) -> bool:
        return self.language in RUN and "norun" not in self.words


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    found = []
    for match in FENCE.finditer(text):
        language, *words = match.group(1).split() or [""]
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(line, language, tuple(words), match.group(2)))
    return found


BLOCKS = blocks(README.read_text())


def test_the_fences_are_read_as_expected() -> None:
    sample = "x\n```python\nprint(1)\n```\n\n```sh norun\nmake serve\n```\n```\nplain\n```\n"
    assert blocks(sample) == [
        Block(2, "python", (), "print(1)\n"),
        Block(6, "sh", ("norun",), "make serve\n"),
        Block(9, "", (), "plain\n"),
    ]


def test_every_block_is_run_or_marked() -> None:
    for block in BLOCKS:
        assert block.language in RUN, f"README.md:{block.line}: unknown language {block!r}"
        assert block.language == "sh" or block.runs, f"README.md:{block.line}: python must run"
    # The samples an issue found broken are among those run.
    run = "".join(block.code for block in BLOCKS if block.runs)
    for sample in ("anyio.run(main)", "partial(mqcore_tcp.serve", "SyncClient(", "Broker("):
        assert sample in run
    assert sum(block.runs for block in BLOCKS) >= 8


def command(block: Block, scratch: Path) -> tuple[list[str], Path]:
    if block.language == "python":
        script = scratch / "block.py"
        script.write_text(block.code)
        return [sys.executable, str(script)], scratch
    return ["bash", "-e", "-o", "pipefail", "-c", block.code], ROOT


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.runs], ids=lambda b: f"README.md:{b.line}"
)
def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    with running("--in-memory", cwd=tmp_path) as server:
        code = block.code.replace("7000", str(server.port))
        runnable = Block(block.line, block.language, block.words, code)
        argv, cwd = command(runnable, tmp_path)
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        env.pop("PYTHONPATH", None)
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT
        )
    assert done.returncode == 0, (
        f"README.md:{block.line} exited {done.returncode}\n--- stdout\n{done.stdout}"
        f"\n--- stderr\n{done.stderr}"
    )

"""The core stays free of I/O: it imports nothing that touches sockets, threads or the clock."""

from __future__ import annotations

import ast
from pathlib import Path

import mqcore

FORBIDDEN = {
    "socket", "asyncio", "anyio", "trio", "threading", "time", "random",
    "selectors", "sqlite3", "os", "uuid", "subprocess",
}  # fmt: skip


def test_mqcore_imports_no_io_modules() -> None:
    package = Path(mqcore.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []
    assert len(list(package.glob("*.py"))) >= 5  # the scan did look at the core

"""Smoke test of benchmarks/web_bench.py: it runs and reports every figure. No speed is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import web_bench


def test_web_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "web.json"
    assert web_bench.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    cases = [row["case"] for row in report["throughput"]]
    assert cases == [
        "tcp 1->1, no http listener",
        "tcp 1->1",
        "tcp 1->3",
        "websocket 1->1",
        "websocket 1->3",
    ]
    assert all(row["rate"] > 0 for row in report["throughput"])
    assert set(report["scrape"]) >= {"/metrics", "/api/topics?limit=50"}
    assert report["latency"]["scraping"]["scrapes"] > 0
    assert "delivery latency" in capsys.readouterr().out

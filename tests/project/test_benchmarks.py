"""Smoke tests of the benchmarks: they run and report. No speed is ever asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import core_bench, run


def test_core_bench_reports_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "core.json"
    assert core_bench.main(["--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    names = [case["name"] for case in report["cases"]]
    assert names == ["publish 1->1", "fan-out 1->50", "cache replay"]
    for case in report["cases"]:
        assert case["rate"] > 0
        assert case["name"] in table


@pytest.mark.parametrize("driver", ["python", "auto"])
def test_runner_runs_every_workload(
    driver: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if driver == "auto" and run.find_mqload() is None:
        pytest.skip("mqload is not built: the python driver run covers the runner")
    out = tmp_path / "run.json"
    argv = ["--quick", "--duration", "0.3", "--conns", "50", "--driver", driver, "--json", str(out)]
    status = run.main(argv)
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    results = report["results"]
    assert [r["key"] for r in results] == [w.key for w in run.WORKLOADS]
    failed = [(r["key"], r.get("error")) for r in results if not r["ok"]]
    assert not failed
    assert status == 0
    expected_driver = "python-driver" if driver == "python" else "mqload"
    for r in results:
        assert r["driver"] == expected_driver
        assert r["key"] in table
        assert r["server_exit_status"] == 0
    by_key = {r["key"]: r for r in results}
    assert by_key["throughput-1"]["deliver_rate"] > 0
    assert by_key["latency"]["p99_us"] > 0
    assert min(by_key["conns"]["received"]) == 50


def test_runner_passes_server_args_through(tmp_path: Path) -> None:
    # An option the server rejects makes it exit at once: the runner reports the failure.
    out = tmp_path / "run.json"
    argv = ["--quick", "--workloads", "throughput-1", "--driver", "python"]
    argv += ["--server-arg=--no-such-option", "--json", str(out)]
    assert run.main(argv) == 1
    (result,) = json.loads(out.read_text())["results"]
    assert not result["ok"]
    assert "server exited" in result["error"]

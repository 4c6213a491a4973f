"""Smoke tests of the benchmarks: they run and report. No speed is ever asserted."""

from __future__ import annotations

import argparse
import itertools
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from benchmarks import client_bench, cluster_bench, common, core_bench, durable_bench, run

from ..redis_fixtures import need_cluster_mode

BENCHMARKS = Path(run.__file__).resolve().parent


def test_core_bench_reports_every_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "core.json"
    assert core_bench.main(["--quick", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    names = [case["name"] for case in report["cases"]]
    assert names == ["publish 1->1", "fan-out 1->50", "cache replay", "sub churn 100k"]
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
    assert "exited with status 2 before listening" in result["error"]


def test_runner_uses_the_port_range_it_is_given(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    argv = ["--quick", "--duration", "0.2", "--workloads", "throughput-1,latency"]
    argv += ["--driver", "python", "--port", "0", "--json", str(out)]
    assert run.main(argv) == 0
    free = [r["port"] for r in json.loads(out.read_text())["results"]]
    # Ports the server just chose are free again now: reuse them as a range.
    low, high = min(free), min(free) + 1
    argv[-3:] = [f"{low}-{high}", "--json", str(out)]
    if run.main(argv) != 0:
        pytest.skip("another process took the port meanwhile")
    assert [r["port"] for r in json.loads(out.read_text())["results"]] == [low, high]


PORT_SPECS = [
    ("0", [0, 0, 0]),
    ("7100", [7100, 7100, 7100]),
    ("7100-7101", [7100, 7101, 7100]),
]


@pytest.mark.parametrize(("spec", "ports"), PORT_SPECS)
def test_port_specs(spec: str, ports: list[int]) -> None:
    assert list(itertools.islice(common.port_spec(spec), 3)) == ports


@pytest.mark.parametrize("spec", ["", "x", "-1", "7101-7100", "0-5", "70000", "1-2-3"])
def test_bad_port_specs_are_refused(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        common.port_spec(spec)


def not_an_mqload(tmp_path: Path) -> list[Path]:
    """Paths that name no executable mqload: missing, a directory, a plain file."""
    plain = tmp_path / "plain"
    plain.write_text("")
    return [tmp_path / "missing", tmp_path, plain]


def test_an_explicit_mqload_that_does_not_exist_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in not_an_mqload(tmp_path):
        with pytest.raises(common.MqloadNotFoundError, match="--mqload"):
            common.find_mqload(path)
        for driver in ("auto", "python"):
            assert run.main(["--quick", "--driver", driver, "--mqload", str(path)]) == 2
            assert "not an executable file" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exit_:
            durable_bench.main(["--skip-disk", "--mqload", str(path)])
        assert exit_.value.code == 2
        monkeypatch.setenv("MQLOAD", str(path))
        with pytest.raises(common.MqloadNotFoundError, match="MQLOAD"):
            common.find_mqload()
        monkeypatch.delenv("MQLOAD")


def test_mqload_given_by_the_environment_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mqload"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MQLOAD", str(fake))
    assert common.find_mqload() == str(fake)
    assert common.find_mqload(fake) == str(fake)


def test_nothing_is_hard_coded_under_tmp() -> None:
    for source in BENCHMARKS.glob("*.py"):
        assert "/tmp" not in source.read_text(), source


def test_client_benchmark_runs_against_a_launched_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert client_bench.main(["-n", "200", "--port", "0"]) == 0
    assert "server: subprocess" in capsys.readouterr().out


def test_durable_benchmark_disk_part_runs(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--skip-throughput", "--sends", "500", "--topics", "5", "--cache-size", "10"]
    assert durable_bench.main(argv) == 0
    assert "data dir after a graceful stop" in capsys.readouterr().out


def _cluster_bench_rows(tmp_path: Path, setups: str) -> list[dict[str, Any]]:
    out = tmp_path / "cluster.json"
    assert cluster_bench.main(["--quick", "--setups", setups, "--json", str(out)]) == 0
    rows: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    return rows


def test_cluster_bench_single_node_setup_runs_without_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _cluster_bench_rows(tmp_path, "single")
    assert [(r["setup"], r["case"]) for r in rows] == [
        ("single", case.key) for case in cluster_bench.CASES
    ]
    assert all(r["ok"] for r in rows)
    drivers = {r["case"]: r["driver"] for r in rows}
    throughput = dict.fromkeys(["1->1", "1->50", "one"], "python-driver")
    assert drivers == {**throughput, "latency": "xlatency"}
    assert all(r["undelivered"] == 0 for r in rows if r["workload"] == "throughput")
    assert "1->50    single" in capsys.readouterr().out


def test_cluster_bench_crosses_two_nodes_on_redis(tmp_path: Path) -> None:
    need_cluster_mode()
    rows = _cluster_bench_rows(tmp_path, "cluster,single")
    assert [r["setup"] for r in rows] == ["cluster"] * 4 + ["single"] * 4
    failed = [(r["case"], r.get("error")) for r in rows if not r["ok"]]
    assert not failed
    cluster = rows[0]
    assert set(cluster["cpu_pct"]) == {"redis", "node A", "node B"}


def test_cluster_bench_runs_only_the_cases_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cluster.json"
    argv = ["--quick", "--setups", "single", "--cases", "latency", "--json", str(out)]
    assert cluster_bench.main(argv) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert (row["case"], row["driver"], row["ok"]) == ("latency", "xlatency", True)
    assert row["p50_us"] <= row["p99_us"]
    assert "driver " in capsys.readouterr().out  # the driver's own CPU is shown


def test_cluster_bench_refuses_unknown_cases() -> None:
    with pytest.raises(SystemExit) as exit_:
        cluster_bench.main(["--cases", "latency,warp"])
    assert exit_.value.code == 2


def test_cluster_bench_refuses_unknown_setups() -> None:
    with pytest.raises(SystemExit) as exit_:
        cluster_bench.main(["--setups", "galaxy"])
    assert exit_.value.code == 2

"""The runner's peers (--redis, --nats, --mosquitto) and its ratios. No speed is ever asserted."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run


def _result(variant: str, key: str, **figures: Any) -> dict[str, Any]:
    return {"variant": variant, "key": key, "ok": True, **figures}


def test_ratios_compare_mqcore_with_each_other_variant() -> None:
    results = [
        _result("mqcore", "throughput-1", deliver_rate=600_000.0, broker_cpu_pct=100.0),
        _result("redis", "throughput-1", deliver_rate=1_200_000.0, broker_cpu_pct=50.0),
        _result("mqcore@abc", "throughput-1", deliver_rate=500_000.0),
        _result("mqcore", "latency", rate_achieved=20_000.0, p999_us=1000.0),
        _result("nats", "latency", rate_achieved=20_000.0, p999_us=500.0),
        {"variant": "redis", "key": "pairs", "ok": False, "error": "boom"},
        _result("mqcore", "conns", fanout_ms_median=100.0),
        _result("redis", "conns", fanout_ms_median=80.0),
        _result("mqcore", "pairs", deliver_rate=700_000.0),
    ]
    lines = run.format_ratios(results).splitlines()
    assert lines[0].startswith("ratios")
    # The rate, and the rate per second of the broker's CPU (600k/1.0 against 1.2M/0.5).
    assert any(
        "redis" in line and "per CPU-s 0.25x" in line and line.endswith("0.50x") for line in lines
    )
    assert any("mqcore@abc" in line and line.endswith("1.20x") for line in lines)
    # Latency: the other's p99.9 over mqcore's, so above 1 means mqcore is better.
    assert any("nats" in line and "p99.9" in line and line.endswith("0.50x") for line in lines)
    assert any("conns" in line and "fan-out" in line and line.endswith("0.80x") for line in lines)
    # A failed peer run has no ratio, but is listed.
    assert any("pairs" in line and "redis" in line and line.endswith("-") for line in lines)


def test_no_ratios_when_only_mqcore_ran() -> None:
    assert run.format_ratios([_result("mqcore", "pairs", deliver_rate=1.0)]) == ""


@pytest.mark.parametrize(("option", "binary", "proto"), run.PEERS)
def test_each_peer_runs_in_memory_on_loopback(
    option: str, binary: str, proto: str, tmp_path: Path
) -> None:
    command = run._peer_command(run.Variant(option, proto, peer=binary), tmp_path, 7123)
    assert command[0] == binary
    text = " ".join(command)
    if proto == "mqtt":
        conf = (tmp_path / "mosquitto-7123.conf").read_text()
        assert "listener 7123 127.0.0.1" in conf
    else:
        assert "127.0.0.1" in text
        assert "7123" in text
    if proto == "redis":
        assert "--appendonly no" in text  # persistence off, like mqcore in memory


def test_a_missing_peer_is_skipped_with_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    args = run.parse_args(["--redis", "--nats"])
    assert run._peers(args, "/bin/true") == []
    err = capsys.readouterr().err
    assert "--redis needs redis-server" in err
    assert "--nats needs nats-server" in err

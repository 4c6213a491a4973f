"""The cross-node latency driver (benchmarks/xlatency.py) runs and reports sane figures.

No speed is asserted: only that the figures are ordered, every message in
the window arrived, and failures come back as clear errors, not hangs.
"""

from __future__ import annotations

import socket

import pytest

from benchmarks import xlatency
from mqcore_tcp.testing import running


def test_measures_a_single_node_briefly() -> None:
    with running("--in-memory") as node:
        result = xlatency.run_latency(node.port, node.port, rate=500, duration=0.3, warmup=0.2)
    assert result["driver"] == "xlatency"
    figures = [result[k] for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")]
    assert figures[0] > 0
    assert figures == sorted(figures)
    assert result["ended"]
    assert result["sent_in_window"] == result["received_in_window"] > 0
    assert result["lost_in_window"] == 0
    assert result["pub_total"] >= result["sent_in_window"]
    assert result["driver_cpu_pct"] >= 0


def test_publishes_on_one_port_and_subscribes_on_another() -> None:
    # Two unrelated nodes: nothing published on A reaches B's subscriber, so the
    # run says so (instead of hanging) once the publisher is done.
    with (
        running("--in-memory") as a,
        running("--in-memory") as b,
        pytest.raises(RuntimeError, match=r"subscriber did not report|no message"),
    ):
        xlatency.run_latency(a.port, b.port, rate=200, duration=0.2, warmup=0.0)


def test_a_subscriber_that_cannot_connect_fails_clearly() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(RuntimeError, match="did not subscribe: ConnectionRefusedError"):
            xlatency.run_latency(port, port, rate=500, duration=0.3, warmup=0.0)


@pytest.mark.parametrize(
    ("rate", "duration", "warmup"), [(0, 1, 0), (-5, 1, 0), (500, 0, 0), (500, 1, -1)]
)
def test_refuses_nonsense_options(rate: float, duration: float, warmup: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        xlatency.run_latency(1, 1, rate, duration, warmup)


def test_percentile_uses_mqloads_rank() -> None:
    samples = [1000 * i for i in range(1, 101)]  # 1..100 us
    assert xlatency.percentile(samples, 0.50) == 50.0
    assert xlatency.percentile(samples, 0.99) == 99.0
    assert xlatency.percentile(samples, 0.999) == 100.0
    assert xlatency.percentile([7000], 0.5) == 7.0

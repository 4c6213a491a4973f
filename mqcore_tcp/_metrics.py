"""``GET /metrics``: the hub's counters in Prometheus' text format, read at scrape time.

Theory of operation. Nothing is counted for Prometheus as messages flow: the
broker and the hub keep plain integers as they work, and :class:`HubCollector`
(a prometheus-client custom collector) reads them, through
:func:`~mqcore_tcp._observe.read_counters`, only when a scrape comes. Each
server has its own :class:`~prometheus_client.CollectorRegistry`, so several
servers in one process (tests, embedders) never share or clash.

A counter the running core does not keep (an older core) is left out rather
than reported as zero.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._commit_timing import COMMIT_BUCKETS
from ._hub import Hub
from ._observe import read_counters

__all__ = ["CONTENT_TYPE", "HubCollector", "Metrics"]

#: The exposition format's media type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubCollector(Collector):
    """Reads a hub's counters when collected."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        c = read_counters(self.hub)
        yield GaugeMetricFamily("mqcore_connections", "Open client connections.", c.connections)
        yield GaugeMetricFamily("mqcore_topics", "Topics the broker holds.", c.topics)
        if c.sends is not None:
            yield CounterMetricFamily(
                "mqcore_messages_received", "Messages accepted from senders.", c.sends
            )
        if c.deliveries is not None:
            yield CounterMetricFamily(
                "mqcore_deliveries",
                "Messages handed to subscribers (live deliveries and replays).",
                c.deliveries,
            )
        failed = CounterMetricFamily(
            "mqcore_replies_failed", "Commands answered with a failure.", labels=["reason"]
        )
        for reason, count in sorted(c.failures.items()):
            failed.add_metric([reason], count)
        yield failed
        yield CounterMetricFamily(
            "mqcore_slow_consumer_disconnects",
            "Connections dropped because too many bytes waited unsent for them.",
            c.slow_consumer_disconnects,
        )
        if c.cached_messages is not None:
            yield GaugeMetricFamily(
                "mqcore_cached_messages", "Messages held in topic caches.", c.cached_messages
            )
        if c.cached_bytes is not None:
            yield GaugeMetricFamily(
                "mqcore_cached_bytes", "Bytes held in topic caches.", c.cached_bytes
            )
        if self.hub.durable:
            yield self._commit_histogram()

    def _commit_histogram(self) -> HistogramMetricFamily:
        timing = self.hub.commit_timing
        counts = list(timing.counts)  # one copy: the commit thread may be adding
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, COMMIT_BUCKETS), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(
            "mqcore_store_commit_seconds",
            "How long one group commit to the store took.",
            buckets=buckets,
            sum_value=timing.total_seconds,
        )


class Metrics:
    """One server's registry: :meth:`render` is a scrape's body."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub))

    def render(self) -> bytes:
        """The exposition text, now."""
        return generate_latest(self.registry)

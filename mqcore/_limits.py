"""The bounds a broker is made with, checked once, where they are made.

:class:`TopicLimits` bounds topics and their caches (:mod:`mqcore._topics`),
:class:`AckLimits` acknowledged delivery (:mod:`mqcore._acks`). Each checks
its values when it is made, so a broker with an impossible bound is never
built: a ``ValueError`` names the first bad one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["AckLimits", "TopicLimits"]


def _at_least(limits: TopicLimits | AckLimits, least: dict[str, float]) -> None:
    for f in fields(limits):
        value = getattr(limits, f.name)
        if value < least[f.name]:
            raise ValueError(f"{f.name} must be >= {least[f.name]}")


@dataclass(frozen=True)
class TopicLimits:
    """Messages cached per topic (0: none), topics, a topic name's UTF-8 bytes, cached bytes."""

    cache_size: int
    max_topics: int
    max_topic_bytes: int
    max_cache_bytes: int

    def __post_init__(self) -> None:
        _at_least(
            self, {"cache_size": 0, "max_topics": 1, "max_topic_bytes": 1, "max_cache_bytes": 0}
        )


@dataclass(frozen=True)
class AckLimits:
    """Seconds a delivery may stay unacked, deliveries per job, jobs held and their bytes."""

    ack_wait: float
    max_deliver: int
    max_jobs: int
    max_job_bytes: int

    def __post_init__(self) -> None:
        if not self.ack_wait > 0:
            raise ValueError("ack_wait must be > 0")
        _at_least(self, {"ack_wait": 0, "max_deliver": 1, "max_jobs": 1, "max_job_bytes": 1})

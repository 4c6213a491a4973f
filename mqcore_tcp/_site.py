"""What the HTTP listener serves, path by path: health, metrics, the JSON API and the console.

Theory of operation. :class:`Site` maps a parsed GET request (path and query)
to a complete :class:`Page` (status, content type, body); the HTTP listener
(``_http``) does the HTTP. Every page is computed on request from counters
the hub and broker keep anyway (see ``_observe``), so serving the web side
costs nothing while nobody asks. Bad query parameters get ``400`` with a
JSON ``{"error": ...}``; unknown paths ``404``.

| path | what |
|---|---|
| ``/healthz`` | ``200 {"status": "ok"}``, or ``503 {"status": "unavailable", "reason": ...}`` |
| ``/metrics`` | Prometheus exposition (``_metrics``) |
| ``/api/stats`` | identity, uptime, limits and counters |
| ``/api/topics`` | a page of topics: ``offset``, ``limit``, ``match``, ``sort``, ``order`` |
| ``/api/connections`` | a page of connections: ``offset``, ``limit`` |
| ``/`` | the console (``console/index.html``) |
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec

from mqcore import __version__

from ._hub import Hub
from ._metrics import CONTENT_TYPE as METRICS_TYPE
from ._metrics import Metrics
from ._observe import connection_rows, health, read_counters, topic_page

__all__ = ["CONSOLE", "JSON", "Page", "Site", "json_page"]

log = logging.getLogger("mqcore_tcp")

JSON: Final = "application/json"
#: The console page, read once per process.
CONSOLE: Final = Path(__file__).with_name("console") / "index.html"


@dataclass(frozen=True)
class Page:
    """A complete response."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def json_page(status: int, value: Any) -> Page:
    """A JSON response."""
    return Page(status, JSON, msgspec.json.encode(value))


class _BadQuery(ValueError):
    pass


def _number(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise _BadQuery(f"{name} must be a whole number") from None


def _text(query: dict[str, list[str]], name: str, default: str = "") -> str:
    values = query.get(name)
    return values[-1] if values else default


class Site:
    """The pages of one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = Metrics(hub)
        self.started = time.time()
        self._console: bytes | None = None
        self._routes: dict[str, Callable[[dict[str, list[str]]], Page]] = {
            "/healthz": self.healthz,
            "/metrics": self.metrics_page,
            "/api/stats": self.stats,
            "/api/topics": self.topics,
            "/api/connections": self.connections,
            "/": self.console,
            "/index.html": self.console,
        }

    def get(self, path: str, query_string: str) -> Page:
        """The page for ``GET path?query_string``."""
        route = self._routes.get(path)
        if route is None:
            return json_page(404, {"error": f"no such page: {path}"})
        try:
            query = parse_qs(query_string, keep_blank_values=True, max_num_fields=20)
            return route(query)
        except ValueError as exc:  # _BadQuery, bad numbers, too many fields
            return json_page(400, {"error": str(exc)})
        except Exception:  # a bug in a page must not take the connection down
            log.exception("http: GET %s failed", path)
            return json_page(500, {"error": "internal error"})

    def healthz(self, query: dict[str, list[str]]) -> Page:
        reason = health(self.hub)
        if reason is None:
            return json_page(200, {"status": "ok"})
        return json_page(503, {"status": "unavailable", "reason": reason})

    def metrics_page(self, query: dict[str, list[str]]) -> Page:
        return Page(200, METRICS_TYPE, self.metrics.render())

    def stats(self, query: dict[str, list[str]]) -> Page:
        broker = self.hub.broker
        counters = dataclasses.asdict(read_counters(self.hub))
        return json_page(
            200,
            {
                "server": {
                    "name": "mqcore",
                    "version": __version__,
                    "started": self.started,
                    "uptime": time.time() - self.started,
                    "durable": self.hub.durable,
                    "health": health(self.hub) or "ok",
                },
                "limits": {
                    "cache_size": broker.cache_size,
                    "max_line_bytes": broker.max_line_bytes,
                    "max_topics": broker.max_topics,
                    "max_cache_bytes": broker.max_cache_bytes,
                    "max_queued_bytes": self.hub.max_queued_bytes,
                },
                "counters": counters,
                "time": time.time(),
            },
        )

    def topics(self, query: dict[str, list[str]]) -> Page:
        order = _text(query, "order", "asc")
        if order not in ("asc", "desc"):
            raise _BadQuery("order must be asc or desc")
        page = topic_page(
            self.hub.broker,
            match=_text(query, "match"),
            sort=_text(query, "sort", "created"),
            descending=order == "desc",
            offset=_number(query, "offset", 0),
            limit=_number(query, "limit", 100),
        )
        return json_page(200, page)

    def connections(self, query: dict[str, list[str]]) -> Page:
        page = connection_rows(
            self.hub, offset=_number(query, "offset", 0), limit=_number(query, "limit", 100)
        )
        return json_page(200, page)

    def console(self, query: dict[str, list[str]]) -> Page:
        if self._console is None:
            self._console = CONSOLE.read_bytes()
        return Page(
            200,
            "text/html; charset=utf-8",
            self._console,
            # Everything is inline: nothing else may load (no CDN, works offline).
            (
                (
                    "content-security-policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                    "connect-src 'self'; img-src 'self' data:",
                ),
            ),
        )

"""Prometheus metrics of the API process, served at ``GET /metrics`` on the API's own port.

- ``iotp_api_requests_total{method,route,status}`` and ``iotp_api_request_seconds{method,route}``: counted
  by :class:`RequestMetrics`, an ASGI middleware; ``route`` is the route *template* (``/api/devices/{device_id}``),
  never the concrete path, so device ids do not become label values;
- WebSocket fan-out from the hub (``iotp_api_ws_*``) and, in embedded mode, the ClickHouse sink
  (``iotp_sink_*``, :mod:`history.metrics`), both read at scrape time;
- the process collectors (CPU, memory, GC) as on the other services.

Each app has a registry of its own (tests build several apps in one process). ``/metrics`` needs no token:
it holds counts only, no ids or tokens; see docs/operations.md for where to expose it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from history.metrics import SinkCollector

UNMATCHED = "<unmatched>"  # one label value for every path no route matched (404s, scans)


class HubCollector(Collector):
    """WebSocket clients and frames of the :class:`dashboard_api.hub.Hub` (None before start-up)."""

    def __init__(self, hub: Callable[[], Any]) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        hub = self.hub()
        if hub is None:
            return
        stats = hub.stats()
        yield GaugeMetricFamily("iotp_api_ws_clients", "Connected WebSocket clients", stats["clients"])
        for name, help_text in (
            ("sent", "WebSocket frames sent to clients"),
            ("dropped", "WebSocket frames dropped: a client's queue was full (oldest frame dropped)"),
            ("coalesced", "WebSocket frames replaced by a newer frame of the same device for a slow client"),
        ):
            yield CounterMetricFamily(f"iotp_api_ws_frames_{name}", help_text, value=stats[name])
        yield CounterMetricFamily("iotp_api_pubsub_messages", "Redis pub/sub messages received", value=hub.messages)
        yield CounterMetricFamily(
            "iotp_api_pubsub_bad_messages", "Redis pub/sub messages that were not JSON", value=hub.bad_messages
        )


class ApiMetrics:
    """The registry and request metrics of one app. ``state`` is the app's ``app.state`` (the hub and the
    sink appear on it at start-up)."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "iotp_api_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "iotp_api_request_seconds",
            "HTTP request duration, to the end of the response body",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(HubCollector(lambda: getattr(state, "hub", None)))
        self.registry.register(SinkCollector(lambda: getattr(state, "sink", None)))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


class RequestMetrics:
    """ASGI middleware: counts every HTTP request by method, route template and status, and times it.
    WebSocket connections are counted by the hub instead."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started ends as a 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_template(scope)  # set by the router on this same scope dict
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)

"""Serve a Prometheus ``/metrics`` endpoint next to a component's own work (gateway, stream worker, sink).

The endpoint runs in prometheus_client's HTTP server thread; collectors read the component's counters at
scrape time, so the hot path pays nothing. A busy port is logged, not fatal: metrics must never stop the
pipeline.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server


def serve_metrics(port: int, host: str, log: logging.Logger, registry: CollectorRegistry = REGISTRY) -> bool:
    """Start the server on ``host:port`` (``port`` 0 = off); True when it serves."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("cannot serve /metrics on %s:%d (%s); continuing without metrics", host, port, exc)
        return False
    log.info("metrics at http://%s:%d/metrics", host, port)
    return True

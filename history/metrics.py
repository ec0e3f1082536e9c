"""Prometheus metrics of the ClickHouse sink, read from the sink's attributes at scrape time.

In embedded mode the sink runs inside the API process and these metrics are part of the API's ``/metrics``;
``iotp sink`` serves them on its own port (``IOTP_SINK_METRICS_PORT``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

COUNTERS = (  # sink attribute -> (metric name without iotp_sink_ and _total, help)
    ("rows_written", "rows", "Rows inserted into ClickHouse (raw readings are one row per metric)"),
    ("readings_written", "readings", "Readings stored in the raw table"),
    ("batches_written", "batches", "Insert batches written"),
    ("dead_lettered", "dead_lettered", "Records sent to the sink's dead-letter topic"),
    ("retries", "retries", "ClickHouse or Kafka calls retried"),
)


class SinkCollector(Collector):
    """``sink`` returns the running :class:`history.sink.ClickHouseSink`, or None when there is none (the
    API with ``IOTP_API_EMBEDDED_SINK=false``): then nothing is exported."""

    def __init__(self, sink: Callable[[], Any]) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Any]:
        sink = self.sink()
        if sink is None:
            return
        for attribute, name, help_text in COUNTERS:
            yield CounterMetricFamily(f"iotp_sink_{name}", help_text, value=getattr(sink, attribute))
        yield GaugeMetricFamily(
            "iotp_sink_lag_records",
            "Kafka records behind the high watermark over the sink's partitions (updated about once a second)",
            value=getattr(sink, "lag", 0),
        )

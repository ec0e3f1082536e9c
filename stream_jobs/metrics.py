"""Prometheus metrics of a stream worker, read from the job at scrape time.

The engine already counts everything in ``engine.counters`` (the same numbers go to the Redis stats hash);
:class:`StreamCollector` turns them into ``iotp_stream_<name>_total`` counters when Prometheus scrapes, plus
the partitions the worker owns and its lag per partition. Nothing is added to the per-record path.

The collector runs in the metrics server's thread while the event loop mutates the job: it only reads
single dict entries and copies of small sets (atomic under the GIL), and retries a copy that raced a
mutation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from iotp import stats

HELP = {
    "records": "Kafka records (device batches) applied",
    "readings": "Readings applied",
    "aggregates": "Closed window aggregates produced",
    "alerts": "Alert events produced",
    "late": "Readings older than their open window (accepted within grace)",
    "dropped_late": "Readings dropped: their window had already closed",
    "duplicates": "Duplicate readings skipped (same device, ts and seq)",
    "out_of_order": "Readings older than the device's newest one",
    "backfill": "Backfill readings (older than the gateway's live skew): history and counters only",
    "replay_skipped": "Redelivered records below the snapshot offset, skipped",
    "invalid": "Records that could not be decoded",
}


def _copy(values: Any) -> list:
    for _ in range(10):
        try:
            return list(values)
        except RuntimeError:  # changed size during iteration: the event loop thread got in; try again
            continue
    return []


class StreamCollector(Collector):
    """``job`` is a :class:`stream_jobs.app.StreamJob`; ``fields`` the ``stream.*`` counters always
    exported (any other ``stream.*`` counter the engine has is exported too)."""

    def __init__(self, job: Any, fields: Iterable[str]) -> None:
        self.job = job
        self.fields = tuple(fields)

    def collect(self) -> Iterator[Any]:
        counters = self.job.engine.counters
        names = dict.fromkeys(self.fields)
        names.update(dict.fromkeys(k for k in _copy(counters.keys()) if k.startswith(stats.STREAM)))
        for key in names:
            short = key.removeprefix(stats.STREAM)
            family = CounterMetricFamily(f"iotp_stream_{short}", HELP.get(short, f"stream counter {key}"))
            family.add_metric([], float(counters.get(key, 0)))
            yield family
        owned = sorted(_copy(self.job.owned))
        yield GaugeMetricFamily("iotp_stream_partitions_owned", "Readings partitions this worker owns", len(owned))
        lag = GaugeMetricFamily(
            "iotp_stream_lag_records",
            "Kafka records between the worker's position and the Fetch high watermark, per owned partition",
            labels=["partition"],
        )
        for partition in owned:
            value = self._lag(partition)
            if value is not None:
                lag.add_metric([str(partition)], value)
        yield lag

    def _lag(self, partition: int) -> int | None:
        ps = self.job.engine.partitions.get(partition)
        hw = self.job._highwater(partition)
        if ps is None or hw is None or ps.next_offset < 0:
            return None  # nothing fetched or applied yet: unknown, not zero
        return max(0, hw - ps.next_offset)

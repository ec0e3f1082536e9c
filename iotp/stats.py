"""Field names of the pipeline's stats hash in Redis (``RedisNames.stats_key``): one definition each.

Fields are ``<stage>.<name>``. Counters are cumulative integers (HINCRBY by the stage that counts them);
``*.lag`` and ``*.updated_ms`` are latest values (HSET). The gateway, stream jobs and sink write them; the
dashboard API, the load test and the benchmarks read them.
"""

from __future__ import annotations

GATEWAY = "gateway."
STREAM = "stream."
SINK = "sink."

# gateway (counters: MQTT messages for received/rejected, readings for forwarded/backfill)
GATEWAY_RECEIVED = "gateway.received"
GATEWAY_FORWARDED = "gateway.forwarded"
GATEWAY_REJECTED = "gateway.rejected"
GATEWAY_BACKFILL = "gateway.backfill"
GATEWAY_RECORDS = "gateway.records"
GATEWAY_UPDATED_MS = "gateway.updated_ms"

# stream jobs
STREAM_RECORDS = "stream.records"
STREAM_READINGS = "stream.readings"
STREAM_AGGREGATES = "stream.aggregates"
STREAM_ALERTS = "stream.alerts"
STREAM_LATE = "stream.late"
STREAM_DROPPED_LATE = "stream.dropped_late"
STREAM_DUPLICATES = "stream.duplicates"
STREAM_OUT_OF_ORDER = "stream.out_of_order"
STREAM_BACKFILL = "stream.backfill"
STREAM_REPLAY_SKIPPED = "stream.replay_skipped"
STREAM_RESET_DISCARDED = "stream.reset_discarded"
STREAM_SNAPSHOT_BEHIND = "stream.snapshot_behind"
STREAM_INVALID = "stream.invalid"
STREAM_LAG = "stream.lag"
STREAM_UPDATED_MS = "stream.updated_ms"
STREAM_SILENCE_HELD = "stream.silence_held"
STREAM_UPSTREAM_ALIVE = "stream.upstream_alive"

# The stream counters a worker always reports (to Redis and to Prometheus), zero or not.
STREAM_COUNTERS = (
    STREAM_RECORDS,
    STREAM_READINGS,
    STREAM_AGGREGATES,
    STREAM_ALERTS,
    STREAM_LATE,
    STREAM_DROPPED_LATE,
    STREAM_DUPLICATES,
    STREAM_OUT_OF_ORDER,
    STREAM_BACKFILL,
    STREAM_REPLAY_SKIPPED,
    STREAM_RESET_DISCARDED,
    STREAM_SNAPSHOT_BEHIND,
    STREAM_INVALID,
)

# sink
SINK_ROWS = "sink.rows"
SINK_READINGS = "sink.readings"
SINK_RESET_DISCARDED = "sink.reset_discarded"
SINK_LAG = "sink.lag"
SINK_UPDATED_MS = "sink.updated_ms"

"""One settings object for every component.

Every field can be overridden by an environment variable named ``IOTP_<FIELD>`` (case-insensitive), or
by a ``.env`` file in the working directory. The defaults are the local development stack on loopback
(see ``infra/``); docker-compose sets the service host names through the same variables.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOTP_", env_file=".env", extra="ignore")

    # --- where local state lives (stack config, logs, embedded ClickHouse data) ---
    state_dir: Path = Field(Path(".iotp"), description="Local stack config, logs and embedded data")

    # --- MQTT (Mosquitto) ---
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 11883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_topic_prefix: str = "iotp/telemetry"
    mqtt_share_group: str = "iotp-gateway"
    gc_thresholds: tuple[int, int, int] = Field(
        (100_000, 20, 100),
        description="Garbage collector thresholds of the services (gateway, stream worker, API/sink, simulator, "
        "load-test publisher), as JSON; [700,10,10] is CPython's own. See iotp/gc_tuning.py",
    )
    gateway_mqtt_protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version of the gateway's subscription. 5: session expiry, and a second gateway "
        "with the same client id is detected (reason code 142) and this one exits; 3.1.1: a persistent "
        "session (clean_session=false) without expiry and without takeover detection, and no MQTT 5 "
        "property decoding per message (measured in docs/performance.md)",
    )
    gateway_mqtt_buffered: bool = Field(
        True,
        description="Read the gateway's MQTT socket in 256 KiB chunks and send each burst of PUBACKs in one write "
        "(iotp.paho_buffered) instead of paho's 3+ recv calls per packet and one send per ack",
    )
    mqtt_shared_property_tables: bool = Field(
        True,
        description="MQTT 5: decode incoming PUBLISH properties with lookup tables built once "
        "(iotp/paho_speedups.py) instead of paho's per-message rebuild; off = stock paho",
    )

    # --- Kafka (tansu locally, Apache Kafka in docker-compose) ---
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_partitions: int = Field(4, ge=1)
    kafka_replication: int = Field(1, ge=1)
    kafka_record_mode: Literal["device", "partition"] = Field(
        "device",
        description="Readings topic records. device: one record per device per linger window, key = device id "
        "(the default contract); partition: one record per partition per linger window carrying the device "
        "batches of many devices, sent to the partition the device id maps to under Kafka's default "
        "partitioner (per-device order unchanged; ~10x cheaper per reading in the stream job, see "
        "docs/stream-processing.md)",
    )
    kafka_compression: str | None = Field("lz4", description="none|gzip|snappy|lz4|zstd")
    kafka_lz4_level: int = Field(
        1,
        ge=0,
        le=16,
        description="lz4 level of produced batches (aiokafka 0.14 always uses 9, LZ4 HC: ~10x the CPU of "
        "level 1 for batches 26 % smaller, benchmarks/kafka_codec_bench.py; iotp/kafka.py). 9 = aiokafka's own",
    )
    kafka_idempotence: bool = Field(False, description="Enable on real Kafka; the local broker rejects it")
    kafka_fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="How long a consumer fetch may wait for data. The local broker holds every fetch "
        "this long (it does not answer at fetch_min_bytes), so it adds to latency",
    )
    kafka_storage: Literal["s3", "memory"] = Field(
        "s3",
        description="Local broker only (infra/kafka_storage.py). s3: durable, tansu's S3 engine on a local "
        "file-backed store under <state_dir>/run/kafka-store; memory: a broker restart loses every topic, "
        "record and committed offset",
    )
    kafka_storage_port: int = Field(
        19000, ge=1, description="Loopback port of the local broker's S3-compatible store (kafka_storage=s3)"
    )
    kafka_store_retention: bool = Field(
        True,
        description="Local durable broker only: delete record batches of the readings, aggregates and alerts "
        "topics once every pipeline consumer group has committed past them (infra/kafka_retention.py); "
        "without it the store grows and every fetch slows down",
    )
    kafka_store_retention_min_age_s: float = Field(
        300.0, ge=0, description="Record batches younger than this are kept even when consumed"
    )
    topic_readings: str = "iotp.readings"
    topic_deadletter: str = "iotp.readings.dlq"
    topic_aggregates: str = "iotp.aggregates"
    topic_alerts: str = "iotp.alerts"
    topic_sink_deadletter: str = "iotp.sink.dlq"

    # --- Redis ---
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_prefix: str = "iotp"

    # --- ClickHouse: chdb:///path (embedded, default) or http(s)://host:8123 (server) ---
    clickhouse_url: str = ""
    clickhouse_database: str = "iotp"

    # --- Device profiles (docs/device-profiles.md) ---
    profiles_file: Path | None = Field(
        None, description="Profiles YAML whose types are added to (or replace) the shipped ones"
    )
    profiles_poll_s: float = Field(
        2.0, gt=0, description="How often gateway and stream workers check Redis for changed profiles"
    )
    unknown_device_type: Literal["reject", "accept"] = Field(
        "reject",
        description="reject: dead-letter readings of an unprofiled type (reason unknown_device_type); "
        "accept: forward them with metrics inferred (no range check, statistical detectors only)",
    )

    # --- Gateway ---
    gateway_max_inflight: int = Field(5000, ge=1, description="Readings awaiting a Kafka ack (backpressure)")
    gateway_linger_ms: int = Field(
        200,
        ge=0,
        description="How long readings of one device are batched into one "
        "Kafka record (Faust pays per record: see docs/performance.md)",
    )
    gateway_max_payload_bytes: int = Field(65536, ge=256)
    gateway_max_skew_s: float = Field(
        300.0, gt=0, description="Live window: max distance of a reading ts from now (the future limit too)"
    )
    gateway_max_backfill_s: float = Field(
        7 * 86400.0,
        ge=0,
        description="Oldest accepted reading (buffered uploads): older than the live window = backfill, stored in "
        "history only; older than this = dead letter 'too_old'. Keep it <= the raw retention",
    )
    gateway_metrics_port: int = Field(
        9108, ge=0, description="Prometheus /metrics of gateway N on this port + N; 0 = off"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the gateway, stream and sink /metrics servers bind (0.0.0.0 in containers)"
    )

    # --- Stream jobs (Faust) ---
    stream_app_id: str = "iotp-stream"
    stream_metrics_port: int = Field(
        9118, ge=0, description="Prometheus /metrics of stream worker N on this port + N; 0 = off"
    )
    stream_windows_s: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [10, 60], description="e.g. 10,60 or [10, 60]"
    )
    stream_window_grace_s: float = 5.0
    stream_window_idle_close_s: float = Field(
        2.0,
        ge=0,
        description="The wall clock closes a device's windows (end + grace) only once nothing arrived from it "
        "for this long; a live device closes them on event time, so all devices' windows do not close in one "
        "tick (docs/stream-processing.md); 0 = on the wall clock as soon as they are due",
    )
    stream_take_max: int | None = Field(
        None,
        ge=1,
        description="Records per Faust take() batch = per flush; unset: 500 device records, or 20 partition records "
        "(each carries ~devices/partitions x linger readings; docs/stream-processing.md)",
    )
    stream_take_within_s: float = Field(
        0.02,
        gt=0,
        description="Max wait to fill a take() batch. Partition records arrive a few per gateway linger, so a take "
        "rarely fills and this wait is added to every reading (0.1 before: ~60-130 ms more p50, docs/performance.md)",
    )
    stream_buffer_maxsize: int = Field(
        4096, ge=1, description="Faust stream_buffer_maxsize: events buffered per partition before it pauses fetching"
    )
    stream_max_poll_records: int | None = Field(
        None, ge=1, description="Faust broker_max_poll_records: records per consumer poll (None: Faust's default)"
    )
    stream_snapshot_stagger: bool = Field(
        True,
        description="Snapshot one partition at a time (each every stream_snapshot_interval_s, spread evenly) "
        "instead of every partition together; the same work in smaller event-loop stalls",
    )
    stream_snapshot_interval_s: float = Field(
        2.0,
        ge=0,
        description="At most this often the stream job writes the snapshot of the device states it changed (and "
        "acks the records it covers); latest state, pub/sub and outputs still go out with every flush. A crash "
        "replays up to this much (idempotently); 0: a snapshot with every flush (docs/stream-processing.md)",
    )
    stream_pipeline_flushes: bool = Field(
        True,
        description="Write a flush to Kafka and Redis while the next batch is processed (one flush in flight, "
        "in order; acks still only after the Redis transaction). false: one flush at a time, in line",
    )
    stream_tick_s: float = Field(0.5, gt=0, description="Timer: close windows on wall clock, detect silence")
    stream_stats_interval_s: float = Field(1.0, gt=0, description="How often counters go to Redis")
    stream_rules_file: Path | None = Field(None, description="Anomaly rules YAML (default: packaged rules)")
    stream_silence_min_s: float | None = Field(None, gt=0, description="Override the rules file's value")
    stream_upstream_stale_s: float = Field(
        5.0,
        ge=0,
        description="Hold silence detection (no 'silence' alerts, no offline) while the gateways' heartbeat "
        "(gateway.updated_ms in the stats hash) is older than this: a pipeline outage is not silent devices. "
        "0 = do not check; no heartbeat at all (no gateway ever reported) does not hold",
    )

    # --- Dashboard API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str = Field(
        "dev-token", description="An operator token (dev default; set IOTP_API_TOKEN in any shared setup)"
    )
    api_tokens: str = Field(
        "",
        description="More API tokens, comma-separated role:token or role:sha256:<hex>, role viewer|operator "
        "(docs/security.md)",
    )
    api_embedded_sink: bool = Field(True, description="Run the ClickHouse sink inside the API process")
    api_ws_queue: int = Field(1000, ge=1, description="Max frames pending per WebSocket client")
    api_ws_coalesce_after: int = Field(
        100, ge=0, description="Pending frames after which a client gets only the latest value per device"
    )
    api_ws_heartbeat_s: float = Field(10.0, gt=0, description="App-level heartbeat frame interval")
    api_ws_ping_s: float = Field(20.0, gt=0, description="WebSocket protocol ping interval")
    api_offline_after_s: float = Field(120.0, gt=0, description="Device shown offline when silent this long")
    api_max_range_days: int = Field(31, ge=1, description="Longest time range a history query may span")
    api_metrics: bool = Field(True, description="Serve Prometheus /metrics (no token; see docs/operations.md)")

    # --- History sink ---
    sink_batch_rows: int = Field(
        200_000,
        ge=1,
        description="Rows (reading x metric) per ClickHouse insert at most. Every insert is a part in each "
        "table and in both rollups, and at 5,000 devices a block of one second holds one rollup row per "
        "device x metric: larger blocks are far cheaper to roll up and merge (docs/performance.md)",
    )
    sink_batch_seconds: float = Field(2.0, gt=0, description="A flush at the latest this long after a record")
    sink_group: str = "iotp-clickhouse-sink"
    history_engine_nice: int = Field(
        0,
        ge=0,
        le=19,
        description="Nice value of the embedded ClickHouse engine's threads (inserts, merges) in the API process, "
        "so their bursts yield the cores to the live path (history.engine_priority); 0 = off. Measured at 5k "
        "msgs/s: 10 halves the sensor -> gateway p99 and adds 0.4-1.5 s to sensor -> ClickHouse p99",
    )
    sink_dedup_window: int = Field(10000, ge=100, description="Insert blocks remembered for deduplication")
    sink_metrics_port: int = Field(9128, ge=0, description="Prometheus /metrics of `iotp sink`; 0 = off")
    # --- History retention (TTL, days); changed values are applied by the migrations at start ---
    history_ttl_raw_days: int = Field(7, ge=1)
    history_ttl_1m_days: int = Field(90, ge=1)
    history_ttl_1h_days: int = Field(730, ge=1)
    history_ttl_aggregates_days: int = Field(90, ge=1)
    history_ttl_alerts_days: int = Field(365, ge=1)

    @field_validator("stream_windows_s", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @property
    def stream_take(self) -> int:
        """Records per take() batch (``stream_take_max``, or the record mode's default)."""
        if self.stream_take_max is not None:
            return self.stream_take_max
        return 20 if self.kafka_record_mode == "partition" else 500

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse address; embedded chDB under the state dir unless ``clickhouse_url`` is set."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.state_dir / 'clickhouse').resolve()}"

    @property
    def clickhouse_embedded(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""One settings object for every component.

Every field can be overridden by an environment variable named ``IOTP_<FIELD>`` (case-insensitive), or
by a ``.env`` file in the working directory. The defaults are the local development stack on loopback
(see ``infra/``); docker-compose sets the service host names through the same variables.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

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

    # --- Kafka (tansu locally, Apache Kafka in docker-compose) ---
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_partitions: int = Field(4, ge=1)
    kafka_replication: int = Field(1, ge=1)
    kafka_compression: str | None = Field("lz4", description="none|gzip|snappy|lz4|zstd")
    kafka_idempotence: bool = Field(False, description="Enable on real Kafka; the local broker rejects it")
    kafka_fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        description="How long a consumer fetch may wait for data. The local broker holds every fetch "
        "this long (it does not answer at fetch_min_bytes), so it adds to latency",
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

    # --- Gateway ---
    gateway_max_inflight: int = Field(5000, ge=1, description="Readings awaiting a Kafka ack (backpressure)")
    gateway_linger_ms: int = Field(
        200,
        ge=0,
        description="How long readings of one device are batched into one "
        "Kafka record (Faust pays per record: see docs/performance.md)",
    )
    gateway_max_payload_bytes: int = Field(65536, ge=256)
    gateway_max_skew_s: float = Field(300.0, gt=0, description="Max distance of a reading ts from now")
    gateway_metrics_port: int = 9108

    # --- Stream jobs (Faust) ---
    stream_app_id: str = "iotp-stream"
    stream_web_port: int = 6066
    stream_windows_s: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [10, 60], description="e.g. 10,60 or [10, 60]"
    )
    stream_window_grace_s: float = 5.0
    stream_take_max: int = Field(500, ge=1, description="Records (device batches) per Faust take() batch")
    stream_take_within_s: float = Field(0.1, gt=0, description="Max wait to fill a take() batch")
    stream_tick_s: float = Field(0.5, gt=0, description="Timer: close windows on wall clock, detect silence")
    stream_stats_interval_s: float = Field(1.0, gt=0, description="How often counters go to Redis")
    stream_rules_file: Path | None = Field(None, description="Anomaly rules YAML (default: packaged rules)")
    stream_silence_min_s: float | None = Field(None, gt=0, description="Override the rules file's value")

    # --- Dashboard API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str = Field("dev-token", description="Dev default; set IOTP_API_TOKEN in any shared setup")
    api_embedded_sink: bool = Field(True, description="Run the ClickHouse sink inside the API process")
    api_ws_queue: int = Field(1000, ge=1, description="Max frames pending per WebSocket client")
    api_ws_coalesce_after: int = Field(
        100, ge=0, description="Pending frames after which a client gets only the latest value per device"
    )
    api_ws_heartbeat_s: float = Field(10.0, gt=0, description="App-level heartbeat frame interval")
    api_ws_ping_s: float = Field(20.0, gt=0, description="WebSocket protocol ping interval")
    api_offline_after_s: float = Field(120.0, gt=0, description="Device shown offline when silent this long")
    api_max_range_days: int = Field(31, ge=1, description="Longest time range a history query may span")

    # --- History sink ---
    sink_batch_rows: int = Field(20000, ge=1)
    sink_batch_seconds: float = Field(1.0, gt=0)
    sink_group: str = "iotp-clickhouse-sink"
    sink_dedup_window: int = Field(10000, ge=100, description="Insert blocks remembered for deduplication")
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

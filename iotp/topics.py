"""Names of Kafka topics, Redis keys and Redis pub/sub channels, derived from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from iotp.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int | None = None


def kafka_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the pipeline produces to, with its partition count (created by ``iotp stack up``)."""
    p = settings.kafka_partitions
    return [
        TopicSpec(settings.topic_readings, p),
        TopicSpec(settings.topic_deadletter, 1),
        TopicSpec(settings.topic_aggregates, p),
        TopicSpec(settings.topic_alerts, p),
        TopicSpec(settings.topic_sink_deadletter, 1),
    ]


@dataclass(frozen=True, slots=True)
class RedisNames:
    """Redis key and channel names under one prefix."""

    prefix: str

    def device_key(self, device_id: str) -> str:
        return f"{self.prefix}:device:{device_id}"

    @property
    def fleet_index(self) -> str:
        """Sorted set: device id -> last seen (epoch ms)."""
        return f"{self.prefix}:fleet"

    @property
    def channel_readings(self) -> str:
        return f"{self.prefix}:readings"

    @property
    def channel_aggregates(self) -> str:
        return f"{self.prefix}:aggregates"

    @property
    def channel_alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def open_alerts(self) -> str:
        """Hash: alert id -> JSON of the open :class:`iotp.schema.Alert` (written by the stream jobs)."""
        return f"{self.prefix}:alerts:open"

    @property
    def alert_acks(self) -> str:
        """Hash: alert id -> JSON ``{"by": ..., "at": epoch ms, "note": ...}`` (written by the API)."""
        return f"{self.prefix}:alerts:acks"

    @property
    def profiles(self) -> str:
        """Hash: device type -> JSON ``{"profile": DeviceProfile, "source": "file"|"api", "digest",
        "updated_ms"}`` (the live device profiles, see ``iotp.profile_store``)."""
        return f"{self.prefix}:profiles"

    @property
    def profiles_version(self) -> str:
        """Integer incremented by every change of the profiles hash; readers poll it."""
        return f"{self.prefix}:profiles:version"

    def gateway_client_lease(self, client_id: str) -> str:
        """String ``<host>:<pid>:<token>`` with a TTL: the gateway process holding MQTT client id
        ``client_id`` (see ``gateway.client_lease``)."""
        return f"{self.prefix}:gateway:client:{client_id}"

    @property
    def stats_key(self) -> str:
        """Hash of pipeline counters (field names: :mod:`iotp.stats`), fields ``<stage>.<counter>``:
        cumulative integers (HINCRBY) such as
        ``gateway.received``, ``gateway.forwarded``, ``gateway.rejected``, ``stream.records``,
        ``stream.readings``, ``stream.aggregates``, ``stream.alerts``, ``sink.rows``; and latest values
        (HSET) ``<stage>.lag`` (records behind the high watermark) and ``<stage>.updated_ms``."""
        return f"{self.prefix}:stats"


def redis_names(settings: Settings) -> RedisNames:
    return RedisNames(settings.redis_prefix)


def mqtt_topic(settings: Settings, device_type: str, device_id: str) -> str:
    return f"{settings.mqtt_topic_prefix}/{device_type}/{device_id}"


def mqtt_subscription(settings: Settings, shared: bool = True) -> str:
    topic = f"{settings.mqtt_topic_prefix}/#"
    return f"$share/{settings.mqtt_share_group}/{topic}" if shared else topic

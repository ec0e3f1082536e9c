"""One stream worker per module (Faust start-up costs seconds), with short windows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.kafka_admin import create_topics_sync
from iotp.settings import Settings
from tests.support.processes import ProcessGroup

FAST = dict(
    stream_windows_s=[2],
    stream_window_grace_s=1.0,
    stream_silence_min_s=1.5,
    stream_tick_s=0.25,
    stream_stats_interval_s=0.5,
)


def stream_test_settings(base: Settings, **overrides) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = base.model_copy(
        update=dict(
            topic_readings=f"s{tag}.readings",
            topic_deadletter=f"s{tag}.readings.dlq",
            topic_aggregates=f"s{tag}.aggregates",
            topic_alerts=f"s{tag}.alerts",
            topic_sink_deadletter=f"s{tag}.sink.dlq",
            redis_prefix=f"s{tag}",
            stream_app_id=f"iotp-stream-{tag}",
            **{**FAST, **overrides},
        )
    )
    create_topics_sync(settings)
    return settings


@pytest.fixture(scope="module")
def stream_settings(stack_settings: Settings) -> Settings:
    return stream_test_settings(stack_settings)


@pytest.fixture(scope="module")
def stream_worker(stream_settings: Settings, tmp_path_factory) -> Iterator[ProcessGroup]:
    group = ProcessGroup(stream_settings, tmp_path_factory.mktemp("stream-logs"))
    group.start("stream")
    yield group
    group.stop_all()

"""The Kafka -> ClickHouse sink against the real local broker and Redis, writing into the test's chDB."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import orjson
import pytest
import redis.asyncio as aioredis
from clickhouse_connect.driver.exceptions import OperationalError

from history.migrations import migrate
from history.sink import ClickHouseSink, _Rebalance
from iotp.kafka import make_consumer, make_producer
from iotp.schema import Alert, WindowAggregate, encode_batch, now_ms
from iotp.topics import RedisNames
from tests.support.waiting import async_wait_for

pytestmark = pytest.mark.integration
METRICS = ("temperature", "humidity", "co2")


@pytest.fixture
def sink_settings(isolated_settings, ch_client):
    settings = isolated_settings.model_copy(
        update=dict(clickhouse_database=f"s_{uuid.uuid4().hex[:10]}", sink_batch_rows=2000, sink_batch_seconds=0.3)
    )
    migrate(ch_client, settings.clickhouse_database, settings)
    yield settings
    ch_client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")


def reading_records(devices: int, readings: int, per_record: int = 5, seq0: int = 0, tag: str = "d"):
    """(key, value) pairs of ReadingBatch records; readings 1 s apart, recent."""
    now = now_ms() - 600_000
    out = []
    for d in range(devices):
        device = f"{tag}-{d}"
        batch = []
        for seq in range(seq0, seq0 + readings):
            ts = now + seq * 1000
            batch.append(
                {
                    "id": f"{device}:{seq}",
                    "seq": seq,
                    "ts": ts,
                    "rx": ts + 5,
                    "metrics": {m: 20.0 + d + (seq % 7) + i for i, m in enumerate(METRICS)},
                }
            )
            if len(batch) == per_record:
                out.append((device.encode(), encode_batch(device, "climate", batch)))
                batch = []
        if batch:
            out.append((device.encode(), encode_batch(device, "climate", batch)))
    return out


async def produce(settings, topic: str, records) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def scalar(client, sql: str) -> int:
    return client.query(sql).result_rows[0][0]


async def stored(client, db: str) -> tuple[int, int, int, int]:
    """(raw rows, distinct raw keys, 1m rollup count, 1h rollup count)."""

    def q():
        return (
            scalar(client, f"SELECT count() FROM {db}.readings"),
            scalar(client, f"SELECT uniqExact(device_id, metric, seq) FROM {db}.readings"),
            scalar(client, f"SELECT countMerge(n) FROM {db}.rollup_1m"),
            scalar(client, f"SELECT countMerge(n) FROM {db}.rollup_1h"),
        )

    return await asyncio.to_thread(q)


async def wait_rows(client, db: str, expected: int, timeout: float = 60) -> None:
    async def done():
        got = await stored(client, db)
        return got if got[0] >= expected else False

    try:
        await async_wait_for(done, timeout=timeout, message=f"{expected} raw rows")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stored (raw, distinct, 1m, 1h) = {await stored(client, db)}") from None
    got = await stored(client, db)
    assert got == (expected, expected, expected, expected), got


async def start_sink(sink: ClickHouseSink) -> tuple[asyncio.Event, asyncio.Task]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(sink.run(stop))


async def stop_sink(stop: asyncio.Event, task: asyncio.Task) -> None:
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_sink_writes_all_topics_dead_letters_and_publishes_stats(sink_settings, ch_client):
    s, db = sink_settings, sink_settings.clickhouse_database
    redis = aioredis.from_url(s.redis_url)
    now = now_ms()
    readings = reading_records(devices=20, readings=50)
    bad_readings = [
        (b"bad-1", b"not json"),
        (
            b"bad-2",
            orjson.dumps(
                {
                    "device_id": "bad-2",
                    "device_type": "climate",
                    "readings": [{"id": "bad-2:1", "seq": 1, "ts": now, "rx": now, "metrics": {"temperature": "hot"}}],
                }
            ),
        ),
    ]
    aggregates = [
        (
            f"d-{i}".encode(),
            WindowAggregate(
                device_id=f"d-{i}",
                device_type="climate",
                metric="temperature",
                window_s=60,
                start=now - 60_000,
                end=now,
                count=60,
                min=1.0,
                max=2.0,
                mean=1.5,
                std=0.1,
            )
            .model_dump_json()
            .encode(),
        )
        for i in range(10)
    ]
    alert = dict(
        alert_id="al-1",
        device_id="d-1",
        device_type="climate",
        metric="temperature",
        rule="threshold",
        severity="critical",
        value=99.0,
        first_seen=now - 5000,
        last_seen=now - 5000,
    )
    alerts = [
        (b"d-1", Alert(**alert, state="open").model_dump_json().encode()),
        (b"d-1", Alert(**{**alert, "last_seen": now}, state="resolved", resolved_at=now).model_dump_json().encode()),
        (b"d-1", b'{"alert_id": "broken"}'),
    ]
    await produce(s, s.topic_readings, readings[:100] + bad_readings + readings[100:])
    await produce(s, s.topic_aggregates, aggregates)
    await produce(s, s.topic_alerts, alerts)

    sink = ClickHouseSink(s, ch_client, redis=redis)
    stop, task = await start_sink(sink)
    try:
        await wait_rows(ch_client, db, 20 * 50 * 3)

        async def others():
            return await asyncio.to_thread(
                lambda: (
                    scalar(ch_client, f"SELECT count() FROM {db}.window_aggregates FINAL"),
                    scalar(ch_client, f"SELECT count() FROM {db}.alerts FINAL"),
                )
            )

        await async_wait_for(lambda: _eq(others(), (10, 1)), timeout=30, message="aggregates and alerts")
        state = await asyncio.to_thread(
            lambda: ch_client.query(f"SELECT state FROM {db}.alerts FINAL").result_rows[0][0]
        )
        assert state == "resolved"

        dlq = await read_topic(s, s.topic_sink_deadletter, 3)
        reasons = {m.key: dict(m.headers)["reason"].decode() for m in dlq}
        assert set(reasons) == {b"bad-1", b"bad-2", b"d-1"}
        assert "not JSON" in reasons[b"bad-1"] and "finite number" in reasons[b"bad-2"]
        assert "Alert" in reasons[b"d-1"]
        assert dict(dlq[0].headers)["source_topic"] in (s.topic_readings.encode(), s.topic_alerts.encode())

        key = RedisNames(s.redis_prefix).stats_key

        async def stats_done():
            st = await redis.hgetall(key)
            return st if int(st.get(b"sink.rows", 0)) >= 3000 + 11 and st.get(b"sink.lag") == b"0" else None

        st = await async_wait_for(stats_done, timeout=30, message="sink stats in Redis")
        assert int(st[b"sink.rows"]) == 3000 + 10 + 2  # raw rows + aggregates + alert events
        assert abs(int(st[b"sink.updated_ms"]) - time.time() * 1000) < 10_000
        assert sink.dead_lettered == 3
    finally:
        await stop_sink(stop, task)
        await redis.aclose()


async def _eq(awaitable, expected):
    return await awaitable == expected


async def read_topic(settings, topic: str, n: int, timeout: float = 30):
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    got = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(messages)
    finally:
        await consumer.stop()
    assert len(got) == n, f"{len(got)} records on {topic}, expected {n}"
    return got


class FlakyClient:
    """Wraps a client: inserts into the readings table fail while ``failing()`` says so (an outage as the sink
    sees it); ``land_first`` lets the first failing insert reach ClickHouse before raising (a lost response)."""

    def __init__(self, client, failing, land_first: bool = False) -> None:
        self._client = client
        self._failing = failing
        self._land_first = land_first
        self.landed = threading.Event()
        self.failures = 0

    def insert_arrow(self, table, data, settings=None, **kw):
        if table.endswith(".readings") and self._failing():
            if self._land_first and not self.landed.is_set():
                self._client.insert_arrow(table, data, settings=settings, **kw)
                self.landed.set()
            self.failures += 1
            raise OperationalError("simulated: connection to ClickHouse lost")
        return self._client.insert_arrow(table, data, settings=settings, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


async def test_sink_survives_clickhouse_outage_without_loss(sink_settings, ch_client):
    s, db = sink_settings, sink_settings.clickhouse_database
    outage: dict[str, float] = {}

    def failing() -> bool:  # down for 4 s from the first insert attempt
        return time.monotonic() < outage.setdefault("until", time.monotonic() + 4.0)

    flaky = FlakyClient(ch_client, failing)
    await produce(s, s.topic_readings, reading_records(devices=10, readings=40, tag="o"))
    sink = ClickHouseSink(s, flaky)
    stop, task = await start_sink(sink)
    try:
        await async_wait_for(lambda: _true(flaky.failures > 0), timeout=30, message="inserts failing")
        await produce(s, s.topic_readings, reading_records(devices=10, readings=40, seq0=40, tag="o"))
        assert (await stored(ch_client, db))[0] == 0
        await wait_rows(ch_client, db, 10 * 80 * 3, timeout=60)
        assert sink.retries >= 2 and time.monotonic() >= outage["until"]
    finally:
        await stop_sink(stop, task)


async def _true(value):
    return value


async def test_restarted_sink_replays_the_planned_block_without_duplicates(sink_settings, ch_client):
    """The insert lands but the sink dies before committing; meanwhile more records arrive, so a naive
    re-batch would differ. The restarted sink re-forms the planned block and its token drops it."""
    s, db = sink_settings, sink_settings.clickhouse_database
    await produce(s, s.topic_readings, reading_records(devices=8, readings=30, tag="r"))
    flaky = FlakyClient(ch_client, lambda: True, land_first=True)
    first = ClickHouseSink(s, flaky)
    stop, task = await start_sink(first)
    await async_wait_for(lambda: _true(flaky.landed.is_set()), timeout=30, message="first insert landed")
    landed = (await stored(ch_client, db))[0]
    assert landed > 0
    await stop_sink(stop, task)  # dies with the batch unacknowledged: nothing committed
    assert first.batches_written == 0

    await produce(s, s.topic_readings, reading_records(devices=8, readings=30, seq0=30, tag="r"))
    second = ClickHouseSink(s, ch_client)
    stop, task = await start_sink(second)
    try:
        await wait_rows(ch_client, db, 8 * 60 * 3, timeout=90)
    finally:
        await stop_sink(stop, task)


async def _recreate_readings_topic(settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    from infra.kafka_admin import create_topics

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([settings.topic_readings])
    finally:
        await admin.close()
    await create_topics(settings)


async def test_plan_of_another_topic_incarnation_is_discarded_not_replayed(sink_settings, ch_client):
    """A planned block (insert landed, offsets not committed), then the topic is deleted and recreated: its
    offsets now hold other records. Replaying the old plan would hold the new records back until the old
    last offset and send them with the old token (ClickHouse drops them); the sink must discard the plan."""
    s, db = sink_settings, sink_settings.clickhouse_database
    await produce(s, s.topic_readings, reading_records(devices=8, readings=30, tag="old"))
    flaky = FlakyClient(ch_client, lambda: True, land_first=True)
    first = ClickHouseSink(s, flaky)
    stop, task = await start_sink(first)
    await async_wait_for(lambda: _true(flaky.landed.is_set()), timeout=30, message="first insert landed")
    await stop_sink(stop, task)
    landed = (await stored(ch_client, db))[0]

    await _recreate_readings_topic(s)
    new = reading_records(devices=2, readings=4, per_record=1, tag="new")  # fewer records than the plan spans
    await produce(s, s.topic_readings, new)
    second = ClickHouseSink(s, ch_client)
    stop, task = await start_sink(second)
    try:
        await wait_rows(ch_client, db, landed + 2 * 4 * 3, timeout=60)
        assert second.reset_discarded >= 1
    finally:
        await stop_sink(stop, task)


class PlanWriteHeld:
    """Wraps a client: the first write of the sink's plans waits until the test sets ``release``."""

    def __init__(self, client) -> None:
        self._client = client
        self.entered = threading.Event()
        self.release = threading.Event()

    def insert(self, table, *args, **kw):
        if table.endswith(".sink_plans") and not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        return self._client.insert(table, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._client, name)


async def test_a_rebalance_while_the_sink_writes_its_plans_abandons_the_flush_and_loses_nothing(
    sink_settings, ch_client
):
    """A rebalance runs its listener while a flush awaits ClickHouse (here: the plans write): the buffers that
    flush formed its blocks from are dropped and the positions move. The flush used to go on and die on the
    missing buffers (KeyError: the sink task ended; seen in CI when a restarted sink's group rebalanced)."""
    s, db = sink_settings, sink_settings.clickhouse_database
    await produce(s, s.topic_readings, reading_records(devices=8, readings=30, tag="b"))
    held = PlanWriteHeld(ch_client)
    sink = ClickHouseSink(s, held)
    stop, task = await start_sink(sink)
    try:
        await async_wait_for(lambda: _true(held.entered.is_set()), timeout=30, message="a flush writing its plans")
        assigned = set(sink.consumer.assignment())
        listener = _Rebalance(sink)  # what aiokafka calls for a rebalance that gives back the same partitions
        await listener.on_partitions_revoked(assigned)
        await sink.consumer.seek_to_beginning(*assigned)  # nothing was committed: where the new owner starts
        await listener.on_partitions_assigned(assigned)
        held.release.set()
        await wait_rows(ch_client, db, 8 * 30 * 3, timeout=60)
        assert not task.done()
    finally:
        held.release.set()
        await stop_sink(stop, task)

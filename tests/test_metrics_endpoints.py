"""Prometheus ``/metrics`` of every service, scraped from real processes after real readings went through:
the stream worker's own endpoint, the API's (requests, WebSocket fan-out, and the embedded sink), and
``iotp sink`` on its own port. Counters must move by exactly what was driven through."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
import websockets

from tests.support.mqtt_publish import publish_readings, reading
from tests.support.prometheus import Scrape, scrape
from tests.support.waiting import async_wait_for, wait_api_ready, wait_for

pytestmark = pytest.mark.integration

DEVICES = 4
PER_DEVICE = 5
N = DEVICES * PER_DEVICE


def _readings(tag: str) -> list[dict]:
    return [reading(f"m-{tag}-{i}", seq) for i in range(DEVICES) for seq in range(1, PER_DEVICE + 1)]


def _scrape_when(url: str, predicate, timeout: float, message: str) -> Scrape:
    def check():
        got = scrape(url)
        return got if got is not None and predicate(got) else None

    return wait_for(check, timeout=timeout, interval=0.3, message=message)


async def test_stream_and_api_metrics_count_exactly_what_went_through(isolated_settings, processes):
    settings = isolated_settings
    for name in ("gateway", "stream", "api"):
        processes.start(name)
    stream_url = f"http://127.0.0.1:{settings.stream_metrics_port}/metrics"
    api_metrics_url = f"{settings.api_url}/metrics"
    headers = {"Authorization": f"Bearer {settings.api_token}"}

    # The worker owns every partition (and its endpoint answers before it joins the group).
    _scrape_when(
        stream_url,
        lambda s: s.value("iotp_stream_partitions_owned") == settings.kafka_partitions,
        timeout=90,
        message="stream worker owns all partitions",
    )

    async with httpx.AsyncClient(base_url=settings.api_url, headers=headers, timeout=10) as http:
        await wait_api_ready(http)
        stream0 = scrape(stream_url)
        api0 = scrape(api_metrics_url)  # no token: /metrics is open (see docs/operations.md)
        assert stream0 is not None and api0 is not None
        assert api0.value("iotp_api_ws_clients") == 0

        tag = uuid.uuid4().hex[:6]
        sent = _readings(tag)
        expected = {(r["device_id"], r["seq"]) for r in sent}  # not the id string: its format is not ours
        seen: set[tuple[str, int]] = set()
        frames = 0
        ws_url = settings.api_url.replace("http", "ws") + "/ws?channels=readings"
        async with websockets.connect(ws_url, additional_headers=headers) as ws:
            await asyncio.to_thread(
                _scrape_when, api_metrics_url, lambda s: s.value("iotp_api_ws_clients") == 1, 10, "one WebSocket client"
            )
            await asyncio.to_thread(publish_readings, settings, sent)

            async def all_on_ws():
                nonlocal frames
                try:
                    while True:
                        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                        frames += 1
                        seen.update((frame["data"]["device_id"], r["seq"]) for r in frame["data"]["readings"])
                except TimeoutError:
                    pass
                return expected <= seen

            await async_wait_for(all_on_ws, timeout=90, message="all readings on the WebSocket")

        # Stream worker: exactly N readings applied, in between 1 and N records (the gateway batches per device).
        base_readings = stream0.get_or_zero("iotp_stream_readings_total")
        stream1 = await asyncio.to_thread(
            _scrape_when,
            stream_url,
            lambda s: s.get_or_zero("iotp_stream_readings_total") - base_readings >= N,
            60,
            "stream readings counter",
        )
        assert stream1.get_or_zero("iotp_stream_readings_total") - base_readings == N
        records = stream1.get_or_zero("iotp_stream_records_total") - stream0.get_or_zero("iotp_stream_records_total")
        assert 1 <= records <= N
        assert stream1.get_or_zero("iotp_stream_duplicates_total") == stream0.get_or_zero(
            "iotp_stream_duplicates_total"
        )
        lags = {k: v for k, v in stream1.items() if k[0] == "iotp_stream_lag_records"}
        assert lags and all(v >= 0 for v in lags.values())

        # Requests by route template (never the concrete path), exactly as many as made.
        route = "/api/devices/{device_id}"
        key = dict(method="GET", route=route, status="200")
        before = (await asyncio.to_thread(scrape, api_metrics_url)).get_or_zero("iotp_api_requests_total", **key)
        for i in range(3):
            assert (await http.get(f"/api/devices/m-{tag}-{i}")).status_code == 200
        assert (await http.get("/no/such/path")).status_code == 404

        # Embedded sink (in the API process): exactly N readings stored; WebSocket: the frames we received.
        def sink_done(s: Scrape) -> bool:
            return s.get_or_zero("iotp_sink_readings_total") - api0.get_or_zero("iotp_sink_readings_total") >= N

        api1 = await asyncio.to_thread(_scrape_when, api_metrics_url, sink_done, 60, "sink readings counter")
        assert api1.get_or_zero("iotp_sink_readings_total") - api0.get_or_zero("iotp_sink_readings_total") == N
        assert api1.get_or_zero("iotp_sink_batches_total") > api0.get_or_zero("iotp_sink_batches_total")
        assert api1.get_or_zero("iotp_sink_dead_lettered_total") == 0
        assert api1.get_or_zero("iotp_api_requests_total", **key) - before == 3
        assert api1.value("iotp_api_requests_total", method="GET", route="<unmatched>", status="404") == 1
        assert not any(k[0] == "iotp_api_requests_total" and ("route", f"/api/devices/m-{tag}-0") in k[1] for k in api1)
        timed = api1.get_or_zero("iotp_api_request_seconds_count", method="GET", route=route)
        counted = sum(v for k, v in api1.items() if k[0] == "iotp_api_requests_total" and ("route", route) in k[1])
        assert timed == counted >= 3
        sent_frames = api1.get_or_zero("iotp_api_ws_frames_sent_total") - api0.get_or_zero(
            "iotp_api_ws_frames_sent_total"
        )
        assert sent_frames == frames
        assert api1.value("iotp_api_ws_clients") == 0  # the client has gone
        assert api1.value("process_resident_memory_bytes") > 0


async def test_sink_process_serves_its_own_metrics(isolated_settings, processes):
    """``iotp sink`` as its own process (here: the embedded chDB directory owned by the sink, no API)."""
    settings = isolated_settings.model_copy(update={"api_embedded_sink": False})
    processes.start("gateway", settings=settings)
    sink = processes.start("sink", settings=settings)
    url = f"http://127.0.0.1:{settings.sink_metrics_port}/metrics"

    def up(s: Scrape) -> bool:
        assert sink.alive(), sink.output()[-3000:]
        return s.value("iotp_sink_readings_total") is not None

    before = await asyncio.to_thread(_scrape_when, url, up, 90, "sink /metrics")
    await asyncio.to_thread(publish_readings, settings, _readings(uuid.uuid4().hex[:6]))

    def stored(s: Scrape) -> bool:
        return s.get_or_zero("iotp_sink_readings_total") - before.get_or_zero("iotp_sink_readings_total") >= N

    after = await asyncio.to_thread(_scrape_when, url, stored, 90, "sink readings counter")
    assert after.get_or_zero("iotp_sink_readings_total") - before.get_or_zero("iotp_sink_readings_total") == N
    # one row per reading x metric (3 metrics each); only readings flow here (no stream worker)
    assert after.get_or_zero("iotp_sink_rows_total") - before.get_or_zero("iotp_sink_rows_total") == 3 * N
    assert after.get_or_zero("iotp_sink_dead_lettered_total") == 0
    await asyncio.to_thread(
        _scrape_when, url, lambda s: s.value("iotp_sink_lag_records") == 0, 30, "sink lag back to 0"
    )

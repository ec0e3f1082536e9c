"""The dashboard page in headless Chromium, on the real pipeline: MQTT -> gateway -> Kafka -> stream jobs ->
Redis -> API -> WebSocket -> page. The alert comes from a real spike reading through MQTT."""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from iotp.kafka import make_producer
from iotp.schema import encode_batch, now_ms
from iotp.topics import redis_names
from tests.dashboard_api.conftest import module_settings, wait_api_ready
from tests.support.mqtt_publish import publish_readings, reading
from tests.support.processes import ProcessGroup
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
DEVICES = 4


class Feeder(threading.Thread):
    """Publishes one normal reading per device every 0.5 s (values vary, so no flatline alert); a spike
    can be requested for one device."""

    def __init__(self, settings, device_ids):
        super().__init__(daemon=True)
        self.settings, self.device_ids = settings, device_ids
        self.stop = threading.Event()
        self.spike: str | None = None
        self.seq = 10_000  # above the backfilled history
        self.errors: list[Exception] = []

    def run(self):
        while not self.stop.is_set():
            self.seq += 1
            batch = []
            for i, d in enumerate(self.device_ids):
                phase = self.seq / 8 + i
                temp = 60.0 if d == self.spike else 22.0 + 2 * math.sin(phase)
                batch.append(
                    reading(
                        d,
                        self.seq,
                        temperature=round(temp, 3),
                        humidity=round(45 + 5 * math.cos(phase), 3),
                        co2=round(600 + 50 * math.sin(phase / 2), 3),
                    )
                )
            try:
                publish_readings(self.settings, batch)
            except Exception as exc:  # reported by the test
                self.errors.append(exc)
            self.stop.wait(0.5)


def backfill(settings, device_id: str, minutes: int = 60, every_s: int = 10) -> None:
    """An hour of history for one device, produced to the readings topic as the gateway would, so the
    charts have a downsampled series to show (the API's sink writes it to ClickHouse)."""
    now = now_ms()
    n = minutes * 60 // every_s
    readings = []
    for k in range(n):
        ts = now - (n - k) * every_s * 1000
        phase = k / 40
        readings.append(
            {
                "id": f"{device_id}:{k + 1}",
                "seq": k + 1,
                "ts": ts,
                "rx": ts,
                "metrics": {
                    "temperature": round(22 + 2 * math.sin(phase) + 0.01 * (k % 7), 3),
                    "humidity": round(45 + 5 * math.cos(phase) + 0.02 * (k % 5), 3),
                    "co2": round(600 + 50 * math.sin(phase / 2) + (k % 3), 3),
                },
            }
        )

    async def produce():
        producer = make_producer(settings)
        await producer.start()
        try:
            for i in range(0, n, 60):
                await producer.send_and_wait(
                    settings.topic_readings,
                    encode_batch(device_id, "climate", readings[i : i + 60]),
                    key=device_id.encode(),
                )
        finally:
            await producer.stop()

    asyncio.run(produce())


@pytest.fixture(scope="module")
def pipeline(stack_settings, tmp_path_factory):
    settings = module_settings(stack_settings, tmp_path_factory.mktemp("browser"))
    group = ProcessGroup(settings, tmp_path_factory.mktemp("browser-logs"))
    try:
        for name in ("gateway", "stream"):
            group.start(name)
        api = group.start("api", env={"IOTP_API_WS_HEARTBEAT_S": "2"})
        wait_api_ready(settings, api)
        yield settings
    finally:
        group.stop_all()


def test_dashboard_page_live_values_alert_and_ack(pipeline, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    settings = pipeline
    tag = uuid.uuid4().hex[:5]
    device_ids = [f"room-{tag}-{i}" for i in range(DEVICES)]
    spiky = device_ids[1]
    backfill(settings, device_ids[0])
    feeder = Feeder(settings, device_ids)
    feeder.start()
    rds = redis.Redis.from_url(settings.redis_url)
    names = redis_names(settings)
    try:
        headers = {"X-API-Token": settings.api_token}

        def fleet_known():
            items = httpx.get(f"{settings.api_url}/api/devices", headers=headers, timeout=10).json()["items"]
            return len([d for d in items if d["device_id"] in device_ids]) == DEVICES

        wait_for(fleet_known, timeout=120, interval=0.5, message="devices through the pipeline")

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            foreign: list[str] = []  # the page loads nothing from elsewhere (uPlot is vendored, no CDN)
            page.on("request", lambda r: None if r.url.startswith(settings.api_url) else foreign.append(r.url))
            # log in through the page's form: the token becomes an HttpOnly cookie, never a URL or JS value
            page.goto(f"{settings.api_url}/")
            expect(page.locator("#login")).to_be_visible(timeout=10_000)
            page.fill("#login-token", settings.api_token)
            page.locator("#login button[type=submit]").click()
            expect(page.locator("#whoami")).to_have_text("operator", timeout=10_000)
            session = next(c for c in page.context.cookies() if c["name"] == "iotp_session")
            assert session["httpOnly"] and session["sameSite"] == "Strict"
            assert settings.api_token not in page.url
            assert page.evaluate("document.cookie") == "", "the session cookie is not readable by scripts"

            expect(page.locator("#conn")).to_have_text("live", timeout=20_000)
            tile = page.locator(f'.tile[data-device="{device_ids[0]}"]')
            expect(tile).to_be_visible(timeout=20_000)
            expect(page.locator(".tile")).to_have_count(DEVICES)
            expect(tile.locator(".unit").first).to_be_visible()  # units from /api/profiles
            expect(tile).to_contain_text("°C")
            # live values change: the sequence number and a metric value on the tile move on
            seq0 = int(tile.locator(".seq").get_attribute("data-seq"))
            temp0 = tile.locator('.v[data-metric="temperature"]').inner_text()
            page.wait_for_function(
                "([id, s]) => +document.querySelector(`.tile[data-device='${id}'] .seq`).dataset.seq >= s + 3",
                arg=[device_ids[0], seq0],
                timeout=20_000,
            )
            seq = tile.locator(".seq")
            assert seq.inner_text() == f"{int(seq.get_attribute('data-seq')):,}", "seq is shown with grouped digits"
            assert tile.locator('.v[data-metric="temperature"]').inner_text() != temp0
            expect(page.locator("#counters")).to_contain_text("readings received")
            # the pipeline panel shows throughput per stage
            expect(page.locator('.stage[data-stage="gateway"] .rate')).to_contain_text("received/s", timeout=15_000)
            expect(page.locator('.stage[data-stage="gateway"] .spark .uplot canvas')).to_be_visible()

            # device panel: one live chart per metric, history range picker
            tile.click()
            expect(page.locator("#device-panel")).to_be_visible()
            expect(page.locator("#charts .chart")).to_have_count(3)
            expect(page.locator('#charts .chart[data-metric="temperature"] .title')).to_contain_text("°C")
            expect(page.locator("#device-resolution")).to_contain_text("resolution: ", timeout=15_000)
            expect(page.locator("#device-resolution")).to_contain_text("1m")  # 360 readings > max_points 300
            # each chart is a uPlot (a canvas inside .uplot) drawing the downsampled hour plus live readings
            expect(page.locator("#charts .chart .uplot canvas")).to_have_count(3)
            temp_chart = page.locator('#charts .chart[data-metric="temperature"]')
            expect(temp_chart.locator(".uplot canvas")).to_be_visible()
            page.wait_for_function(
                "() => +document.querySelector(\"#charts .chart[data-metric='temperature']\").dataset.points >= 60",
                timeout=15_000,
            )
            expect(temp_chart.locator(".nodata")).to_be_hidden()
            expect(page.locator("#device-meta")).to_contain_text("seq ")
            for name in ("24h", "7d", "1h"):  # each range loads the downsampled series of every metric
                with page.expect_response(lambda r, n=name: "/history?" in r.url and f"range={n}" in r.url) as resp:
                    page.locator(f'.ranges button[data-range="{name}"]').click()
                assert resp.value.ok, resp.value.text()
                expect(page.locator(f'.ranges button[data-range="{name}"]')).to_have_class("active")
                expect(page.locator("#device-resolution")).to_contain_text("resolution: ")
            latest = page.locator('#charts .chart[data-metric="temperature"] .latest')
            first = latest.inner_text()
            page.wait_for_function(
                "v => document.querySelector(\"#charts .chart[data-metric='temperature'] .latest\").textContent !== v",
                arg=first,
                timeout=15_000,
            )

            # an anomaly through the real pipeline: the stream jobs open an alert, the page shows it
            feeder.spike = spiky
            alert = page.locator(".alert", has=page.locator(".dev", has_text=spiky)).first
            expect(alert).to_be_visible(timeout=60_000)
            expect(alert).to_contain_text("temperature")
            expect(page.locator(f'.tile[data-device="{spiky}"]')).to_have_class("tile alerting", timeout=15_000)
            alert_id = alert.get_attribute("data-alert-id")
            alert.locator("button.ack").click()
            expect(page.locator(f'.alert[data-alert-id="{alert_id}"] .ackinfo')).to_have_text(
                "✓ acked by dashboard", timeout=10_000
            )
            assert rds.hget(names.alert_acks, alert_id) is not None

            page.wait_for_timeout(300)  # let the last chart frame paint before the picture
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            out = REPO / "test-output"
            out.mkdir(exist_ok=True)
            shutil.copy(shot, out / "dashboard.png")
            assert not errors, errors
            assert not foreign, foreign
            browser.close()
        assert not feeder.errors, feeder.errors[:3]
    finally:
        feeder.stop.set()
        feeder.join(10)
        rds.close()

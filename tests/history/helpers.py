"""Building readings for the history tests."""

from __future__ import annotations

import random

from history.columns import readings_arrow

MIN = 60_000


def make_rows(
    devices: int,
    per_device: int,
    start_ms: int,
    step_ms: int = 7_000,
    seed: int = 1,
    metrics: tuple[str, ...] = ("temperature", "humidity"),
    device_type: str = "climate",
) -> list[tuple]:
    rnd = random.Random(seed)
    rows = []
    for d in range(devices):
        for i in range(per_device):
            ts = start_ms + i * step_ms
            for m in metrics:
                rows.append((f"dev-{d}", device_type, m, ts, round(rnd.gauss(20 + d, 3), 3), i, ts))
    return rows


def insert_rows(client, database: str, rows: list[tuple], token: str | None = None) -> None:
    settings = {"insert_deduplication_token": token} if token else None
    client.insert_arrow(f"{database}.readings", readings_arrow(rows), settings=settings)

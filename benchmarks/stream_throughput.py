"""Stream job throughput: one Faust worker (``iotp stream``) draining a pre-filled readings topic.

Run:  .venv/bin/python benchmarks/stream_throughput.py [--records 20000] [--devices 2000]

Starts its own Redis and Kafka-wire broker (``infra.stack.LocalStack``) on free loopback ports in a
temporary directory. For each variant (readings per Kafka record = 1 and 10), it pre-produces
``--records`` device batches (climate devices, 3 metrics per reading, realistic values), then starts one
worker and measures from the first to the last record processed, taken from the worker's own Redis
counters (``stream.records`` / ``stream.readings``, written ~1/s, so the figures carry ~1 s of
granularity). Writes ``benchmarks/results/stream_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from infra.kafka_admin import create_topics_sync
from infra.stack import LocalStack, loopback_settings, settings_env
from iotp.kafka import make_producer
from iotp.schema import encode_batch, now_ms
from iotp.settings import Settings
from iotp.topics import redis_names

RESULTS = Path(__file__).resolve().parent / "results" / "stream_throughput.json"


async def fill(settings: Settings, records: int, devices: int, per_record: int) -> int:
    rng = random.Random(1)
    producer = make_producer(settings)
    await producer.start()
    seq = dict.fromkeys(range(devices), 0)
    t0 = now_ms() - 3_600_000
    try:
        for i in range(records):
            d = i % devices
            rows = []
            for _ in range(per_record):
                seq[d] += 1
                ts = t0 + seq[d] * 1000
                rows.append(
                    {
                        "id": f"bench-{d}:{seq[d]}",
                        "seq": seq[d],
                        "ts": ts,
                        "rx": ts,
                        "metrics": {
                            "temperature": round(21 + rng.gauss(0, 0.2), 3),
                            "humidity": round(45 + rng.gauss(0, 0.5), 3),
                            "co2": round(500 + rng.gauss(0, 8), 2),
                        },
                    }
                )
            await producer.send(
                settings.topic_readings, key=f"bench-{d}".encode(), value=encode_batch(f"bench-{d}", "climate", rows)
            )
        await producer.flush()
    finally:
        await producer.stop()
    return records * per_record


def isolated_settings(base: Settings, **overrides) -> tuple[Settings, str]:
    """``base`` with topics, Redis prefix and stream app of their own (one benchmark variant), and the tag."""
    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(
        update=dict(
            topic_readings=f"b{tag}.readings",
            topic_deadletter=f"b{tag}.dlq",
            topic_aggregates=f"b{tag}.aggregates",
            topic_alerts=f"b{tag}.alerts",
            topic_sink_deadletter=f"b{tag}.sdlq",
            redis_prefix=f"b{tag}",
            stream_app_id=f"bench-{tag}",
            stream_stats_interval_s=0.5,
            **overrides,
        )
    )
    return s, tag


def variant(base: Settings, tmp: Path, records: int, devices: int, per_record: int, timeout: float) -> dict:
    s, tag = isolated_settings(base)
    create_topics_sync(s)
    readings = asyncio.run(fill(s, records, devices, per_record))
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    stats = redis_names(s).stats_key
    env = {**os.environ, **settings_env(s), "PYTHONUNBUFFERED": "1"}
    log = (tmp / f"stream-{tag}.log").open("wb")
    prof = ["-m", "cProfile", "-o", os.environ["STREAM_PROFILE"]] if os.environ.get("STREAM_PROFILE") else []
    proc = subprocess.Popen(
        [sys.executable, *prof, "-m", "iotp_cli", "stream", "--loglevel", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first = last = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = int(r.hget(stats, "stream.records") or 0)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done >= records:
                last = (now, done)
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
    if first is None or last is None:
        return {"readings_per_record": per_record, "error": f"timed out after {timeout}s"}
    elapsed = max(last[0] - first[0], 1e-3)
    counted = last[1] - first[1]
    return {
        "readings_per_record": per_record,
        "records": records,
        "readings": readings,
        "devices": devices,
        "records_per_s": round(counted / elapsed),
        "readings_per_s": round(counted * per_record / elapsed),
        "aggregates": int(r.hget(stats, "stream.aggregates") or 0),
        "alerts": int(r.hget(stats, "stream.alerts") or 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotp-stream-bench-") as tmpdir:
        tmp = Path(tmpdir)
        base = loopback_settings(
            tmp / "state",
            gateway_metrics_port=0,
        )
        stack = LocalStack(base)
        stack.up()
        try:
            for per_record in (1, 10):
                rows.append(variant(base, tmp, args.records, args.devices, per_record, args.timeout))
                print(rows[-1], flush=True)
        finally:
            stack.down()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"variants": rows, "note": "one worker, 4 partitions, 2 shared cores"}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

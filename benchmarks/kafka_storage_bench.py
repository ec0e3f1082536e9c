"""Local Kafka-wire broker (tansu 0.6.0) storage engines side by side: ``memory://`` vs ``s3://`` on the
local file-backed object store (``infra/object_store.py``), i.e. ``IOTP_KAFKA_STORAGE=memory`` vs ``s3``.

Run:  .venv/bin/python benchmarks/kafka_storage_bench.py [--records 20000] [--latency-records 500]

For each engine, one after the other, it starts its own broker (and for ``s3`` its own store) on free
loopback ports in a temporary directory, creates a 4-partition topic and measures with aiokafka:

- produce throughput: ``--records`` records of ~200 B, keyed by 1,000 device ids, acks=all, lz4,
  linger 5 ms (what the gateway's producer does);
- consume throughput: the same records read back from the beginning by one consumer;
- produce latency, one record at a time: ``send_and_wait`` per record, p50/p99;
- produce latency, batched: 100 records sent together, time until all are acknowledged, p50/p99.

Writes ``benchmarks/results/kafka_storage_bench.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from infra.kafka_broker import broker_command
from infra.kafka_storage import broker_storage, store_command
from infra.ports import free_port, wait_port

RESULTS = Path(__file__).resolve().parent / "results" / "kafka_storage_bench.json"
HOST = "127.0.0.1"
TOPIC = "bench.storage"
PARTITIONS = 4
VALUE = b"r" * 200
BATCH = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def key(i: int) -> bytes:
    return f"device-{i % 1000:04d}".encode()


async def measure(bootstrap: str, records: int, latency_records: int) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="lz4", linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(TOPIC, VALUE, key=key(i)) for i in range(records)]
        await asyncio.gather(*futures)
        produce_s = time.perf_counter() - t0

        single = []
        for i in range(latency_records):
            t = time.perf_counter()
            await producer.send_and_wait(TOPIC, VALUE, key=key(i))
            single.append(time.perf_counter() - t)

        batched = []
        for b in range(max(1, latency_records // 10)):
            t = time.perf_counter()
            futures = [await producer.send(TOPIC, VALUE, key=key(b * BATCH + i)) for i in range(BATCH)]
            await asyncio.gather(*futures)
            batched.append(time.perf_counter() - t)
    finally:
        await producer.stop()
    total = records + latency_records + len(batched) * BATCH

    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        read = 0
        t0 = time.perf_counter()
        deadline = t0 + 300
        while read < total and time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            read += sum(len(m) for m in batch.values())
        consume_s = time.perf_counter() - t0
    finally:
        await consumer.stop()
    if read < total:
        raise RuntimeError(f"read back only {read} of {total} records")

    return {
        "produce_records_per_s": round(records / produce_s),
        "consume_records_per_s": round(read / consume_s),
        "send_and_wait_p50_ms": round(percentile(single, 0.5) * 1000, 2),
        "send_and_wait_p99_ms": round(percentile(single, 0.99) * 1000, 2),
        "send_and_wait_mean_ms": round(statistics.fmean(single) * 1000, 2),
        f"batch{BATCH}_ack_p50_ms": round(percentile(batched, 0.5) * 1000, 2),
        f"batch{BATCH}_ack_p99_ms": round(percentile(batched, 0.99) * 1000, 2),
        "records_total": total,
    }


def disk_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def run_engine(storage: str, workdir: Path, records: int, latency_records: int) -> dict:
    kafka_port, store_port = free_port(), free_port()
    processes: list[subprocess.Popen] = []
    logs = []
    store_dir = workdir / storage / "kafka-store"
    try:
        if storage == "s3":
            log = open(workdir / f"{storage}-store.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            processes.append(subprocess.Popen(store_command(HOST, store_port, store_dir), stdout=log, stderr=log))
            wait_port(HOST, store_port, 30, "object store")
        url, env = broker_storage(storage, HOST, store_port)
        log = open(workdir / f"{storage}-tansu.log", "wb")  # noqa: SIM115 - closed in finally
        logs.append(log)
        processes.append(
            subprocess.Popen(broker_command(HOST, kafka_port, url), stdout=log, stderr=log, env={**os.environ, **env})
        )
        wait_port(HOST, kafka_port, 30, "tansu")
        result = asyncio.run(measure(f"{HOST}:{kafka_port}", records, latency_records))
        if storage == "s3":
            size, files = disk_usage(store_dir)
            result["store_bytes"] = size
            result["store_files"] = files
        return {"storage": storage, **result}
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--latency-records", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="iotp-kafka-storage-") as tmp:
        rows = [run_engine(storage, Path(tmp), args.records, args.latency_records) for storage in ("memory", "s3")]

    table = Table(title="tansu 0.6.0 storage engines (aiokafka, acks=all, ~200 B keyed records, 4 partitions)")
    for column in (
        "storage",
        "produce rec/s",
        "consume rec/s",
        "send_and_wait p50 ms",
        "p99 ms",
        f"{BATCH}-record batch p50 ms",
        "p99 ms",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["storage"],
            f"{row['produce_records_per_s']:,}",
            f"{row['consume_records_per_s']:,}",
            f"{row['send_and_wait_p50_ms']}",
            f"{row['send_and_wait_p99_ms']}",
            f"{row[f'batch{BATCH}_ack_p50_ms']}",
            f"{row[f'batch{BATCH}_ack_p99_ms']}",
        )
    Console().print(table)
    s3 = next(r for r in rows if r["storage"] == "s3")
    print(
        f"s3 store on disk after {s3['records_total']:,} records: {s3['store_bytes'] / 1e6:.1f} MB in "
        f"{s3['store_files']:,} files"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "engines": rows,
                "records": args.records,
                "latency_records": args.latency_records,
                "note": "one aiokafka client on the same 2 shared cores as the broker (and store); "
                "engines measured one after the other in one run",
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

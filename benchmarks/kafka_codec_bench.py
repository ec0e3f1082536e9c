"""The gateway's Kafka record batches compressed by aiokafka's own batch builder, per codec and lz4 level.

Run:  .venv/bin/python benchmarks/kafka_codec_bench.py [--devices 250] [--batches 200] [--rounds 3]

One batch = one partition-mode record (``IOTP_KAFKA_RECORD_MODE=partition``) as the gateway builds it with
its own encoders: ``--devices`` power meters, one reading each (5 metrics, noisy values), i.e. what one
partition collects in one linger at ~5,000 msgs/s. Each variant builds ``--batches`` batches with
``DefaultRecordBatchBuilder`` (the class aiokafka's producer uses), ``--rounds`` times, interleaved, and
reports the best round: CPU µs per batch and per reading, the compressed size, and the ratio. The lz4
levels are set with ``iotp.kafka.install_lz4_level``; aiokafka 0.14 itself always uses level 9.

Writes ``benchmarks/results/kafka_codec_bench.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from iotp.kafka import AIOKAFKA_LZ4_LEVEL, install_lz4_level  # noqa: E402
from iotp.schema import encode_batch, encode_partition_batch, now_ms, reading_id  # noqa: E402

CODES = {"none": 0, "snappy": 2, "lz4": 3, "zstd": 4}
VARIANTS = [("none", None), ("lz4", 9), ("lz4", 1), ("lz4", 0), ("snappy", None), ("zstd", None)]


def partition_record(devices: int, rng: random.Random) -> bytes:
    ts = now_ms()
    encoded = []
    for d in range(devices):
        device = f"lt-s0-power-{d:05d}"
        seq = rng.randrange(1, 10_000)
        reading = {
            "id": reading_id(device, ts + d, seq),
            "seq": seq,
            "ts": ts + d,
            "rx": ts + d + rng.randrange(5, 40),
            "metrics": {
                "voltage": round(rng.gauss(230, 3), 2),
                "current": round(rng.uniform(0, 30), 3),
                "power_kw": round(rng.uniform(0, 7), 3),
                "power_factor": round(rng.uniform(0.85, 1.0), 3),
                "frequency": round(rng.gauss(50, 0.02), 3),
            },
        }
        encoded.append(encode_batch(device, "power", [reading]))
    return encode_partition_batch(encoded)


def build(value: bytes, codec: str) -> int:
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=CODES[codec], is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=4 << 20,
    )  # fmt: skip
    builder.append(0, timestamp=None, key=None, value=value, headers=[])
    return len(builder.build())


def measure(values: list[bytes], codec: str, level: int | None) -> tuple[float, float]:
    """(CPU seconds per batch, mean batch bytes)."""
    if level is not None:
        install_lz4_level(level)
    started = time.process_time()
    sizes = [build(v, codec) for v in values]
    return (time.process_time() - started) / len(values), sum(sizes) / len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=250)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kafka_codec_bench.json")
    args = parser.parse_args()
    rng = random.Random(12)
    values = [partition_record(args.devices, rng) for _ in range(args.batches)]
    raw = sum(len(v) for v in values) / len(values)
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(args.rounds):
            for codec, level in VARIANTS:
                name = codec if level is None else f"{codec} level {level}"
                cpu, size = measure(values, codec, level)
                if name not in best or cpu < best[name][0]:
                    best[name] = (cpu, size)
    finally:
        install_lz4_level(AIOKAFKA_LZ4_LEVEL)
    table = Table(
        "variant", "CPU µs per batch", "CPU µs per reading", "batch bytes", "of uncompressed",
        title=f"aiokafka record batches: one partition record, {args.devices} readings ({raw / 1024:.0f} KiB)",
    )  # fmt: skip
    rows = []
    for name, (cpu, size) in best.items():
        row = {
            "variant": name,
            "cpu_us_per_batch": round(cpu * 1e6, 1),
            "cpu_us_per_reading": round(cpu * 1e6 / args.devices, 2),
            "batch_bytes": round(size),
            "ratio": round(size / raw, 3),
        }
        rows.append(row)
        table.add_row(
            name, f"{row['cpu_us_per_batch']:,.1f}", f"{row['cpu_us_per_reading']:.2f}", f"{size:,.0f}",
            f"{row['ratio']:.0%}",
        )  # fmt: skip
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"config": {k: v for k, v in vars(args).items() if k != "out"}, "results": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

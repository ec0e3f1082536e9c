"""Reference limits measured in the same run: what the machine allows without the pipeline's Python.

- the MQTT broker with its own C clients (``mosquitto_pub -l`` → ``mosquitto_sub``), end to end;
- a bare aiokafka producer (acks=all, the pipeline's compression) into a scratch topic.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from iotp.kafka import make_producer
from iotp.settings import Settings

PAYLOAD = (
    b'{"v":1,"device_id":"climate-00001","device_type":"climate","seq":1763800000000,'
    b'"ts":1763800000123,"metrics":{"temperature":21.43,"humidity":41.02,"co2":612.5}}'
)


def mqtt_c_clients(settings: Settings, messages: int = 200_000, qos: int = 0, timeout: float = 60.0) -> dict:
    """Messages/s through Mosquitto from ``mosquitto_pub -l`` to ``mosquitto_sub`` (both C clients)."""
    pub, sub = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if not pub or not sub:
        return {"error": "mosquitto-clients not installed"}
    topic = f"iotp-ref/{uuid.uuid4().hex[:8]}"  # the simulator account's scratch topics (docs/security.md)
    common = ["-h", settings.mqtt_host, "-p", str(settings.mqtt_port), "-q", str(qos), "-t", topic]
    # Credentials go through the clients' own config files ($XDG_CONFIG_HOME/mosquitto_pub|sub), not argv.
    config_dir = tempfile.TemporaryDirectory()
    env = {**os.environ, "XDG_CONFIG_HOME": config_dir.name}
    if settings.mqtt_username:
        for name in ("mosquitto_pub", "mosquitto_sub"):
            path = Path(config_dir.name) / name
            path.touch(mode=0o600)
            path.write_text(f"-u {settings.mqtt_username}\n-P {settings.mqtt_password or ''}\n")
    subscriber = subprocess.Popen(
        [sub, *common, "-C", str(messages), "-W", str(int(timeout))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    time.sleep(0.5)  # let the subscription reach the broker before the first publish
    started = time.perf_counter()
    publisher = subprocess.run(
        [pub, *common, "-l"],
        input=b"\n".join([PAYLOAD] * messages) + b"\n",
        capture_output=True,
        timeout=timeout,
        env=env,
    )
    published = time.perf_counter()
    try:
        subscriber.wait(timeout)
    except subprocess.TimeoutExpired:
        subscriber.kill()
    done = time.perf_counter()
    config_dir.cleanup()
    ok = subscriber.returncode == 0 and publisher.returncode == 0
    return {
        "messages": messages,
        "qos": qos,
        "complete": ok,
        "publish_msgs_s": round(messages / (published - started)),
        "end_to_end_msgs_s": round(messages / (done - started)) if ok else None,
    }


async def _bare_producer(settings: Settings, records: int, size: int) -> dict:
    topic = f"iotp-ref-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.kafka_partitions, settings.kafka_replication)])
    finally:
        await admin.close()
    producer = make_producer(settings)
    await producer.start()
    value = (PAYLOAD * (size // len(PAYLOAD) + 1))[:size]
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value, key=f"d{i % 1000}".encode()) for i in range(records)]
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        except Exception:
            pass
        finally:
            await admin.close()
    return {"records": records, "record_bytes": size, "records_s": round(records / elapsed)}


def kafka_bare_producer(settings: Settings, records: int = 200_000, size: int = 200) -> dict:
    return asyncio.run(_bare_producer(settings, records, size))

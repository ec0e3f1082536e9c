"""The latest-state Lua script (``stream_jobs.redis_state.UPDATE_LATEST``) against the real Redis: order is
(ts, key), so a rebooted device's newer readings overwrite, duplicates and older readings (backfill) do not,
keys near 2^64 compare exactly, and hashes written before the change (``seq`` but no ``k``) still work."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from iotp.schema import NO_SEQ
from iotp.topics import RedisNames
from stream_jobs.redis_state import UPDATE_LATEST, latest_call

pytestmark = pytest.mark.integration
T0 = 1_763_800_000_000


@pytest.fixture
async def latest(stack_settings):
    client = aioredis.from_url(stack_settings.redis_url, decode_responses=True)
    names = RedisNames(f"t{uuid.uuid4().hex[:8]}")
    script = client.register_script(UPDATE_LATEST)

    async def write(device: str, seq: int | None, ts: int, key: int | None = None, value: float = 1.0) -> int:
        reading = {"seq": seq, "ts": ts, "rx": ts, "metrics": {"t": value}}
        if seq is None:
            reading["k"] = key
        keys, args = latest_call(names, [{"device_id": device, "device_type": "climate", "readings": [reading]}], ts)
        return await script(keys=keys, args=args)

    async def state(device: str) -> dict:
        return await client.hgetall(names.device_key(device))

    yield write, state, client, names
    await client.aclose()


async def test_reboot_overwrites_duplicates_and_older_do_not(latest) -> None:
    write, state, _, _ = latest
    assert await write("d", 100, T0 + 100_000, value=100.0) == 1
    assert await write("d", 1, T0 + 200_000, value=2.0) == 1  # rebooted: seq back, time forward
    assert await write("d", 1, T0 + 200_000, value=2.0) == 0  # redelivery
    assert await write("d", 100, T0 + 100_000, value=100.0) == 0  # replayed pre-reboot reading
    assert await write("d", 7, T0 + 50_000, value=7.0) == 0  # backfill, older
    assert await write("d", 2, T0 + 200_000, value=3.0) == 1  # same ms, higher seq: the tie-break
    s = await state("d")
    assert (s["seq"], s["ts"], s["k"], float(s["m:t"])) == ("2", str(T0 + 200_000), "2", 3.0)


async def test_seqless_keys_near_2_64_compare_exactly(latest) -> None:
    write, state, _, _ = latest
    big = NO_SEQ | (2**62 + 12345)
    assert await write("n", None, T0, key=big, value=1.0) == 1
    assert await write("n", None, T0, key=big + 1, value=2.0) == 1  # differs in the last digit only
    assert await write("n", None, T0, key=big, value=1.0) == 0
    s = await state("n")
    assert "seq" not in s and s["k"] == str(big + 1) and float(s["m:t"]) == 2.0


async def test_a_hash_written_before_the_change_still_orders(latest) -> None:
    write, state, client, names = latest
    await client.hset(names.device_key("o"), mapping={"device_id": "o", "seq": 1763800000100, "ts": T0, "m:t": 1})
    assert await write("o", 1763800000099, T0 - 1) == 0  # older
    assert await write("o", 1, T0 + 1000, value=5.0) == 1  # rebooted after the upgrade
    assert float((await state("o"))["m:t"]) == 5.0


async def test_one_call_updates_many_devices_each_by_its_own_order(latest) -> None:
    write, state, client, names = latest
    assert await write("a", 5, T0 + 5000, value=5.0) == 1
    script = client.register_script(UPDATE_LATEST)
    devices = [("a", 4, T0 + 4000), ("b", 1, T0 + 1000), ("c", 2, T0 + 2000)]  # a: older, must not overwrite
    batches = [
        {
            "device_id": d,
            "device_type": "climate",
            "readings": [{"seq": q, "ts": ts, "rx": ts, "metrics": {"t": float(q)}}],
        }
        for d, q, ts in devices
    ]
    keys, args = latest_call(names, batches, T0)
    assert await script(keys=keys, args=args) == 2
    assert [float((await state(d))["m:t"]) for d in "abc"] == [5.0, 1.0, 2.0]
    assert await client.zscore(names.fleet_index, "c") == T0 + 2000

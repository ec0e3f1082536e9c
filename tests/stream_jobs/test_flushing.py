"""The flush pipeline as pure logic (stream_jobs/flushing.py): a fake write that the test lets finish, a
fake clock. The integration side (real worker, broker, Redis) is tests/stream_jobs/test_snapshot_interval.py."""

from __future__ import annotations

import asyncio
import itertools

from stream_jobs.engine import Effects
from stream_jobs.flushing import Flusher


class FakeRedis:
    """Records the writes; each write waits until the test releases it."""

    def __init__(self) -> None:
        self.writes: list[tuple[Effects, dict | None]] = []
        self.release = asyncio.Event()
        self.in_write = asyncio.Event()

    async def write(self, fx: Effects, snapshot: dict | None) -> None:
        self.in_write.set()
        await self.release.wait()
        self.writes.append((fx, snapshot))


class Ack:
    """An ackable item (stands for a Faust event) that records its ack."""

    def __init__(self, acked: list, name: object) -> None:
        self.acked, self.name = acked, name

    def ack(self) -> None:
        self.acked.append(self.name)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def effects(partition: int, offset: int, *devices: str) -> Effects:
    fx = Effects()
    fx.offsets[partition] = offset
    fx.dirty[partition] = set(devices)
    fx.published.append(b"x")
    return fx


def state_encoder(state: dict[str, int]):
    """An encoder over a mutable 'engine state' (device -> value), recording what it was asked for."""

    def encode(dirty: dict[int, set[str]], partitions: set[int]) -> dict:
        return {
            p: {**{d: state[d] for d in sorted(dirty.get(p, ()))}, "__offset__": state["offset"]} for p in partitions
        }

    return encode


def released_flusher(state: dict, interval_s: float, **kwargs) -> tuple[Flusher, FakeRedis, Clock, list]:
    """A flusher over ``state`` whose writes complete at once (the fake Redis is released), its fake Redis and
    clock, and the list its acks go to."""
    redis, clock = FakeRedis(), Clock()
    redis.release.set()
    return Flusher(redis.write, state_encoder(state), interval_s=interval_s, clock=clock, **kwargs), redis, clock, []


async def test_acks_wait_for_the_redis_write_of_a_snapshot_that_covers_them() -> None:
    redis, clock, acked = FakeRedis(), Clock(), []
    state = {"a": 1, "offset": 1}
    flusher = Flusher(redis.write, state_encoder(state), interval_s=2.0, clock=clock)
    clock.now += 5  # a snapshot is due with the first flush
    await flusher.submit(effects(0, 1, "a"), [Ack(acked, 0)])
    await redis.in_write.wait()
    assert acked == []  # the write is in flight: not acked
    redis.release.set()
    await flusher.wait()
    assert acked == [0]
    assert redis.writes[-1][1] == {0: {"a": 1, "__offset__": 1}}


async def test_the_next_batch_is_processed_while_a_flush_is_in_flight_and_flushes_stay_in_order() -> None:
    redis, clock = FakeRedis(), Clock()
    state = {"a": 1, "offset": 1}
    flusher = Flusher(redis.write, state_encoder(state), interval_s=0.0, clock=clock)
    first = effects(0, 1, "a")
    await flusher.submit(first)  # returns with the write in flight
    await redis.in_write.wait()
    assert redis.writes == []
    state.update(a=2, offset=2)  # "processing the next batch" while the first flush is in flight
    second = effects(0, 2, "a")
    submit = asyncio.ensure_future(flusher.submit(second))
    await asyncio.sleep(0)
    assert not submit.done()  # the second flush waits for the first (one in flight)
    redis.release.set()
    await submit
    await flusher.wait()
    assert [fx for fx, _ in redis.writes] == [first, second]
    # each snapshot is the state when its flush was submitted, not when it was written
    assert [snap for _, snap in redis.writes] == [{0: {"a": 1, "__offset__": 1}}, {0: {"a": 2, "__offset__": 2}}]


async def test_snapshots_at_most_every_interval_while_effects_go_out_with_every_flush() -> None:
    state = {"a": 0, "b": 0, "offset": 0}
    flusher, redis, clock, acked = released_flusher(state, 2.0)
    for i in range(1, 11):  # 10 flushes, 0.5 s apart
        clock.now += 0.5
        state.update(a=i, offset=i)
        devices = ("a", "b") if i == 3 else ("a",)
        await flusher.submit(effects(0, i, *devices), [Ack(acked, i)])
        await flusher.wait()
    assert len(redis.writes) == 10  # effects with every flush
    snaps = [snap for _, snap in redis.writes if snap is not None]
    assert snaps == [{0: {"a": 4, "b": 0, "__offset__": 4}}, {0: {"a": 8, "__offset__": 8}}]
    assert acked == list(range(1, 9))  # 9 and 10 wait for the next snapshot
    await flusher.submit(Effects())  # a tick before the interval: nothing to write, nothing acked
    assert acked == list(range(1, 9))
    clock.now += 2.0
    await flusher.submit(Effects())  # the tick after it: the snapshot that releases 9 and 10
    await flusher.wait()
    assert acked == list(range(1, 11))
    assert redis.writes[-1][1] == {0: {"a": 10, "__offset__": 10}}


async def test_a_forced_snapshot_covers_everything_pending_and_forget_drops_revoked_partitions() -> None:
    state = {"a": 1, "b": 1, "offset": 1}
    flusher, redis, _clock, acked = released_flusher(state, 60.0)
    await flusher.submit(effects(0, 1, "a"), [Ack(acked, "p0")])
    await flusher.submit(effects(1, 1, "b"), [Ack(acked, "p1")])
    await flusher.wait()
    assert acked == [] and flusher.pending
    flusher.forget([1])
    await flusher.submit(Effects(), snapshot=True)
    await flusher.wait()
    assert redis.writes[-1][1] == {0: {"a": 1, "__offset__": 1}}
    assert acked == ["p0", "p1"] and not flusher.pending


async def test_a_failing_write_acks_nothing_and_blocks_the_next_flush() -> None:
    clock, acked = Clock(), []
    clock.now += 5

    async def broken(fx, snapshot):
        raise ConnectionError("redis down")

    flusher = Flusher(broken, state_encoder({"a": 1, "offset": 1}), interval_s=0.0, clock=clock)
    await flusher.submit(effects(0, 1, "a"), [Ack(acked, 1)])
    try:
        await flusher.submit(effects(0, 2, "a"), [Ack(acked, 2)])
    except ConnectionError:
        pass
    else:
        raise AssertionError("the failure of the flush in flight must reach the next submit")
    assert acked == []


async def test_not_pipelined_submit_returns_after_the_write() -> None:
    flusher, redis, _clock, acked = released_flusher({"a": 1, "offset": 1}, 0.0, pipelined=False)
    await flusher.submit(effects(0, 1, "a"), [Ack(acked, 1)])
    assert len(redis.writes) == 1 and acked == [1]


async def test_dropped_held_acks_are_never_acked_and_the_rest_still_are() -> None:
    """A partition whose offsets turned out to be another incarnation's (a wiped broker): its held acks must
    not reach Faust, which would otherwise commit the old log's offsets on the new log."""
    state = {"a": 1, "b": 1, "offset": 1}
    flusher, _redis, _clock, acked = released_flusher(state, 60.0)
    await flusher.submit(effects(0, 1, "a"), [Ack(acked, "p0")])
    await flusher.submit(effects(1, 1, "b"), [Ack(acked, "p1-old")])
    dropped = flusher.drop_held(lambda item: item.name == "p1-old")
    assert [item.name for item in dropped] == ["p1-old"]
    await flusher.submit(Effects(), snapshot=True)
    await flusher.wait()
    assert acked == ["p0"] and not flusher.pending


class PartitionAck(Ack):
    """An ack of a record of ``partition``."""

    def __init__(self, acked: list, name: object, partition: int) -> None:
        super().__init__(acked, name)
        self.partition = partition


async def test_staggered_snapshots_take_one_partition_at_a_time_and_release_only_its_acks() -> None:
    """Four partitions, every one dirty in every flush (a flush every 0.1 s for 12 s, interval 2 s): each
    snapshot covers one partition, the snapshots are spread interval/4 apart, every partition gets one every
    ~interval, and an ack is released only by a snapshot of its own partition, taken after its record."""
    state = {f"d{p}": p for p in range(4)} | {"offset": 0}
    flusher, redis, clock, acked = released_flusher(state, 2.0, partition_of=lambda a: a.partition)
    submitted_at: dict[str, float] = {}
    snapshots: list[tuple[float, set[int]]] = []
    for i in range(120):
        clock.now += 0.1
        fx = Effects()
        for p in range(4):
            fx.offsets[p] = i
            fx.dirty[p] = {f"d{p}"}
        acks = [PartitionAck(acked, f"{p}:{i}", p) for p in range(4)]
        submitted_at.update({a.name: clock.now for a in acks})
        before = len(redis.writes)
        released_before = len(acked)
        await flusher.submit(fx, acks)
        await flusher.wait()
        snapshot = redis.writes[before][1] if len(redis.writes) > before else None
        if snapshot:
            parts = set(snapshot)
            snapshots.append((clock.now, parts))
            assert len(parts) == 1, f"one partition per snapshot, got {parts}"
            (p,) = parts
            newly = acked[released_before:]
            assert newly and all(name.startswith(f"{p}:") for name in newly), "only its own partition's acks"
            assert all(submitted_at[name] <= clock.now for name in newly)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(snapshots)]
    assert all(0.45 <= g <= 0.65 for g in gaps), gaps  # interval / 4 (+ one flush period)
    for p in range(4):
        times = [t for t, parts in snapshots if p in parts]
        assert len(times) >= 4
        assert all(1.9 <= b - a <= 2.5 for a, b in itertools.pairwise(times)), (p, times)


async def test_a_forced_snapshot_still_covers_every_partition_when_staggered() -> None:
    state = {"a": 1, "b": 2, "offset": 7}
    flusher, redis, _clock, acked = released_flusher(state, 60.0, partition_of=lambda a: a.partition)
    await flusher.submit(effects(0, 1, "a"), [PartitionAck(acked, "p0", 0)])
    await flusher.submit(effects(1, 1, "b"), [PartitionAck(acked, "p1", 1)])
    await flusher.wait()
    assert acked == [] and flusher.pending
    await flusher.submit(Effects(), snapshot=True)
    await flusher.wait()
    assert redis.writes[-1][1] == {0: {"a": 1, "__offset__": 7}, 1: {"b": 2, "__offset__": 7}}
    assert sorted(acked) == ["p0", "p1"] and not flusher.pending

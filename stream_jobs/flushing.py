"""The stream job's flushes: pipelined with the processing of the next batch, snapshots at most every
``stream_snapshot_interval_s``, and the records acked only once a snapshot that covers them is in Redis.

Why. A flush used to run in line with the processing: apply a take-batch, produce its outputs to Kafka and
wait for the acks, write Redis in one MULTI/EXEC and wait for it, then let Faust ack the records. While
Kafka and Redis worked (on the other core) the worker idled -- about 30 % of its wall time with partition
records -- and every flush encoded the snapshot of every device it touched, which at one reading per device
per flush is one snapshot per reading (~12 us of the worker's ~60 us per reading).

What :class:`Flusher` does instead:

1. **One flush in flight, in order.** :meth:`Flusher.submit` starts the flush as a task and returns, so the
   next batch is processed while Kafka and Redis work; the next submit first waits for the flush in flight.
   Flushes are therefore written one at a time, in the order they were submitted (Kafka outputs, then the
   Redis transaction), exactly as before.
2. **A flush's content is fixed when it is submitted.** The effects (:class:`Effects`) are new objects per
   batch, and the snapshot -- device states and the partitions' offsets and marks -- is encoded there and
   then, synchronously, from the engine's state after the batch. Processing that happens while the flush
   is in flight cannot leak into it, so the snapshot and its offset always describe the same state.
3. **Snapshots at most every ``interval_s``** (0: every flush, the old behaviour). The devices dirtied and
   the partitions advanced in between accumulate; the latest state, pub/sub, open alerts and the Kafka
   outputs still go out with every flush (live latency is unchanged). A forced snapshot is written on a
   rebalance and after an offset reset.
4. **Acks are held until a snapshot covers them.** The records of a batch are acked (``ack`` callables,
   i.e. Faust's ``event.ack``) only after the Redis transaction of the first snapshot submitted after them
   succeeded. So Kafka's committed offset never passes the snapshot, as before; what a crash can now repeat
   is the effects of up to ``interval_s`` of records (the same kind of effects a crash between the Kafka
   produce and the Redis write could always repeat: idempotent, see docs/stream-processing.md).

5. **Staggered by partition** (when the flusher knows each ack's partition, as the stream job's does). A
   partition's snapshot -- its device states and its offset -- is consistent on its own, so the partitions
   take turns: one partition's snapshot every ``interval_s / partitions``, each partition's every
   ``interval_s``, and a snapshot releases the held acks of its partition only. Encoding every device of a
   worker at once stalled the event loop for ~250 ms every 2 s at 5,000 devices (~3.5 KB of state per
   device); staggered over 4 partitions the stall is a quarter of that, four times as often
   (docs/performance.md). A forced snapshot still covers every partition.

A flush that fails is retried forever inside its task (the caller's ``write`` does that): the next submit
waits for it, so an outage stalls the worker (backpressure) instead of acking unwritten effects.

Faust waits for every record it handed out to be acked before a rebalance and before it stops
(``Consumer.wait_empty``, without a time limit). The stream job therefore keeps snapshotting while Faust
waits (:meth:`stream_jobs.app.StreamJob.release_held`); a record whose snapshot cannot be written then is
:meth:`Flusher.abandon` -ed, never acked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from stream_jobs.engine import Effects

#: partition -> the fields of its snapshot hash to write (device id -> encoded state, ``__offset__``, ...)
Snapshot = dict[int, dict[Any, Any]]
Write = Callable[[Effects, Snapshot | None], Awaitable[None]]
EncodeSnapshot = Callable[[dict[int, set[str]], set[int]], Snapshot]


class Ackable(Protocol):
    """What the flusher acks once a snapshot covers it (a Faust event)."""

    def ack(self) -> object: ...


class Flusher:
    """Pipelined flushes with held acks (module docstring). ``write(fx, snapshot)`` writes one flush and
    retries until it succeeds; ``encode(dirty, partitions)`` encodes the snapshot of those devices and the
    offsets of those partitions from the engine's current state (synchronously)."""

    def __init__(
        self,
        write: Write,
        encode: EncodeSnapshot,
        interval_s: float,
        *,
        pipelined: bool = True,
        clock: Callable[[], float] = time.monotonic,
        partition_of: Callable[[Ackable], int] | None = None,
    ) -> None:
        """``partition_of``: the partition of an ack's record; given, the snapshots are staggered by partition
        (module docstring, point 5), else every snapshot covers every pending partition."""
        self._write = write
        self._encode = encode
        self.interval_s = interval_s
        self.pipelined = pipelined
        self._clock = clock
        self.dirty: dict[int, set[str]] = {}  # partition -> devices changed since the last snapshot
        self.advanced: set[int] = set()  # partitions whose offset moved since the last snapshot
        self.held: list[Ackable] = []  # acks waiting for the next snapshot
        self.last_snapshot = clock()
        self._partition_of = partition_of
        self._last_by_partition: dict[int, float] = {}  # staggered: when each partition's snapshot was taken
        self._next_slot = self.last_snapshot + interval_s  # staggered: no partition's snapshot before this
        self.snapshots = 0  # snapshots written (for tests and benchmarks)
        self._in_flight: asyncio.Task[None] | None = None

    @property
    def pending(self) -> bool:
        """Is there state or are there acks that no snapshot covers yet?"""
        return bool(self.dirty or self.advanced or self.held)

    def _due(self, *, force: bool) -> set[int] | None:
        """The partitions whose snapshot goes with this flush; ``None``: no snapshot now. Unstaggered (or
        forced, or ``interval_s`` 0) every pending partition, once the interval has passed."""
        if not self.pending:
            return None
        now = self._clock()
        pending = set(self.dirty) | self.advanced
        part = self._partition_of
        if part is not None:
            pending |= {part(item) for item in self.held}
        if part is None or force or self.interval_s <= 0:
            return pending if force or now - self.last_snapshot >= self.interval_s else None
        for partition in pending:
            self._last_by_partition.setdefault(partition, self.last_snapshot)
        if now < self._next_slot:
            return None
        return {min(pending, key=lambda p: self._last_by_partition[p])}  # the one whose snapshot is oldest

    async def submit(self, fx: Effects, acks: Iterable[Ackable] = (), *, snapshot: bool = False) -> None:
        """Queue the effects of one batch (or tick) and the acks of its records. Writes a snapshot with it if
        one is due (``interval_s`` passed since the last) or ``snapshot`` forces it. Returns once the flush
        is started (or, not pipelined, written)."""
        for partition, devices in fx.dirty.items():
            self.dirty.setdefault(partition, set()).update(devices)
        self.advanced.update(fx.offsets)
        self.held.extend(acks)
        encoded: Snapshot | None = None
        release: list[Ackable] = []
        due = self._due(force=snapshot)
        if due is not None:
            dirty = {p: self.dirty.pop(p) for p in due if p in self.dirty}
            advanced = self.advanced & due
            self.advanced -= advanced
            encoded = self._encode(dirty, advanced) if dirty or advanced else {}
            if self._partition_of is None:
                release, self.held = self.held, []
            else:
                part = self._partition_of
                release = [item for item in self.held if part(item) in due]
                self.held = [item for item in self.held if part(item) not in due]
            now = self._clock()
            self.last_snapshot = now
            for partition in due:
                self._last_by_partition[partition] = now
            if self._partition_of is not None and not snapshot:  # staggered: the next partition's turn
                self._next_slot = now + self.interval_s / max(1, len(self._last_by_partition))
        if not fx and encoded is None:
            return
        await self.wait()
        self._in_flight = asyncio.ensure_future(self._run(fx, encoded, release))
        if not self.pipelined:
            await self.wait()

    async def wait(self) -> None:
        """Until the flush in flight (if any) is written and its acks are done."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            await task

    def abandon(self) -> list[Ackable]:
        """Give up on what is pending (a stop whose snapshot could not be written): return the held items,
        never to be acked (their records are read again by the next owner), and forget the state."""
        held, self.held = self.held, []
        self.dirty, self.advanced = {}, set()
        return held

    def drop_held(self, drop: Callable[[Ackable], bool]) -> list[Ackable]:
        """Take the held acks for which ``drop`` is true out, never to be acked (records of a partition whose
        offsets now belong to another incarnation of the topic, or that this worker no longer owns)."""
        dropped = [item for item in self.held if drop(item)]
        if dropped:
            self.held = [item for item in self.held if not drop(item)]
        return dropped

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what is pending for partitions this worker no longer owns (their new owner replays it)."""
        for partition in partitions:
            self.dirty.pop(partition, None)
            self.advanced.discard(partition)
            self._last_by_partition.pop(partition, None)

    async def _run(self, fx: Effects, snapshot: Snapshot | None, release: list[Ackable]) -> None:
        if fx or snapshot:
            await self._write(fx, snapshot)
        if snapshot is not None:
            self.snapshots += 1
        for item in release:  # only now: the snapshot that covers these records is in Redis
            item.ack()

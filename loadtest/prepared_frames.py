"""A load step's PUBLISH frames built before it starts, so that publishing costs a copy and a timestamp.

Why: at 10k messages/s the lean publisher spent most of its CPU making the readings (the simulator's signal
models, JSON, MQTT framing) while the pipeline it measures needed the same two cores. None of that depends
on when a message is sent except the reading's ``ts``. So every frame of the step is made in advance, in
send order, with the simulator's own readings (:meth:`simulator.fleet.Device.reading_at` at the message's
planned time, so signals and ``seq`` are exactly those of a live run). Each ``ts`` is written as a
13-digit placeholder; when the message is sent its digits are overwritten with the send time (minus the
reading's offset inside a batched message), which keeps the frame's length, so the MQTT remaining length
and everything after it stay valid. Epoch milliseconds have 13 digits from 2001 to 2286.

All frames sit in one ``bytearray`` with three offset arrays: about 270 bytes a message for the load test's
power meters, so a 60 s step at 10k messages/s is ~160 MB. :func:`prepared_bytes_estimate` lets the caller
fall back to generating live beyond a memory budget.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import orjson

from loadtest.mqtt_frames import publish_packet
from simulator.fleet import Device

TS_DIGITS = 13
_PLACEHOLDER = 10**TS_DIGITS - 1  # 9999999999999: 13 digits, like every epoch ms until 2286
_PLACEHOLDER_FIELD = b'"ts":' + str(_PLACEHOLDER).encode()
BYTES_PER_MESSAGE_ESTIMATE = 280  # a load-test power meter: a ~250 B frame and 24 B of offsets (measured: 272)


def prepared_bytes_estimate(messages: int, batch: int) -> int:
    return messages * BYTES_PER_MESSAGE_ESTIMATE * max(1, batch)


class PreparedFrames:
    """``count`` PUBLISH frames in send order: message ``i`` is device ``i % len(devices)``'s next reading
    (or ``batch`` of them), packet id ``i % 65535 + 1``."""

    def __init__(
        self,
        devices: Sequence[Device],
        topics: Sequence[bytes],
        count: int,
        *,
        msg_rate: float,
        start_ms: int,
        qos: int = 1,
        batch: int = 1,
    ) -> None:
        if len(devices) != len(topics) or not devices:
            raise ValueError("need one topic per device, and at least one device")
        self.batch = batch = max(1, batch)
        self.data = bytearray()
        self.ends = array("Q")  # end offset of message i in data
        self.ts_at = array("Q")  # offset of reading j's ts digits (j = i * batch + k)
        self.ts_lag = array("L")  # reading j's ts = send time - ts_lag[j] (batched messages only)
        interval_ms = 1000.0 * len(devices) / (msg_rate * batch)  # one device's time between its readings
        lags = [math.ceil((batch - 1 - k) * interval_ms) for k in range(batch)]
        n = len(devices)
        for i in range(count):
            device = devices[i % n]
            planned = start_ms + int(i * 1000 / msg_rate)
            readings = [device.reading_at(planned - lag) for lag in lags]
            for r in readings:
                r["ts"] = _PLACEHOLDER
            body = orjson.dumps(readings[0] if batch == 1 else readings)
            frame = publish_packet(topics[i % n], body, qos, i % 65535 + 1)
            base = len(self.data)
            head = len(frame) - len(body)
            at = -1
            for lag in lags:
                at = frame.index(_PLACEHOLDER_FIELD, at + 1 if at >= 0 else head)
                self.ts_at.append(base + at + 5)  # after '"ts":'
                self.ts_lag.append(lag)
            self.data += frame
            self.ends.append(len(self.data))

    def __len__(self) -> int:
        return len(self.ends)

    def append_to(self, out: bytearray, start: int, stop: int, send_ms: int) -> None:
        """Messages ``start``..``stop - 1`` onto ``out``, their readings stamped ``send_ms``."""
        if stop <= start:
            return
        begin = self.ends[start - 1] if start else 0
        shift = len(out) - begin
        out += memoryview(self.data)[begin : self.ends[stop - 1]]
        batch = self.batch
        if batch == 1:
            stamp = b"%d" % send_ms
            if len(stamp) != TS_DIGITS:
                raise ValueError(f"send time {send_ms} is not {TS_DIGITS} digits")
            for j in range(start, stop):
                at = self.ts_at[j] + shift
                out[at : at + TS_DIGITS] = stamp
            return
        for j in range(start * batch, stop * batch):
            at = self.ts_at[j] + shift
            stamp = b"%d" % (send_ms - self.ts_lag[j])
            if len(stamp) != TS_DIGITS:
                raise ValueError(f"send time {send_ms} is not {TS_DIGITS} digits")
            out[at : at + TS_DIGITS] = stamp

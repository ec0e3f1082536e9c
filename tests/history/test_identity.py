"""Reading identity in ClickHouse: (device_id, ts, seq) with seq optional (issue 11).

Rows go through the sink's real decoder (``decode_readings``) into embedded chDB with the migrated schema,
and ``ingest_check`` (the load test's exact accounting) is read back."""

from __future__ import annotations

import time

import orjson
import pytest

from history.decode import Rejected, decode_readings
from history.migrations import migrate
from history.queries import ingest_check
from iotp.schema import NO_SEQ, encode_batch, reading_id, reading_key
from tests.history.helpers import insert_rows

T0 = (int(time.time()) - 3600) * 1000


def batch(device_id: str, readings: list[dict]) -> bytes:
    return encode_batch(device_id, "climate", readings)


def r(ts: int, seq: int | None, value: float) -> dict:
    out = {"id": "", "seq": seq, "ts": ts, "rx": ts, "metrics": {"temperature": value}}
    if seq is None:
        out["k"] = reading_key(None, out["metrics"])
    return out


def store(client, db: str, device_id: str, readings: list[dict]) -> None:
    insert_rows(client, db, decode_readings(batch(device_id, readings)))


def test_reboot_is_not_duplicates_nor_a_gap_storm(ch) -> None:
    client, db = ch
    store(client, db, "rb-1", [r(T0 + i * 1000, i, 20.0) for i in range(1, 101)])
    # reboot: seq 1..50 again, later time, new values
    store(client, db, "rb-1", [r(T0 + 200_000 + i * 1000, i, 30.0) for i in range(1, 51)])
    check = ingest_check(client, db, "rb-")
    assert (check["readings"], check["rows"], check["duplicate_rows"]) == (150, 150, 0)
    assert check["missing_in_sequence"] == 0
    # a real gap inside a run is still found
    store(client, db, "rb-2", [r(T0 + i * 1000, i, 1.0) for i in (1, 2, 5, 6)])
    assert ingest_check(client, db, "rb-2")["missing_in_sequence"] == 2


def test_a_redelivered_row_is_a_duplicate(ch) -> None:
    client, db = ch
    rows = [r(T0 + i, i, 1.0) for i in range(1, 4)]
    store(client, db, "dup-1", rows)
    store(client, db, "dup-1", rows[:1])  # the same identity again (another Kafka record)
    check = ingest_check(client, db, "dup-")
    assert (check["readings"], check["rows"], check["duplicate_rows"]) == (3, 4, 1)


def test_device_without_seq(ch) -> None:
    client, db = ch
    same_ms = [r(T0, None, 1.0), r(T0, None, 2.0)]  # two different readings in one millisecond
    store(client, db, "ns-1", [*same_ms, r(T0 + 1000, None, 1.0)])
    check = ingest_check(client, db, "ns-")
    assert (check["readings"], check["duplicate_rows"], check["missing_in_sequence"]) == (3, 0, 0)
    keys = client.query(f"SELECT seq, has_seq, reading_id FROM {db}.readings WHERE device_id = 'ns-1' ORDER BY ts, seq")
    for seq, has_seq, rid in keys.result_rows:
        assert seq >= NO_SEQ and has_seq == 0
        assert rid.startswith("ns-1:")
    assert {row[2] for row in keys.result_rows} == {
        reading_id("ns-1", x["ts"], x["k"]) for x in [*same_ms, r(T0 + 1000, None, 1.0)]
    }


def test_decoder_computes_a_missing_key_and_rejects_bad_ones() -> None:
    plain = {"id": "", "seq": None, "ts": T0, "rx": T0, "metrics": {"temperature": 1.0}}
    [row] = decode_readings(batch("d", [plain]))
    assert row[5] == reading_key(None, {"temperature": 1.0}) >= NO_SEQ
    no_field = {k: v for k, v in plain.items() if k != "seq"}
    assert decode_readings(batch("d", [no_field])) == [row]
    for bad in ({**plain, "k": 5}, {**plain, "seq": NO_SEQ}, {**plain, "seq": -1}, {**plain, "seq": "7"}):
        with pytest.raises(Rejected):
            decode_readings(orjson.dumps({"v": 1, "device_id": "d", "device_type": "climate", "readings": [bad]}))


def test_migration_4_on_an_existing_v3_table(ch_client, ch_settings) -> None:
    from history.migrations import MIGRATIONS

    db = ch_settings.clickhouse_database
    try:
        import history.migrations as m

        saved = m.MIGRATIONS
        m.MIGRATIONS = [x for x in saved if x[0] <= 3]
        try:
            migrate(ch_client, db, ch_settings)
        finally:
            m.MIGRATIONS = saved
        insert_rows(ch_client, db, [("old", "climate", "temperature", T0, 1.0, 7, T0)])
        assert migrate(ch_client, db, ch_settings) == [v for v, _, _ in MIGRATIONS if v > 3]
        assert migrate(ch_client, db, ch_settings) == []
        [(rid,)] = ch_client.query(f"SELECT reading_id FROM {db}.readings").result_rows
        assert rid == f"old:{T0}:7"
    finally:
        ch_client.command(f"DROP DATABASE IF EXISTS {db} SYNC")

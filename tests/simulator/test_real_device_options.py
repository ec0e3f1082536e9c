"""Simulator options that model real devices (issue 11): reboots restart seq, some devices send no seq."""

from __future__ import annotations

from simulator.fleet import build_fleet
from simulator.scenario import Scenario
from simulator.stream import generate_readings

T0 = 1_763_800_000_000


def test_reboot_every_restarts_seq_while_time_goes_on() -> None:
    [device] = build_fleet(1, seed=1, seq0=0, reboot_every=3)
    readings = [device.reading_at(T0 + i * 1000) for i in range(8)]
    assert [r["seq"] for r in readings] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert len({(r["ts"], r["seq"]) for r in readings}) == 8  # identities stay distinct


def test_no_seq_fraction_is_spread_and_exact() -> None:
    fleet = build_fleet(10, seed=1, no_seq_fraction=0.3)
    without = [d.device_id for d in fleet if "seq" not in d.reading_at(T0)]
    assert len(without) == 3
    assert [d.device_id for d in build_fleet(10, seed=1)] == [d.device_id for d in fleet]  # same fleet otherwise


def test_scenario_carries_the_options_to_generated_readings() -> None:
    scenario = Scenario().with_overrides(devices=4, reboot_every=2, no_seq_fraction=0.5, anomaly_rate=0.0)
    readings = list(generate_readings(scenario, T0, 20.0, seed=1, interval_s=1.0))
    with_seq = [r for r in readings if "seq" in r]
    assert with_seq and len(with_seq) < len(readings)
    assert {r["seq"] for r in with_seq} >= {1, 2}  # rebooted (the first run starts after seq0 = start)


def test_a_restarted_simulator_is_the_same_fleet_without_a_seed():
    """`make stop` / `make run` restarts the simulator without --seed: the same ids must come back with the
    same types, or every device of the previous run turns offline with a silence alert (seen before: 21 of
    30 devices)."""
    first = [(d.device_id, d.device_type) for d in build_fleet(30)]
    again = [(d.device_id, d.device_type) for d in build_fleet(30)]
    assert first == again
    assert len({t for _, t in first}) == 3, "still a mixed fleet"

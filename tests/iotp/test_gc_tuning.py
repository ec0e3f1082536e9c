"""iotp.gc_tuning: the services' collector thresholds come from the settings, and what exists at start-up
is frozen out of every later collection (pure logic; the process's own collector, restored after)."""

from __future__ import annotations

import gc

import pytest

from iotp import gc_tuning
from iotp.settings import Settings


@pytest.fixture
def restore_gc():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)
    gc.unfreeze()


def test_tune_applies_the_thresholds_of_the_settings(restore_gc, monkeypatch):
    monkeypatch.setenv("IOTP_GC_THRESHOLDS", "[12345,7,3]")
    assert gc_tuning.tune(Settings(_env_file=None)) == (12345, 7, 3)
    assert gc.get_threshold() == (12345, 7, 3)


def test_the_default_raises_generation_0_far_above_cpythons(restore_gc):
    assert gc_tuning.tune(Settings(_env_file=None))[0] >= 50 * 700


def test_objects_alive_at_tune_are_frozen(restore_gc):
    gc.unfreeze()
    alive = [[] for _ in range(1000)]
    gc_tuning.tune(Settings(_env_file=None))
    assert gc.get_freeze_count() >= len(alive)

"""The garbage collector's pauses: frozen objects are walked by no collection, and pauses are timed."""

from __future__ import annotations

import gc
import itertools

import pytest

from asrfleet.gc_pauses import GcPauses, freeze_loaded


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it was


def test_what_was_alive_at_loading_is_walked_by_no_collection(unfrozen):
    loaded = [[]]  # tracked by the collector
    assert any(o is loaded for o in gc.get_objects())
    frozen = freeze_loaded()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is loaded for o in gc.get_objects())
    served = [[]]
    assert any(o is served for o in gc.get_objects())


def test_garbage_is_collected_before_freezing(unfrozen):
    cycle: list = []
    cycle.append(cycle)
    del cycle
    before = gc.get_count()[0]
    freeze_loaded()
    assert gc.get_count()[0] < max(before, 1)
    assert gc.garbage == []


def test_each_collection_is_timed_by_generation():
    ticks = itertools.count(start=10.0, step=0.25)  # every reading 250 ms after the last
    pauses = GcPauses(clock=lambda: next(ticks)).install()
    gc.disable()  # only the collections below
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.enable()
        pauses.remove()
    stats = pauses.as_dict()
    assert stats["gc_collections"] == 3
    assert stats["gc_pause_s"] == pytest.approx(0.75)
    assert stats["gc_full_collections"] == 2
    assert stats["gc_full_pause_s"] == pytest.approx(0.5)
    assert stats["gc_longest_pause_ms"] == pytest.approx(250.0)


def test_removed_it_counts_nothing():
    pauses = GcPauses().install()
    pauses.install()  # twice is once
    pauses.remove()
    assert pauses._on_gc not in gc.callbacks
    gc.collect()
    assert pauses.as_dict()["gc_collections"] == 0


def test_a_collection_already_running_when_installed_is_not_counted():
    pauses = GcPauses(clock=lambda: 1.0)
    pauses._on_gc("stop", {"generation": 2})
    assert pauses.collections == 0

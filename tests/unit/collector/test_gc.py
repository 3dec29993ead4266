"""collector.gc_young_threshold: the per-process garbage-collector tuning (tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from attune.collector.app import tune_gc
from attune.config import AttuneConfig, CollectorConfig, ConfigError


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold(
    restore_gc: None,
) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    survivor = [object()]  # alive at start-up: must be frozen, not collected later
    assert tune_gc(20_000) is True
    # Only the youngest threshold changes; the older generations keep theirs (10, 10).
    assert gc.get_threshold() == (20_000, 10, 10)
    assert gc.get_freeze_count() > 0
    # frozen: in the permanent generation, which no collection scans, not in generation 2
    assert gc.is_tracked(survivor)
    assert not any(o is survivor for o in gc.get_objects(generation=2))


def test_tune_gc_zero_keeps_pythons_defaults(restore_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    assert tune_gc(0) is False
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_collector_defaults_and_refusals() -> None:
    c = CollectorConfig()
    assert (c.kafka_append, c.gc_young_threshold) == ("accumulator", 20_000)
    with pytest.raises((ConfigError, ValueError), match="kafka_append"):
        AttuneConfig.model_validate({"collector": {"kafka_append": "fast"}})
    with pytest.raises((ConfigError, ValueError), match="gc_young_threshold"):
        AttuneConfig.model_validate({"collector": {"gc_young_threshold": -1}})

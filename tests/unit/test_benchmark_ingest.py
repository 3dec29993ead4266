"""The ingest benchmark's --against overrides: parsed, refused when malformed, validated."""

from __future__ import annotations

from types import ModuleType

import pytest
from pydantic import ValidationError

from attune.config import AttuneConfig
from tests.unit.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def ingest() -> ModuleType:
    return load_benchmark("ingest")


def test_against_overrides_apply_to_their_section_as_validated_values(ingest: ModuleType) -> None:
    overrides = ingest.parse_overrides(
        ["collector.gc_young_threshold=0", "kafka.producer.linger_ms=20"]
    )
    assert overrides == (
        ("collector", "gc_young_threshold", "0"),
        ("kafka.producer", "linger_ms", "20"),
    )
    base = AttuneConfig()
    cfg = ingest._variant(base, overrides)
    # strings from the command line arrive as the config's types
    assert cfg.collector.gc_young_threshold == 0
    assert cfg.kafka.producer.linger_ms == 20
    # everything else as it was
    assert cfg.collector.kafka_append == base.collector.kafka_append
    assert cfg.kafka.producer.acks == base.kafka.producer.acks


@pytest.mark.parametrize("item", ["collector.gc_young_threshold", "api.port=1", "=3", "x=1"])
def test_malformed_against_is_refused_with_the_expected_form(ingest: ModuleType, item: str) -> None:
    with pytest.raises(ValueError, match=r"expected SECTION\.KEY=VALUE"):
        ingest.parse_overrides([item])


def test_a_bad_value_fails_the_configs_own_validation(ingest: ModuleType) -> None:
    overrides = ingest.parse_overrides(["collector.gc_young_threshold=-5"])
    with pytest.raises(ValidationError, match="gc_young_threshold"):
        ingest._variant(AttuneConfig(), overrides)


def test_the_before_settings_apply(ingest: ModuleType) -> None:
    # --compare's "before" runs: Python values, not command-line strings
    cfg = ingest._variant(AttuneConfig(), ingest.BEFORE)
    assert cfg.collector.kafka_append == "send"
    assert cfg.collector.gc_young_threshold == 0

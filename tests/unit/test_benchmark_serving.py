"""The serving benchmark's ``--compare`` variants: parsing, config overrides, per-thread CPU."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from attune.config import AttuneConfig
from tests.unit.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("serving")


def test_a_variant_is_a_name_and_dotted_keys(bench: ModuleType) -> None:
    assert bench.parse_variant("t2:api.impressions=false,serving.request_threads=2") == (
        "t2",
        {"api.impressions": "false", "serving.request_threads": "2"},
    )
    assert bench.parse_variant("plain") == ("plain", {})
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        bench.parse_variant("bad:serving.request_threads")


def test_overrides_are_typed_and_validated(bench: ModuleType) -> None:
    cfg = AttuneConfig()
    out = bench.with_overrides(cfg, {"serving.request_threads": "2", "api.impressions": "false"})
    assert out.serving.request_threads == 2  # YAML "2" -> int
    assert out.api.impressions is False  # YAML "false" -> bool
    assert cfg.serving.request_threads == 8  # the original is left as it was
    with pytest.raises(SystemExit, match=r"unknown config key 'serving\.no_such_key'"):
        bench.with_overrides(cfg, {"serving.no_such_key": "1"})
    with pytest.raises(ValueError, match="request_threads"):
        bench.with_overrides(cfg, {"serving.request_threads": "many"})


def test_thread_cpu_covers_the_main_thread(bench: ModuleType) -> None:
    threads = bench.thread_cpu_seconds(os.getpid())
    assert os.getpid() in threads  # the main thread's id is the process id
    assert all(seconds >= 0 for seconds in threads.values())
    assert bench.thread_cpu_seconds(2**22 + 12345) == {}  # no such process

"""The serving benchmark's ``--compare`` variants: parsing, config overrides, per-thread CPU."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest

from attune.config import AttuneConfig
from tests.unit.benchmark_modules import BENCH, load_benchmark


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


def test_background_load_views_catalog_items_by_users_the_probe_never_asks_for(
    bench: ModuleType,
) -> None:
    from attune.events import Event

    items = ["i1", "i2", "i3"]
    events = bench.background_events(items, 200, seed=1)
    assert len(events) == 200
    assert len({e["event_id"] for e in events}) == 200
    assert {e["items"][0]["item_id"] for e in events} <= set(items)
    # the freshness probe clicks as bu<N>: the load's users must not move those lists
    assert all(e["user_id"].startswith("load") for e in events)
    # with the time the load process stamps on each, they are valid events
    Event.model_validate({**events[0], "timestamp": "2026-12-07T00:00:00+00:00"})


def test_the_freshness_line_says_whether_a_load_ran(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # format_tables imports its sibling memory.py
    fr = {
        "trials": 2,
        "timeouts": 0,
        "p50_s": 0.01,
        "p95_s": 0.02,
        "p99_s": 0.03,
        "max_s": 0.04,
        "samples_s": [0.01, 0.04],
        "trigger": "realtime",
        "writer": "jvm",
        "queries": "bronze,online",
    }
    loaded = {"rate": 1000.0, "sent": 60_000, "accepted": 60_000, "errors": 0}
    report: dict[str, Any] = {"load": {}, "held": {}}
    plain = bench.format_tables({**report, "freshness": {**fr, "background_load": None}})
    assert "background load: none" in plain
    text = bench.format_tables(
        {**report, "freshness": {**fr, "background_load": {**loaded, "achieved_per_s": 998.5}}}
    )
    assert "background load: 998 item views/s through the collector (asked 1,000)" in text
    assert "60,000 of 60,000 accepted, 0 failed requests" in text

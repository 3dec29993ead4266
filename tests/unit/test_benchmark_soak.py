"""The soak benchmark's pure parts: window totals, the probe's "held", the memory trend."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.unit.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load_benchmark("soak")


def window(
    recs: tuple[int, int, list[float]],
    events: tuple[int, int, list[float]] = (0, 0, []),
    feedback: tuple[int, int, list[float]] = (0, 0, []),
    errors: dict[str, int] | None = None,
    s5xx: int = 0,
    sources: dict[str, int] | None = None,
) -> dict[str, Any]:
    def ep(offered: int, done: int, lat: list[float]) -> dict[str, Any]:
        return {
            "offered": offered,
            "done": done,
            "s5xx": 0,
            "errors": {},
            "lat": lat,
            "sources": {},
        }

    w = {
        "recommendations": ep(*recs),
        "events": ep(*events),
        "feedback": ep(*feedback),
    }
    w["recommendations"]["sources"] = sources if sources is not None else {"model": recs[1]}
    w["events"]["errors"] = errors or {}
    w["events"]["s5xx"] = s5xx
    return {"t": 10.0, "final": False, "pending": 0, "endpoints": w}


def test_merge_windows_sums_counts_and_pools_latencies(soak: ModuleType) -> None:
    a = window((6, 6, [1.0, 2.0, 3.0]), errors={"HTTP 503": 1}, s5xx=1)
    b = window((4, 3, [4.0, 5.0]), errors={"HTTP 503": 2, "OSError": 1}, s5xx=2)
    out = soak.merge_windows([a, b])
    recs = out["recommendations"]
    # 6 + 4 offered, 6 + 3 answered; latencies 1..5: median 3, max 5, sources 6 + 3 from the model
    assert (recs["offered"], recs["done"], recs["p50_ms"], recs["max_ms"]) == (10, 9, 3.0, 5.0)
    assert recs["sources"] == {"model": 9}
    # 503s: 1 + 2, and the connection error once
    assert out["events"]["s5xx"] == 3
    assert out["events"]["errors"] == {"HTTP 503": 3, "OSError": 1}
    assert out["feedback"]["p99_ms"] is None  # nothing answered


def test_held_needs_answers_no_errors_the_model_and_the_p99(soak: ModuleType) -> None:
    fast = [5.0] * 100
    ok = soak.merge_windows([window((100, 100, fast), (50, 50, fast), (10, 10, fast))])
    assert soak.held(ok, 15.0)[:2] == (True, True)
    # 97 of 100 answered is under 98 %
    short = soak.merge_windows([window((100, 97, fast[:97]))])
    assert soak.held(short, 15.0)[:2] == (False, False)
    # one 503 among the events
    failed = soak.merge_windows([window((100, 100, fast), errors={"HTTP 503": 1}, s5xx=1)])
    assert soak.held(failed, 15.0)[:2] == (False, False)
    # a fallback answer
    fallback = soak.merge_windows([window((100, 100, fast), sources={"model": 99, "popular": 1})])
    assert soak.held(fallback, 15.0)[:2] == (False, False)
    # 100 latencies of 30 ms: p99 30 > 15, everything else fine -> kept up, not held
    slow = soak.merge_windows([window((100, 100, [30.0] * 100))])
    held, kept_up, why = soak.held(slow, 15.0)
    assert (held, kept_up) == (False, True)
    assert "p99 30.0 ms > 15 ms" in why


def test_trend_of_a_flat_series_is_no_growth(soak: ModuleType) -> None:
    # 100, 101, 100, 101, ... over 0..9 min: the least-squares slope is small and its
    # interval includes 0
    t = [float(i) for i in range(10)]
    out = soak.trend(t, [100.0 + (i % 2) for i in range(10)])
    lo, hi = out["ci95_mb_per_min"]
    assert lo < 0 < hi
    assert out["verdict"] == "no growth"


def test_trend_of_a_steady_climb_is_growth(soak: ModuleType) -> None:
    # y = 100 + 2 t over t = 0..10 min: slope exactly 2 MB/min with a zero-width interval,
    # growth 2 * 10 = 20 MB over a mean of 110 MB = 18 % >= 5 %
    t = [float(i) for i in range(11)]
    out = soak.trend(t, [100.0 + 2 * x for x in t])
    assert out["slope_mb_per_min"] == pytest.approx(2.0)
    assert out["fitted_growth_mb"] == pytest.approx(20.0)
    assert out["fitted_growth_fraction"] == pytest.approx(20 / 110)
    assert out["verdict"] == "growth"


def test_trend_of_a_small_climb_is_no_growth(soak: ModuleType) -> None:
    # y = 1000 + 0.5 t over 0..10 min: 5 MB over a mean of 1002.5 MB is 0.5 % < 5 %
    t = [float(i) for i in range(11)]
    out = soak.trend(t, [1000.0 + 0.5 * x for x in t])
    assert out["verdict"] == "no growth"


def test_trend_needs_three_samples(soak: ModuleType) -> None:
    assert soak.trend([0.0, 1.0], [1.0, 2.0])["verdict"] == "too few samples"

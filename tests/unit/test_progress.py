"""Progress lines: rate and ETA worked out by hand for a fake clock."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from attune.progress import (
    Heartbeat,
    RateEta,
    format_count,
    format_rate,
    progress_lines,
    rate_eta_line,
    reporter,
    spark_tasks,
)


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("done", "total", "unit", "elapsed", "expected"),
    [
        # 30 in 10 s = 3.0/s; (120 - 30) / 3 = 30 s left
        (30, 120, "ev", 10.0, "x: 30/120 ev, 3.0 ev/s, ETA 30 s"),
        # 1,500 in 5 s = 300/s; 4,500 left / 300 = 15 s
        (1500, 6000, "rec", 5.0, "x: 1,500/6,000 rec, 300 rec/s, ETA 15 s"),
        # 3 in 6 s = 0.5/s; 7 left / 0.5 = 14 s
        (3, 10, "trials", 6.0, "x: 3/10 trials, 0.5 trials/s, ETA 14 s"),
        # no unit: no double spaces
        (2, 8, "", 4.0, "x: 2/8, 0.5/s, ETA 12 s"),
        # all done: the time it took instead of an ETA
        (8, 8, "tables", 16.0, "x: 8/8 tables, 0.5 tables/s, done in 16 s"),
        # nothing done yet: no rate to project from
        (0, 8, "tables", 7.0, "x: 0/8 tables, 0 tables/s, ETA unknown (7 s elapsed)"),
        # no total: elapsed and rate, no ETA invented; 50 / 20 s = 2.5/s
        (50, None, "rows", 20.0, "x: 50 rows, 2.5 rows/s, 20 s elapsed (total unknown, no ETA)"),
    ],
)
def test_rate_eta_line(
    done: int, total: int | None, unit: str, elapsed: float, expected: str
) -> None:
    assert rate_eta_line("x", done, total, unit, elapsed) == expected


def test_format_rate_keeps_three_figures() -> None:
    assert [format_rate(r) for r in (12345.6, 123.4, 12.34, 0.01234)] == [
        "12,346",
        "123",
        "12.3",
        "0.0123",
    ]
    assert format_rate(float("nan")) == "-"


def test_rate_eta_says_a_line_every_five_seconds_and_a_closing_one() -> None:
    clock, lines = FakeClock(), list[str]()
    meter = RateEta("replay", 20, "ev", say=lines.append, every=5.0, clock=clock)
    for i in range(1, 21):  # one event per second
        clock.t = 100.0 + i
        meter.update(1)
    meter.finish()
    # at 5 s: 5 done, 1/s, 15 left -> 15 s; at 10 s: 10 s; at 15 s: 5 s; at 20 s done (the
    # update that completes the work leaves the line to finish())
    assert lines == [
        "replay: 5/20 ev, 1.0 ev/s, ETA 15 s",
        "replay: 10/20 ev, 1.0 ev/s, ETA 10 s",
        "replay: 15/20 ev, 1.0 ev/s, ETA 5 s",
        "replay: 20/20 ev, 1.0 ev/s, done in 20 s",
    ]


def test_rate_eta_is_silent_for_a_short_step() -> None:
    clock, lines = FakeClock(), list[str]()
    meter = RateEta("quick", 3, say=lines.append, every=5.0, clock=clock)
    for i in range(1, 4):
        clock.t = 100.0 + i
        meter.update(1)
    meter.finish()  # 3 s < min_seconds (= every)
    assert lines == []
    meter.finish(always=True)
    assert lines == ["quick: 3/3, 1.0/s, done in 3 s"]


def test_rate_eta_uses_the_rate_since_the_start() -> None:
    clock, lines = FakeClock(0.0), list[str]()
    meter = RateEta("grid", 9, "fits", say=lines.append, every=5.0, min_seconds=0, clock=clock)
    clock.t = 2.0
    meter.update(1)  # 2 s < every: no line
    clock.t = 8.0
    meter.update(3)  # 4 fits in 8 s = 0.5/s; 5 left / 0.5 = 10 s
    assert lines == ["grid: 4/9 fits, 0.5 fits/s, ETA 10 s"]


def test_progress_lines_passes_items_through() -> None:
    clock, lines = FakeClock(0.0), list[str]()
    items = ["a", "b", "c", "d"]
    seen = []
    for item in progress_lines(items, "tables", unit="tables", say=lines.append, clock=clock):
        clock.t += 3.0  # each item takes 3 s
        seen.append(item)
    assert seen == items
    # after b (6 s): 2 done, 2/6 = 0.333/s, 2 left -> 6 s; after d (12 s): done
    assert lines == [
        "tables: 2/4 tables, 0.333 tables/s, ETA 6 s",
        "tables: 4/4 tables, 0.333 tables/s, done in 12 s",
    ]


def test_reporter_callback_closes_at_the_total() -> None:
    clock, lines = FakeClock(0.0), list[str]()
    report = reporter("bootstrap", lines.append, "resamples", min_seconds=3.0, clock=clock)
    for done in range(100, 1001, 100):  # 100 resamples per second
        clock.t = done / 100
        report(done, 1000)
    # at 5 s: 500 done, 100/s, 500 left -> 5 s; at 10 s the work is done
    assert lines == [
        "bootstrap: 500/1,000 resamples, 100 resamples/s, ETA 5 s",
        "bootstrap: 1,000/1,000 resamples, 100 resamples/s, done in 10 s",
    ]


def test_heartbeat_beat_with_a_fake_clock() -> None:
    clock = FakeClock(50.0)
    beat = Heartbeat("gold", print, detail=lambda: "Spark tasks 37/200", clock=clock)
    clock.t = 92.4
    assert beat.beat() == "gold: 42 s elapsed (total unknown, no ETA); Spark tasks 37/200"

    def broken() -> str:
        raise RuntimeError("gone")

    assert Heartbeat("views", print, detail=broken, clock=clock).beat() == (
        "views: 0 s elapsed (total unknown, no ETA); (RuntimeError reading progress)"
    )


def test_heartbeat_thread_beats_while_the_step_runs_and_stops_after() -> None:
    lines: list[str] = []
    with Heartbeat("silver", lines.append, every=0.05):
        time.sleep(0.3)
    n = len(lines)
    assert n >= 2 and all(line.startswith("silver: ") for line in lines)
    time.sleep(0.15)
    assert len(lines) == n  # nothing after the step ended


def test_format_count_whole_and_fractional() -> None:
    assert [format_count(c) for c in (12345, 12345.6, 2.861, 0.9537)] == [
        "12,345",
        "12,346",
        "2.86",
        "0.954",
    ]


def test_spark_tasks_counts_the_running_stages_tasks() -> None:
    def session(infos: dict[int, Any]) -> Any:
        tracker = SimpleNamespace(
            getActiveStageIds=lambda: list(infos), getStageInfo=lambda i: infos.get(i)
        )
        return SimpleNamespace(sparkContext=SimpleNamespace(statusTracker=lambda: tracker))

    stage = SimpleNamespace
    two = session(
        {
            3: stage(numTasks=200, numCompletedTasks=37),
            4: stage(numTasks=8, numCompletedTasks=8),
            5: None,  # finished between the two calls: Spark forgets it
        }
    )
    # 37 + 8 = 45 of 200 + 8 = 208
    assert spark_tasks(two) == "Spark tasks 45/208 of 2 running Spark stage(s)"
    assert spark_tasks(session({})) == "no Spark stage running"


def test_reporter_starts_over_when_the_work_starts_over() -> None:
    clock, lines = FakeClock(0.0), list[str]()
    report = reporter("runs", lines.append, min_seconds=0.0, every=0.0, clock=clock)
    clock.t = 4.0
    report(2, 2)  # 2 in 4 s: 0.5/s
    clock.t = 5.0
    report(1, 2)  # a second pass from 4 s (its meter's start): 1 in 1 s, 1 left -> 1 s
    assert lines == ["runs: 2/2, 0.5/s, done in 4 s", "runs: 1/2, 1.0/s, ETA 1 s"]

"""``attune speed watchdog``'s judgement on hand-made status reports (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attune.cli import build_parser
from attune.config import WatchdogConfig, load_config
from speed_layer.watchdog import judge, parse_time

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
WD = WatchdogConfig(max_lag_events=100_000, max_staleness=timedelta(minutes=10))


def query(name: str, lag: int | None = 0, progress_ago: timedelta | None = None, **kw: Any) -> Any:
    """A query entry as :func:`speed_layer.control.status_report` gives it."""
    progress = None
    if progress_ago is not None:
        stamp = (NOW - progress_ago).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # Spark's format
        progress = {"batch_id": 7, "timestamp": stamp}
    q = {"name": name, "active": True, "exception": None, "last_progress": progress, **kw}
    if lag is not None:
        q["total_lag"] = lag
    return q


def report(*queries: Any, running: bool = True, **kw: Any) -> dict[str, Any]:
    return {
        "running": running,
        "pid": 4242 if running else None,
        "state": "running" if running else "stopped",
        "started_at": (NOW - timedelta(hours=1)).isoformat(timespec="seconds"),
        "log": "var/log/speed.log",
        "kafka_error": None,
        "queries": list(queries),
        **kw,
    }


def test_parse_time() -> None:
    assert parse_time("2026-03-20T11:50:00.000Z") == NOW - timedelta(minutes=10)
    assert parse_time("2026-03-20T11:00:00+00:00") == NOW - timedelta(hours=1)
    assert parse_time("2026-03-20T11:00:00") == NOW - timedelta(hours=1)  # naive: UTC
    assert parse_time(None) is None and parse_time("yesterday") is None


def test_healthy_and_idle_is_healthy() -> None:
    # no event waits (lag 0): 20 minutes without progress is idleness, not a stuck query
    v = judge(report(query("bronze", 0, timedelta(minutes=20)), query("online", 0)), WD, NOW)
    assert v.healthy and v.action == "none" and v.problems == []
    assert v.notes == ["bronze: lag 0 events, last progress 20 min ago", "online: lag 0 events"]


def test_dead_is_restarted_or_failed_as_configured() -> None:
    dead = report(
        query("bronze", 0, active=False),
        query("online", 12, active=False, exception="StreamingQueryException: boom\n\tat x"),
        running=False,
    )
    v = judge(dead, WD, NOW)
    assert v.action == "restart"
    assert v.problems == [
        "the speed layer is not running (query online ended with: StreamingQueryException: boom)"
    ]
    off = judge(dead, WD.model_copy(update={"restart": False}), NOW)
    assert off.action == "fail" and "`attune speed start`" in off.fixes[0]


def test_a_query_behind_by_more_than_the_limit_fails() -> None:
    # 150,000 > 100,000 events behind, though it made progress 5 s ago
    v = judge(report(query("bronze", 0), query("online", 150_000, timedelta(seconds=5))), WD, NOW)
    assert v.action == "fail"
    assert v.problems == [
        "query online is 150,000 events behind the topic (> speed.watchdog.max_lag_events 100,000)"
    ]
    assert "raise speed.online_max_offsets" in v.fixes[0]


def test_events_waiting_without_progress_is_stuck() -> None:
    # 50 events wait and the last progress was 11 min ago (> 10 min)
    v = judge(report(query("bronze", 0), query("online", 50, timedelta(minutes=11))), WD, NOW)
    assert v.problems == [
        "query online has made no progress for 11 min while 50 events wait "
        "(> speed.watchdog.max_staleness 10 min)"
    ]
    assert v.fixes[0].startswith("online is stuck: read the log (var/log/speed.log)")
    # the same lag with progress 2 min ago: working on it
    ok = judge(report(query("bronze", 0), query("online", 50, timedelta(minutes=2))), WD, NOW)
    assert ok.healthy


def test_no_progress_since_the_start_counts_from_the_start() -> None:
    # started an hour ago, never reported progress, 5 events wait: stuck for 60 min
    v = judge(report(query("bronze", 0), query("online", 5)), WD, NOW)
    assert v.problems == [
        "query online has made no progress since it started for 60 min while 5 events wait "
        "(> speed.watchdog.max_staleness 10 min)"
    ]


def test_a_failed_query_in_a_live_process() -> None:
    failed = query("online", 3, active=False, exception="java.lang.OutOfMemoryError\n at ...")
    v = judge(report(query("bronze", 0), failed), WD, NOW)
    assert v.problems == ["query online is not active (it failed: java.lang.OutOfMemoryError)"]
    assert "`attune speed stop` and `attune speed start`" in v.fixes[0]
    missing = judge(report(query("bronze", 0)), WD, NOW)  # online never started
    assert missing.problems == ["query online is not active"]
    # a deployment that runs only bronze does not need online
    only_bronze = judge(
        report(query("bronze", 0)), WD.model_copy(update={"queries": ["bronze"]}), NOW
    )
    assert only_bronze.healthy


def test_kafka_down_means_the_lag_is_unknown() -> None:
    v = judge(
        report(query("bronze", None), query("online", None), kafka_error="NoBrokersAvailable"),
        WD,
        NOW,
    )
    assert v.problems == [
        "cannot measure the consumer lag: Kafka does not answer (NoBrokersAvailable)"
    ]
    assert "`attune stack status`" in v.fixes[0]


def test_starting_is_fine_for_a_while() -> None:
    young = report(state="starting", started_at=(NOW - timedelta(minutes=2)).isoformat())
    assert judge(young, WD, NOW).healthy
    old = report(state="starting", started_at=(NOW - timedelta(minutes=20)).isoformat())
    v = judge(old, WD, NOW)
    assert v.problems == [
        "the speed layer has been starting for 20 min (> speed.watchdog.max_staleness 10 min)"
    ]


def test_a_live_process_reporting_failure() -> None:
    v = judge(report(query("bronze", 0), query("online", 0), state="failed"), WD, NOW)
    assert v.problems == ["the speed layer process (pid 4242) reports 'failed'"]


def test_config_and_cli() -> None:
    cfg = load_config(None, environ={"ATTUNE__SPEED__WATCHDOG__MAX_STALENESS": "PT5M"})
    assert cfg.speed.watchdog.max_staleness == timedelta(minutes=5)
    assert cfg.speed.watchdog.queries == ["bronze", "online"]
    from attune.config import ConfigError

    with pytest.raises(ConfigError, match=r"speed.watchdog.max_staleness"):
        load_config(None, environ={"ATTUNE__SPEED__WATCHDOG__MAX_STALENESS": "0"})
    with pytest.raises(ConfigError, match=r"speed.watchdog.queries"):
        load_config(None, environ={"ATTUNE__SPEED__WATCHDOG__QUERIES": "[silver]"})
    assert build_parser().parse_args(["speed", "watchdog", "--json"]).json is True

"""The dashboard's loaders and shapers (dashboards/data.py), without Streamlit.

Expected values are the fixture's numbers formatted by hand (comments show the arithmetic).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from dashboards import data
from tests.unit.dashboards import world


@pytest.fixture
def report() -> dict:
    return world.fixture_report()


def exp(report: dict, exp_id: str) -> dict:
    found = data.find_experiment(report, exp_id)
    assert found is not None
    return found


# Reports ----------------------------------------------------------------------------------


def test_a_missing_report_says_which_command_writes_it(tmp_path: Path) -> None:
    missing = data.load_report(tmp_path / "reports")
    assert isinstance(missing, data.Missing)
    assert "no experiment report in" in missing.what
    assert "no data yet" in missing.hint and "`attune experiments report`" in missing.hint


def test_latest_then_the_newest_dated_file(tmp_path: Path, report: dict) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    older = dict(report, report_date="2026-12-04")
    (folder / "2026-12-04.json").write_text(json.dumps(older))
    (folder / "2026-12-05.json").write_text(json.dumps(report))
    (folder / "notes.json").write_text("{}")  # not a dated report
    # no latest.json: the newest dated file
    loaded = data.load_report(folder)
    assert isinstance(loaded, dict) and loaded["report_date"] == "2026-12-05"
    assert data.report_dates(folder) == ["2026-12-05", "2026-12-04"]
    (folder / "latest.json").write_text(json.dumps(older))
    latest = data.load_report(folder)
    assert isinstance(latest, dict) and latest["report_date"] == "2026-12-04"
    dated = data.load_report(folder, "2026-12-05")
    assert isinstance(dated, dict) and dated["report_date"] == "2026-12-05"


@pytest.mark.parametrize("text", ["{not json", "[]", '{"experiments": 3}'])
def test_a_broken_report_is_missing_with_a_fix(tmp_path: Path, text: str) -> None:
    (tmp_path / "latest.json").write_text(text)
    missing = data.load_report(tmp_path)
    assert isinstance(missing, data.Missing)
    assert "re-run `attune experiments report`" in missing.hint


def test_summary_of_the_ab_experiment(report: dict) -> None:
    s = data.summarise(exp(report, "ranking_v1"))
    assert (s.verdict, s.status, s.days, s.type) == ("ship", "running", 5, "ab")
    assert s.users == 12_050  # 6000 + 6050
    assert s.primary_metric == "ctr"
    # rel_lift 0.0617 -> +6.2%; rel_ci [0.0198, 0.1037] -> [+2.0%, +10.4%]
    assert s.lift == "+6.2% [+2.0%, +10.4%]"
    assert (s.headline, s.headline_label) == ("+6.2%", "Lift (ctr)")
    assert s.significant and not s.srm_flagged and s.guardrails_breached == 0


def test_summary_of_the_interleaving_experiment(report: dict) -> None:
    s = data.summarise(exp(report, "rankers_il"))
    assert s.users == 900  # the interleaving's users, not the two variants summed
    assert s.lift == "model_v2 preferred 53.5% [49.6%, 57.4%]"
    assert (s.headline, s.headline_label) == ("53.5%", "Preference for model_v2")
    assert not s.significant  # p 0.0764


def test_summary_flags_srm_and_breached_guardrails(report: dict) -> None:
    s = data.summarise(world.stopped_experiment(report))
    assert s.srm_flagged and s.guardrails_breached == 1 and s.verdict == "stop"


def test_verdict_badges() -> None:
    assert data.verdict_badge("ship") == ("ship", "green")
    assert data.verdict_badge("stop") == ("stop", "red")
    assert data.verdict_badge("no_difference") == ("no difference", "gray")
    assert data.verdict_badge("running") == ("keep running", "blue")
    assert data.verdict_badge(None) == ("keep running", "blue")


def test_metric_rows_primary_first_and_formatted(report: dict) -> None:
    rows = data.metric_rows(exp(report, "ranking_v1"))
    assert [r["metric"] for r in rows] == ["ctr", "click_rate", "dwell_s", "purchase_rate"]
    ctr = rows[0]
    assert ctr == {
        "metric": "ctr",
        "role": "primary",
        "variant": "treatment",
        "control": "8.10%",
        "value": "8.60%",
        "rel. lift": "+6.2%",
        "rel. 95% CI": "[+2.0%, +10.4%]",
        "abs. lift": "+0.50 pp",  # 0.005
        "abs. 95% CI": "[+0.16 pp, +0.84 pp]",
        "chance to win": "99.8%",
        "p": "0.004",
        "p (adjusted)": "0.012",
        "always-valid p": "0.021",
        "always-valid 95% CI": "[+0.5%, +11.9%]",  # rel_cs [0.005, 0.119]
        "always-valid CI (abs.)": "[+0.04 pp, +0.96 pp]",  # cs [0.0004, 0.0096]
        "CUPED": "yes",
        "significant": True,
        "good": True,
    }
    dwell = rows[2]
    assert (dwell["control"], dwell["abs. lift"]) == ("41.2 s", "+0.80 s")


def test_a_lift_is_good_in_the_metrics_direction() -> None:
    rows = data.metric_rows(
        {
            "metrics": [
                {"metric": "dismiss_rate", "role": "secondary", "rel_lift": -0.1},
                {"metric": "ctr", "role": "primary", "rel_lift": -0.1, "higher_is_better": True},
            ]
        }
    )
    assert [(r["metric"], r["good"]) for r in rows] == [("ctr", False), ("dismiss_rate", True)]


def test_history_rows_of_one_metric_in_date_order(report: dict) -> None:
    e = exp(report, "ranking_v1")
    assert data.history_metrics(e) == ["ctr", "click_rate"]
    rows = data.history_rows(e, "ctr")
    assert [r["date"] for r in rows] == [f"2026-12-0{d}" for d in range(1, 6)]
    assert rows[0] == {
        "date": "2026-12-01",
        "variant": "treatment",
        "estimate": 0.09,
        "low": -0.35,
        "high": 0.53,
        "users": 2400,
    }
    assert (rows[-1]["low"], rows[-1]["high"]) == (0.005, 0.119)


def _row(estimate: float | None, low: float | None, high: float | None) -> dict:
    return {"date": "2026-12-06", "variant": "b", "estimate": estimate, "low": low, "high": high}


def test_history_domain_cuts_an_interval_of_a_tiny_sample() -> None:
    # The demo's first day: +97.8% with an always-valid interval -99.4%..+61,352%. Reach is
    # 3 x 0.978 = 2.934 (more than the 1.0 minimum): the range is -0.994..+2.934, the top cut.
    (low, high), cut = data.history_domain([_row(0.978, -0.994, 613.52)], 0.0)
    assert (low, high, cut) == (-0.994, pytest.approx(2.934), True)


def test_history_domain_shows_narrow_intervals_whole() -> None:
    # every interval inside the 100-point minimum reach: the range is just their extent
    rows = [_row(0.05, -0.1, 0.2), _row(0.08, 0.01, 0.15)]
    assert data.history_domain(rows, 0.0) == ((-0.1, 0.2), False)


def test_history_domain_of_a_preference_stays_a_share() -> None:
    # 0.6 with 0.2..1.3 around 0.5: reach 1.0, so 0.2..1.5, capped at a share's 1.0: cut
    assert data.history_domain([_row(0.6, 0.2, 1.3)], 0.5, share=True) == ((0.2, 1.0), True)


def test_history_domain_without_numbers_is_a_range_around_the_baseline() -> None:
    assert data.history_domain([_row(None, None, None)], 0.0) == ((-0.1, 0.1), False)


def test_history_of_an_interleaving_preference(report: dict) -> None:
    e = exp(report, "rankers_il")
    assert data.history_metrics(e) == ["preference"]
    rows = data.history_rows(e, "preference")
    # the preference ("value") and its interval ("ci") as the spark report writes them
    assert [(r["date"], r["estimate"], r["low"], r["high"]) for r in rows] == [
        ("2026-12-03", 0.52, 0.45, 0.59),
        ("2026-12-04", 0.531, 0.482, 0.58),
        ("2026-12-05", 0.5349, 0.4963, 0.5735),
    ]


def test_guardrails_segments_variants(report: dict) -> None:
    e = exp(report, "ranking_v1")
    g = data.guardrail_rows(e)
    # latency 48 -> 51 ms: +6.25% shown +6.2%; allowed 0.1 -> 10.0%
    assert g[1] == {
        "guardrail": "api_latency_p99_ms",
        "variant": "treatment",
        "control": "48.0 ms",
        "value": "51.0 ms",
        "change": "+6.2%",
        "allowed increase": "10.0%",
        "measured": "nightly report",
        "breached": False,
    }
    seg = data.segment_rows(e)
    assert seg[0]["segment"] == "active" and seg[0]["rel. 95% CI"] == "[+1.2%, +12.9%]"
    assert [v["users"] for v in data.variant_rows(e)] == ["6,000", "6,050"]


def test_srm_and_guardrail_messages(report: dict) -> None:
    assert data.srm_message(exp(report, "ranking_v1")) is None
    assert data.srm_message(exp(report, "rankers_il")) is None  # srm null: not tested
    stopped = world.stopped_experiment(report)
    message = data.srm_message(stopped)
    assert message is not None
    assert "6,000 control vs 5,200 treatment users where the split plans 50.0% / 50.0%" in message
    assert "p = 4.2e-14" in message
    assert data.breached_guardrails(stopped) == ["dismiss_rate (treatment: +9.0%, allowed +5%)"]


def test_today_prefers_live_counts(report: dict) -> None:
    today = exp(report, "ranking_v1")["today"]
    as_of, rows = data.today_rows(today)
    assert as_of == "2026-12-06T09:30:00Z"
    # control 97 / 1200 = 8.08% -> 8.1%
    assert rows[0] == {
        "variant": "control",
        "users": "410",
        "impressions": "1,200",
        "clicks": "97",
        "purchases": "–",
        "click rate": "8.1%",
    }
    live = {"control": {"impressions": 10, "clicks": 1, "purchases": 0, "users": 4}}
    as_of, rows = data.today_rows(today, live)
    assert as_of is not None and "live counts in Redis" in as_of
    assert rows[0]["click rate"] == "10.0%"
    assert data.today_rows(None, None) == (None, [])


def test_interleaving_rows(report: dict) -> None:
    il = exp(report, "rankers_il")["interleaving"]
    # 300 / 645 = 46.5%, 345 / 645 = 53.5%
    assert data.interleaving_rows(il) == [
        {"ranker": "model_v1", "wins": "300", "share of decided": "46.5%"},
        {"ranker": "model_v2", "wins": "345", "share of decided": "53.5%"},
        {"ranker": "tie", "wins": "2,055", "share of decided": ""},
    ]
    # the spark report adds impressions without a click, and names the preferred ranker
    rows = data.interleaving_rows(dict(il, undecided=1800))
    assert rows[-1] == {"ranker": "no click", "wins": "1,800", "share of decided": ""}
    assert data.preference_of(dict(il, preference_of="model_v1")) == "model_v1"


@pytest.mark.parametrize(
    ("fn", "args", "expected"),
    [
        (data.fmt_value, ("ctr", 0.0812), "8.12%"),
        (data.fmt_value, ("revenue", 12.5), "12.5"),
        (data.fmt_value, ("ctr", None), "–"),
        (data.fmt_value, ("ctr", float("nan")), "–"),
        (data.fmt_abs, ("dwell_s", -1.25), "-1.25 s"),
        (data.fmt_pct, (-0.0149,), "-1.5%"),
        (data.fmt_p, (0.0004,), "<0.001"),
        (data.fmt_p, (0.05,), "0.050"),
        (data.fmt_interval, ([0.1], data.fmt_pct), "–"),
        (data.fmt_duration, (0.0123,), "12 ms"),
        (data.fmt_duration, (5400,), "90 min"),
        (data.fmt_duration, (3 * 86400,), "3 days"),
    ],
)
def test_formats(fn: object, args: tuple, expected: str) -> None:
    assert fn(*args) == expected  # type: ignore[operator]


# Models -----------------------------------------------------------------------------------


def test_model_versions_and_promotions(tmp_path: Path) -> None:
    assert isinstance(data.model_versions(tmp_path / "nothing"), data.Missing)
    (tmp_path / "empty").mkdir()
    assert "no published version" in str(data.model_versions(tmp_path / "empty"))
    world.write_model_repository(tmp_path / "models")
    versions = data.model_versions(tmp_path / "models")
    assert isinstance(versions, list)
    assert [(v.model, v.version, v.served) for v in versions] == [
        ("ranking", 2, True),
        ("ranking", 1, False),
        ("retrieval", 1, True),
    ]
    rows = data.model_version_rows(versions)
    assert rows[0]["ndcg"] == "0.1262" and rows[0]["created"] == "2026-12-05"
    assert rows[0]["baseline"] == "recent-popularity 0.1181"  # 0.11809 of the two
    # beyond accuracy: personalization to 4 places, novelty (bits) to 2
    assert (rows[0]["personalization"], rows[0]["novelty"]) == ("0.2208", "5.36")
    decisions = data.promotion_rows(tmp_path / "models")
    assert [(d["model"], d["promoted"]) for d in decisions] == [
        ("retrieval", "refused"),
        ("ranking", "promoted"),
    ]
    assert decisions[1]["served before"] == "v1 0.1208"
    assert decisions[0]["version"] == "–"  # a refused candidate is never published


def test_served_versions_when_the_server_is_down() -> None:
    out = data.served_versions("http://127.0.0.1:1", ["ranking"], 0.5)
    assert out["error"] and out["models"] == {}


# Live -------------------------------------------------------------------------------------

COLLECTOR_BEFORE = """\
# TYPE attune_collector_events counter
attune_collector_events_total{type="click",source="web",outcome="accepted"} 100.0
attune_collector_events_total{type="item_view",source="web",outcome="accepted"} 400.0
attune_collector_events_total{type="click",source="web",outcome="rejected"} 3.0
"""
COLLECTOR_AFTER = """\
# TYPE attune_collector_events counter
attune_collector_events_total{type="click",source="web",outcome="accepted"} 130.0
attune_collector_events_total{type="item_view",source="web",outcome="accepted"} 470.0
attune_collector_events_total{type="click",source="web",outcome="rejected"} 3.0
"""


def test_collector_rate_over_the_window() -> None:
    scrape = data.Scrape(
        "u", data.parse_metrics(COLLECTOR_BEFORE), data.parse_metrics(COLLECTOR_AFTER), 2.0
    )
    rates = data.collector_rates(scrape)
    # accepted: 500 -> 600 in 2 s = 50/s
    assert rates == {"events_per_s": 50.0, "accepted_total": 600.0, "rejected_total": 3.0}
    down = data.Scrape("u", None, None, 1.0, "refused")
    assert data.collector_rates(down)["events_per_s"] is None


def _api(buckets: dict[str, float]) -> str:
    lines = ["# TYPE attune_api_request_seconds histogram"]
    for le, n in buckets.items():
        lines.append(f'attune_api_request_seconds_bucket{{endpoint="recs",le="{le}"}} {n}')
    lines.append(f'attune_api_request_seconds_count{{endpoint="recs"}} {buckets["+Inf"]}')
    lines.append('attune_api_request_seconds_sum{endpoint="recs"} 0.1')
    return "\n".join(lines) + "\n"


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    cumulative = [(0.005, 1.0), (0.01, 3.0), (0.025, 4.0), (float("inf"), 4.0)]
    # p99: rank 3.96 in (0.01, 0.025] holding ranks 3..4: 0.01 + 0.015 * 0.96 = 0.0244
    assert data.histogram_quantile(0.99, cumulative) == pytest.approx(0.0244)
    # p50: rank 2 in (0.005, 0.01] holding ranks 1..3: 0.005 + 0.005 * 1/2 = 0.0075
    assert data.histogram_quantile(0.5, cumulative) == pytest.approx(0.0075)
    # everything in +Inf: its lower bound
    assert data.histogram_quantile(0.99, [(0.5, 0.0), (float("inf"), 2.0)]) == 0.5
    assert data.histogram_quantile(0.99, [(0.5, 0.0), (float("inf"), 0.0)]) is None


def test_api_p99_over_the_window_else_since_start() -> None:
    before = _api({"0.005": 10, "0.01": 10, "0.025": 10, "+Inf": 10})
    after = _api({"0.005": 10, "0.01": 13, "0.025": 14, "+Inf": 14})
    scrape = data.Scrape("u", data.parse_metrics(before), data.parse_metrics(after), 1.0)
    latency = data.api_latency(scrape)
    # the window's 4 requests: 3 in (0.005, 0.01], 1 in (0.01, 0.025]
    # p99: rank 3.96 -> 0.01 + 0.015 * 0.96 = 0.0244
    assert latency["p"] == pytest.approx(0.0244)
    assert latency["window"] == "last 1 s" and latency["requests_per_s"] == 4.0
    idle = data.Scrape("u", data.parse_metrics(after), data.parse_metrics(after), 1.0)
    since = data.api_latency(idle)
    # no request in the window: all 14 since the start, p99 rank 13.86 in (0.01, 0.025]
    # holding ranks 13..14: 0.01 + 0.015 * 0.86 = 0.0229
    assert since["window"] == "since the API started"
    assert since["p"] == pytest.approx(0.0229)


def test_live_counts_in_every_shape_and_the_click_rate() -> None:
    nested = {"exp": {"a": {"impressions": 100, "clicks": 5}, "b": {"impressions": 100}}}
    flat = {"exp|a": {"impressions": 100, "clicks": 5}, "exp|b": {"impressions": 100}}
    tupled = {("exp", "a"): {"impressions": 100, "clicks": 5}, ("exp", "b"): {"impressions": 100}}
    for raw in (nested, flat, tupled):
        live = data.normalise_live_counts(raw)
        assert live == {"exp": {"a": {"impressions": 100, "clicks": 5}, "b": {"impressions": 100}}}
        # 5 clicks of 200 impressions
        assert data.click_rate_today(live) == 0.025
    assert data.normalise_live_counts(None) == {}
    assert data.click_rate_today({}) is None


def test_speed_layer_freshness_and_event_age() -> None:
    board = {
        "state": "running",
        "trigger": "microbatch",
        "queries": {
            "online": {
                "progress": {"durationMs": {"triggerExecution": 750}, "timestamp": "t"},
                "writer": {"last_redis_ms": 3.4},
            }
        },
    }
    fresh = data.speed_layer_freshness(board)
    assert (fresh["batch_s"], fresh["redis_ms"], fresh["trigger"]) == (0.75, 3.4, "microbatch")
    assert data.speed_layer_freshness(None)["batch_s"] is None
    now = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
    # 90 s before now, in epoch milliseconds
    ms = (now.timestamp() - 90) * 1000
    assert data.age_s(ms, now) == pytest.approx(90)
    assert data.ms_to_iso(ms) == "2026-12-06T11:58:30+00:00"
    assert data.age_s(None, now) is None


def test_benchmarked_freshness(tmp_path: Path) -> None:
    path = tmp_path / "freshness.json"
    assert data.benchmarked_freshness(path, "microbatch") is None
    path.write_text(json.dumps({"when": "2026-12-01", "modes": {"microbatch": {"p95_s": 0.8}}}))
    assert data.benchmarked_freshness(path, "microbatch") == {"p95_s": 0.8, "when": "2026-12-01"}
    assert data.benchmarked_freshness(path, "realtime") is None


def test_short_errors() -> None:
    assert data.short_error("ConnectionRefusedError: [Errno 111] Connection refused") == (
        "connection refused"
    )
    assert data.short_error("TimeoutError: timed out") == "timed out"
    assert data.short_error(None) == ""


# Data quality -----------------------------------------------------------------------------


def test_quality_rows_failed_first_and_history() -> None:
    rows = world.quality_rows(date(2026, 12, 4), failed=False) + world.quality_rows(
        date(2026, 12, 5), failed=True
    )
    assert data.quality_dates(rows, "run_date") == [date(2026, 12, 5), date(2026, 12, 4)]
    shown = data.quality_rows(rows, date(2026, 12, 5))
    assert (shown[0]["check"], shown[0]["passed"]) == ("volume", False)
    assert shown[0]["table"] == "bronze/events" and shown[0]["value"] == "0.12"
    assert data.quality_history(rows) == [
        {"run_date": "2026-12-04", "passed": 5, "failed": 0},
        {"run_date": "2026-12-05", "passed": 4, "failed": 1},
    ]


def test_drift_rows_split_statuses_and_features() -> None:
    statuses, features = data.drift_rows(world.drift_rows(date(2026, 12, 5)), date(2026, 12, 5))
    assert [s["status"] for s in statuses] == ["comparable", "behind", "newer", "missing"]
    recent = features[0]
    assert recent["feature"] == "recent_items"
    assert (recent["users compared"], recent["equal"]) == (492, 480)
    assert recent["share equal"] == pytest.approx(480 / 492)
    assert features[2]["mean diff"] == "1.00e-16"


# Live guardrails -----------------------------------------------------------------------------

# e1: off (control) and on, 100 and 200 requests; e2 reuses the variant name "off" with slow,
# failing requests that must not leak into e1's numbers.
VARIANTS = world.variant_metrics(
    {
        ("e1", "off"): ({"0.005": 40, "0.01": 90, "0.025": 98, "0.05": 100, "0.1": 100}, 97, 1, 2),
        ("e1", "on"): (
            {"0.005": 10, "0.01": 150, "0.025": 190, "0.05": 196, "0.1": 200},
            192,
            6,
            2,
        ),
        ("e2", "off"): ({"0.005": 0, "0.01": 0, "0.025": 0, "0.05": 0, "0.1": 0}, 0, 0, 50),
    }
)
SCRAPED = datetime(2026, 12, 6, 10, 31, 2, tzinfo=UTC)


def _e1(threshold: float = 0.1) -> dict:
    live = {"control": None, "value": None, "rel_change": None, "breached": None}
    return {
        "id": "e1",
        "verdict": "ship",
        "variants": [{"name": "off", "is_control": True}, {"name": "on", "is_control": False}],
        "guardrails": [
            {"metric": "dismiss_rate", "variant": "on", "control": 0.01, "value": 0.0101,
             "rel_change": 0.01, "threshold": 0.05, "breached": False, "measured": "batch"},
            {"metric": "api_latency_p99_ms", "variant": "on", "threshold": threshold,
             "measured": "live", **live},
            {"metric": "error_rate", "variant": "on", "threshold": threshold,
             "measured": "live", **live},
        ],
    }  # fmt: skip


def _scrape(text: str = VARIANTS) -> data.Scrape:
    samples = data.parse_metrics(text)
    return data.Scrape("http://api/metrics", samples, samples, 1.0, taken_at=SCRAPED)


def test_histogram_quantile_by_hand_on_the_api_buckets() -> None:
    # off: 100 requests, cumulative 40, 90, 98, 100 at 5, 10, 25, 50 ms. p99: rank 0.99 * 100
    # = 99 lies in (0.025, 0.05], which holds ranks 98..100 (2 requests):
    # 0.025 + (0.05 - 0.025) * (99 - 98) / 2 = 0.025 + 0.0125 = 0.0375 s
    off = data.buckets(data.parse_metrics(VARIANTS), data.VARIANT_SECONDS, experiment="e1",
                       variant="off")  # fmt: skip
    assert data.histogram_quantile(0.99, off) == pytest.approx(0.0375)
    # p50: rank 50 in (0.005, 0.01] holding ranks 40..90: 0.005 + 0.005 * 10 / 50 = 0.006 s
    assert data.histogram_quantile(0.5, off) == pytest.approx(0.006)


def _bucket_of(x: float, bounds: list[float]) -> int:
    return next(i for i, b in enumerate(bounds) if x <= b)


DRAWS = {
    # request times around 8 ms with a long tail: numpy's p99 is 31.8 ms, in (25, 50] ms; the
    # histogram spreads that bucket's 526 requests evenly and puts rank 19,800 (the 346th of
    # them) at 25 + 25 * 346 / 526 = 41.4 ms: the right bucket, not the right value
    "lognormal": lambda rng: rng.lognormal(np.log(0.008), 0.6, 20_000),
    # uniform over 0..100 ms: the p99 (99 ms) lands in (50, 100] ms
    "uniform": lambda rng: rng.uniform(0.0, 0.1, 20_000),
}


@pytest.mark.parametrize("name", DRAWS)
def test_histogram_quantile_lands_in_the_bucket_of_the_raw_samples_percentile(name: str) -> None:
    """The histogram's p99 against numpy's percentile of the raw request times the histogram
    counted: the estimate can only be placed inside the bucket, so it must fall in the same
    bucket as the exact value, and close to it when the times spread evenly in that bucket."""
    from attune.api.metrics import LATENCY_BUCKETS

    samples = DRAWS[name](np.random.default_rng(7))
    bounds = [*LATENCY_BUCKETS, math.inf]
    # what the API's histogram would export for these samples: counts at or below each bound
    cumulative = [(b, float(np.count_nonzero(samples <= b))) for b in bounds]
    exact = float(np.percentile(samples, 99))
    estimate = data.histogram_quantile(0.99, cumulative)
    assert estimate is not None
    assert _bucket_of(estimate, bounds) == _bucket_of(exact, bounds), (name, estimate, exact)
    if name == "uniform":
        # uniform inside the bucket is the interpolation's assumption: within 0.5 ms of 99 ms
        assert estimate == pytest.approx(exact, abs=5e-4)
        assert exact == pytest.approx(0.099, abs=5e-4)


def test_variant_guardrail_values_per_variant_since_the_api_started() -> None:
    values = data.variant_guardrail_values(data.parse_metrics(VARIANTS), "e1", ["off", "on"])
    # off p99: 37.5 ms (above); on: rank 198 in (0.05, 0.1] holding ranks 196..200:
    # 0.05 + 0.05 * (198 - 196) / 4 = 0.075 s
    assert values["api_latency_p99_ms"] == pytest.approx({"off": 37.5, "on": 75.0})
    # errors / (ok + degraded + error): off 2 / 100, on 2 / 200; e2's 50 errors are not e1's
    assert values["error_rate"] == pytest.approx({"off": 0.02, "on": 0.01})
    none = data.variant_guardrail_values(data.parse_metrics(VARIANTS), "e1", ["gone"])
    assert none == {"api_latency_p99_ms": {"gone": None}, "error_rate": {"gone": None}}


def test_relative_change_like_the_verdicts_operational_guardrails() -> None:
    assert data.relative_change(37.5, 75.0) == pytest.approx(1.0)
    assert data.relative_change(0.02, 0.01) == pytest.approx(-0.5)
    assert data.relative_change(0.0, 0.01) == math.inf  # errors where the control has none
    assert data.relative_change(0.0, 0.0) == 0.0
    assert data.relative_change(None, 0.01) is None
    assert data.relative_change(0.02, None) is None


def test_live_guardrails_filled_compared_and_breached() -> None:
    live = data.live_guardrails(_e1(), _scrape())
    assert live.up and live.measured
    assert live.scraped_at == "scraped 2026-12-06 10:31:02 UTC"
    assert live.requests == {"off": 100.0, "on": 200.0}
    rows = data.guardrail_rows(_e1(), live)
    assert rows[0]["measured"] == "nightly report" and rows[0]["change"] == "+1.0%"
    since = "live, since the API started (scraped 2026-12-06 10:31:02 UTC)"
    # latency 37.5 -> 75.0 ms: +100.0% against an allowed 10%: breached
    assert rows[1] == {
        "guardrail": "api_latency_p99_ms",
        "variant": "on",
        "control": "37.5 ms",
        "value": "75.0 ms",
        "change": "+100.0%",
        "allowed increase": "10.0%",
        "measured": since,
        "breached": True,
    }
    # error rate 2.00% -> 1.00%: -50.0%, not breached
    assert (rows[2]["control"], rows[2]["value"], rows[2]["change"]) == ("2.00%", "1.00%", "-50.0%")
    assert rows[2]["measured"] == since and rows[2]["breached"] is False
    # the report's own guardrails are left as they were
    assert data.breached_guardrails(_e1()) == []
    message = data.live_breach_message(live, "ship")
    assert message is not None
    assert message.startswith(
        "Live guardrail breached: api_latency_p99_ms (on: +100.0%, allowed +10%)"
    )
    assert "The verdict in the report (ship) does not include it" in message
    # allowed +150%: nothing breached, no message
    relaxed = data.live_guardrails(_e1(threshold=1.5), _scrape())
    assert not relaxed.breached and data.live_breach_message(relaxed, "ship") is None


def test_live_guardrails_when_the_api_is_not_running_or_idle() -> None:
    for scrape in (None, data.Scrape("http://api/metrics", None, None, 1.0, "refused")):
        live = data.live_guardrails(_e1(), scrape)
        assert live.measured and not live.up and not live.breached
        rows = data.guardrail_rows(_e1(), live)
        assert [r["measured"] for r in rows] == ["nightly report", data.LIVE_DOWN, data.LIVE_DOWN]
        assert [r["value"] for r in rows[1:]] == ["–", "–"]
    # the API runs but has not served this experiment's "on" arm yet
    idle = world.variant_metrics({("e1", "off"): ({"0.005": 5}, 5, 0, 0)})
    rows = data.guardrail_rows(_e1(), data.live_guardrails(_e1(), _scrape(idle)))
    assert rows[1]["control"] == "5.0 ms" and rows[1]["value"] == "–"
    assert rows[1]["measured"].startswith("live: no request for on since the API started")
    # no error in the control, one in the variant: an unbounded increase, breached
    errors = world.variant_metrics(
        {("e1", "off"): ({"0.005": 5}, 5, 0, 0), ("e1", "on"): ({"0.005": 5}, 4, 0, 1)}
    )
    live = data.live_guardrails(_e1(), _scrape(errors))
    rows = data.guardrail_rows(_e1(), live)
    assert (rows[2]["change"], rows[2]["breached"]) == ("+∞", True)
    assert "error_rate (on: +∞, allowed +10%)" in (data.live_breach_message(live, "ship") or "")
    # an experiment without operational guardrails needs no scrape
    assert not data.live_guardrails({"guardrails": _e1()["guardrails"][:1]}, None).measured

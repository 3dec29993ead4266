"""The Bandits page: its shapers in dashboards/data.py, and the page run with Streamlit's AppTest
over a stand-in Redis client that answers the page's one pipeline with hand-written hashes.

Expected values are worked by hand (comments show the arithmetic) or by scipy, never by the
code under test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from scipy import integrate
from scipy.stats import beta as beta_dist
from streamlit.testing.v1 import AppTest

from attune.bandits.policies import ArmCounts
from dashboards import data
from tests.unit.dashboards import world
from tests.unit.dashboards.test_dashboard_app import APP, texts

H = 3_600_000
T0 = int(datetime(2026, 12, 5, tzinfo=UTC).timestamp() * 1000)  # an hour start


# Estimates -------------------------------------------------------------------------------------


def test_estimates_by_hand_uniform_prior() -> None:
    counts = {"b": ArmCounts(0, 0), "a": ArmCounts(1, 1)}
    a, b = data.bandit_arm_estimates(counts, 1.0, 1.0)  # arms by name
    # a: Beta(1 + 1, 1 + 0) = Beta(2, 1): mean 2/3, CDF x^2 so the quantiles are sqrt(q)
    assert (a.arm, a.impressions, a.clicks) == ("a", 1, 1)
    assert a.rate == pytest.approx(2 / 3)
    assert a.low == pytest.approx(0.025**0.5) and a.high == pytest.approx(0.975**0.5)
    # b: Beta(1, 1), uniform: mean 1/2, quantiles 0.025 and 0.975
    assert b.rate == pytest.approx(0.5)
    assert (b.low, b.high) == (pytest.approx(0.025), pytest.approx(0.975))
    # P(X > Y) for X ~ Beta(2, 1), Y ~ U(0, 1): integral of 2x * x dx = 2/3
    assert a.p_best == pytest.approx(2 / 3, abs=1e-6)
    assert b.p_best == pytest.approx(1 / 3, abs=1e-6)


def test_estimates_under_an_informative_prior_match_scipy() -> None:
    counts = {"x": ArmCounts(950, 50), "y": ArmCounts(400, 30), "z": ArmCounts(0, 0)}
    est = {e.arm: e for e in data.bandit_arm_estimates(counts, 1.0, 49.0)}
    # x: Beta(1 + 50, 49 + 900) = Beta(51, 949): mean 51 / 1000
    assert est["x"].rate == pytest.approx(0.051)
    # y: Beta(31, 419): mean 31 / 450; z: the prior Beta(1, 49): mean 1 / 50
    assert est["y"].rate == pytest.approx(31 / 450)
    assert est["z"].rate == pytest.approx(0.02)
    for arm, (a, b) in {"x": (51, 949), "y": (31, 419), "z": (1, 49)}.items():
        assert est[arm].low == pytest.approx(beta_dist.ppf(0.025, a, b), rel=1e-9)
        assert est[arm].high == pytest.approx(beta_dist.ppf(0.975, a, b), rel=1e-9)
        assert est[arm].low < est[arm].rate < est[arm].high

    # P(best) by scipy's quad: integral of f_k(t) * prod_{j != k} F_j(t) dt
    params = {"x": (51, 949), "y": (31, 419), "z": (1, 49)}

    def p_best(k: str) -> float:
        others = [params[j] for j in params if j != k]

        def f(t: float) -> float:
            out = float(beta_dist.pdf(t, *params[k]))
            for a, b in others:
                out *= float(beta_dist.cdf(t, a, b))
            return out

        value, _ = integrate.quad(f, 0.0, 1.0, points=[0.02, 0.05, 0.07], limit=200)
        return float(value)

    for arm in params:
        assert est[arm].p_best == pytest.approx(p_best(arm), abs=1e-4)
    assert sum(e.p_best for e in est.values()) == pytest.approx(1.0)
    # y (6.9%, 400 impressions) against x (5.1%, 950) and the prior's 2%: y leads
    assert max(est.values(), key=lambda e: e.p_best).arm == "y"


def test_a_click_counted_before_its_impression_floors_the_failures() -> None:
    # n = 0, c = 1: Beta(1 + 1, 1 + max(0 - 1, 0)) = Beta(2, 1), mean 2/3 (not (1+1)/(2+0) = 1)
    (e,) = data.bandit_arm_estimates({"a": ArmCounts(0, 1)}, 1.0, 1.0)
    assert e.rate == pytest.approx(2 / 3)
    assert e.p_best == 1.0  # a single arm is the best


def test_no_arms_no_estimates_and_a_bad_level_says_how() -> None:
    assert data.bandit_arm_estimates({}, 1.0, 1.0) == []
    with pytest.raises(ValueError, match="between 0 and 1"):
        data.bandit_arm_estimates({"a": ArmCounts(1, 0)}, 1.0, 1.0, level=95)


def test_arm_rows_are_formatted_and_mark_the_leader() -> None:
    counts = {"x": ArmCounts(950, 50), "y": ArmCounts(1200, 30)}
    rows = data.bandit_arm_rows(data.bandit_arm_estimates(counts, 1.0, 49.0))
    # x: 51 / 1000 = 5.10%; y: Beta(31, 1219): 31 / 1250 = 2.48%
    assert [r["arm"] for r in rows] == ["x", "y"]
    assert [r["impressions"] for r in rows] == ["950", "1,200"]
    assert [r["click rate"] for r in rows] == ["5.10%", "2.48%"]
    lo, hi = beta_dist.ppf([0.025, 0.975], 51, 949)
    assert rows[0]["95% credible interval"] == f"[{100 * lo:.2f}%, {100 * hi:.2f}%]"
    assert [r["leading"] for r in rows] == [True, False]
    assert rows[0]["P(best)"] == "100.0%"  # 5.1% vs 2.5% after ~1,000 impressions each


def test_totals() -> None:
    counts = {"x": ArmCounts(300, 12), "y": ArmCounts(100, 8)}
    assert data.bandit_totals(counts) == {"impressions": 400, "clicks": 20, "rate": 0.05}
    assert data.bandit_totals({"x": ArmCounts(0, 1)}) == {
        "impressions": 0,
        "clicks": 1,
        "rate": None,
    }


# Allocation over time ------------------------------------------------------------------------


def test_allocation_shares_per_hour_with_a_gap_and_a_late_click() -> None:
    history = {
        (T0, "a"): ArmCounts(30, 3),
        (T0, "b"): ArmCounts(10, 0),
        (T0 + H, "a"): ArmCounts(5, 0),  # b not shown: its row is 0
        # T0 + 2H: nothing at all (a gap)
        (T0 + 3 * H, "a"): ArmCounts(1, 0),
        (T0 + 3 * H, "b"): ArmCounts(3, 1),
        (T0 + 4 * H, "b"): ArmCounts(0, 2),  # clicks only, after the last impressions
    }
    rows = data.bandit_allocation(history)
    got = [(r["hour"], r["arm"], r["impressions"], r["clicks"], r["share"]) for r in rows]
    t = datetime.fromtimestamp(T0 / 1000, UTC)
    hour = [datetime.fromtimestamp((T0 + i * H) / 1000, UTC) for i in range(4)]
    assert hour[0] == t and t.minute == 0 and t.second == 0
    assert got == [
        (hour[0], "a", 30, 3, 0.75),  # 30 / 40
        (hour[0], "b", 10, 0, 0.25),
        (hour[1], "a", 5, 0, 1.0),
        (hour[1], "b", 0, 0, 0.0),
        (hour[2], "a", 0, 0, 0.0),  # the gap drops to zero
        (hour[2], "b", 0, 0, 0.0),
        (hour[3], "a", 1, 0, 0.25),  # 1 / 4
        (hour[3], "b", 3, 1, 0.75),
    ]


def test_allocation_keeps_the_last_max_hours() -> None:
    history = {(T0 + i * H, "a"): ArmCounts(1, 0) for i in range(10)}
    history[(T0, "old")] = ArmCounts(5, 0)  # only in the first hour, outside the window
    rows = data.bandit_allocation(history, max_hours=3)
    assert [r["hour"] for r in rows] == [
        datetime.fromtimestamp((T0 + i * H) / 1000, UTC) for i in (7, 8, 9)
    ]
    assert {r["arm"] for r in rows} == {"a"}
    assert data.bandit_allocation({}) == []
    assert data.bandit_allocation({(T0, "a"): ArmCounts(0, 4)}) == []  # clicks alone


def test_the_worlds_history_grows_the_best_arms_share() -> None:
    state, fields = world.bandit_hashes(T0)
    from attune.bandits.store import decode_counts, decode_history

    rows = data.bandit_allocation(decode_history(fields))
    best = [r["share"] for r in rows if r["arm"] == "drama_picks"]
    # round(240 * 0.25) = 60 of 240 in the first hour, round(240 * 0.85) = 204 in the last
    assert len(best) == 48
    assert best[0] == pytest.approx(60 / 240) and best[-1] == pytest.approx(204 / 240)
    assert decode_counts(state)["drama_picks"].impressions == sum(
        n for (_, arm), (n, _) in world.bandit_history(T0).items() if arm == "drama_picks"
    )


# The page ------------------------------------------------------------------------------------


class _Pipe:
    def __init__(self, hashes: Mapping[str, Mapping[Any, Any]]) -> None:
        self.hashes = hashes
        self.queued: list[str] = []

    def hgetall(self, key: str) -> None:
        self.queued.append(key)

    def execute(self) -> list[dict[bytes, bytes]]:
        return [
            {k.encode(): str(v).encode() for k, v in self.hashes.get(key, {}).items()}
            for key in self.queued
        ]


class _FakeRedis:
    """Answers the page's pipeline of HGETALLs from ``hashes`` (key -> fields)."""

    def __init__(self, hashes: Mapping[str, Mapping[Any, Any]]) -> None:
        self.hashes = hashes

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.hashes)


def _clear() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def bandit_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The config with the two bandit slots; Redis answers with home_banner's hashes."""
    from attune.keys import Keys
    from dashboards import sources

    var = tmp_path / "var"
    var.mkdir()
    config = world.write_config(var, tmp_path / "cfg.yaml", prefix="attb", bandits=True)
    monkeypatch.setenv("ATTUNE_CONFIG", str(config))
    last = int(datetime.now(UTC).timestamp() * 1000) // H * H
    state, history = world.bandit_hashes(last)
    keys = Keys("attb")
    hashes = {
        keys.bandit("slot:home_banner"): state,
        keys.bandit_history("slot:home_banner"): history,
    }
    monkeypatch.setattr(sources, "_redis", lambda host, port, db, cluster=False: _FakeRedis(hashes))
    _clear()
    yield last
    _clear()


def run_bandits() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("app_pages/bandits.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_bandits_page_shows_counts_estimates_and_the_empty_policy(bandit_world: int) -> None:
    at = run_bandits()
    shown = texts(at)
    assert [s.value for s in at.subheader] == ["slot:home_banner", "slot:search_tip"]
    # the world: 48 hours of 240 impressions = 11,520; drama_picks' share averages 0.55:
    # 0.55 * 11,520 = 6,336, each other arm 0.15 * 11,520 = 1,728 (the hourly roundings cancel
    # out); clicks, the world's sums of round(n * rate) per hour: 442 + 54 + 70 + 34 = 600
    assert "Impressions 11,520" in shown
    assert "Clicks 600" in shown
    assert "Click rate 5.21%" in shown  # 600 / 11,520 = 0.052083
    assert "Most likely best drama_picks" in shown
    table = at.dataframe[0].value
    assert list(table["arm"]) == ["default", "drama_picks", "welcome", "win_back"]
    assert list(table["impressions"]) == ["1,728", "6,336", "1,728", "1,728"]
    assert list(table["clicks"]) == ["54", "442", "70", "34"]
    # drama_picks: Beta(1 + 442, 1 + 5,894): 443 / 6,338 = 6.99%; welcome 71 / 1,730 = 4.10%
    assert table["click rate"][1] == "6.99%" and table["click rate"][2] == "4.10%"
    lo, hi = beta_dist.ppf([0.025, 0.975], 443, 5895)
    assert table["95% credible interval"][1] == f"[{100 * lo:.2f}%, {100 * hi:.2f}%]"
    assert table["P(best)"][1] == "100.0%"
    # the badges: policy type, epsilon, prior
    assert ":violet-badge[:material/casino: thompson]" in shown
    assert ":gray-badge[ε 0.05]" in shown and ":gray-badge[prior Beta(1, 1)]" in shown
    assert ":violet-badge[:material/casino: linucb]" in shown and ":gray-badge[ε 0.1]" in shown
    # search_tip: nothing counted yet, and what would count it
    assert "**No impressions counted yet**" in shown
    assert "`context.placement` is `slot:search_tip`" in shown
    assert len(at.dataframe) == 1  # no table for the empty policy


def test_bandits_page_without_a_bandit_says_where_to_configure_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    config = world.write_config(var, tmp_path / "cfg.yaml")
    monkeypatch.setenv("ATTUNE_CONFIG", str(config))
    _clear()
    at = run_bandits()
    shown = texts(at)
    assert "**no bandit configured**" in shown
    assert "set `api.bandits.<slot>` in your config file" in shown
    _clear()


def test_bandits_page_when_redis_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    config = world.write_config(var, tmp_path / "cfg.yaml", bandits=True)  # Redis on port 1
    monkeypatch.setenv("ATTUNE_CONFIG", str(config))
    _clear()
    at = run_bandits()
    [warning] = at.warning
    assert "**Redis: not running** at 127.0.0.1:1/0" in str(warning.value)
    assert "attune stack up" in str(warning.value)
    assert not at.subheader
    _clear()


def test_the_page_reads_every_policy_in_one_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from attune.keys import Keys
    from dashboards import sources

    state, history = world.bandit_hashes(T0)
    keys = Keys("p")
    hashes = {keys.bandit("slot:a"): state, keys.bandit_history("slot:a"): history}
    pipes: list[_Pipe] = []

    class Counting(_FakeRedis):
        def pipeline(self, transaction: bool = True) -> _Pipe:
            pipes.append(super().pipeline(transaction))
            return pipes[-1]

    monkeypatch.setattr(sources, "_redis", lambda host, port, db, cluster=False: Counting(hashes))
    got = sources._bandit_state("h", 1, 0, "p", ("slot:a", "messages"))
    assert len(pipes) == 1 and pipes[0].queued == [
        keys.bandit("slot:a"),
        keys.bandit_history("slot:a"),
        keys.bandit("messages"),
        keys.bandit_history("messages"),
    ]
    assert got["error"] is None
    assert got["policies"]["slot:a"]["counts"]["drama_picks"] == ArmCounts(6336, 442)
    # the last hour (T0): round(240 * 0.85) = 204 impressions, round(204 * 0.07) = 14 clicks;
    # the first: round(240 * 0.25) = 60, round(60 * 0.07) = round(4.2) = 4
    hist = got["policies"]["slot:a"]["history"]
    assert hist[(T0, "drama_picks")] == ArmCounts(204, 14)
    assert hist[(T0 - 47 * H, "drama_picks")] == ArmCounts(60, 4)
    assert got["policies"]["messages"] == {"counts": {}, "history": {}, "error": None}


def test_a_hash_that_cannot_be_decoded_is_that_policys_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from attune.keys import Keys
    from dashboards import sources

    keys = Keys("p")
    hashes: dict[str, Any] = {keys.bandit("slot:a"): {"n:x": "lots"}}
    monkeypatch.setattr(sources, "_redis", lambda host, port, db, cluster=False: _FakeRedis(hashes))
    got = sources._bandit_state("h", 1, 0, "p", ("slot:a",))
    assert got["error"] is None
    assert got["policies"]["slot:a"]["counts"] == {}
    assert "ValueError" in got["policies"]["slot:a"]["error"]

"""Every page of the dashboard, run with Streamlit's AppTest, with data and on an empty var/.

With data: the hand-written world of :mod:`tests.unit.dashboards.world` (the fixture report,
a model repository, the data-quality tables). Each test runs the page, asserts that no
exception was shown, then looks for the values the fixture holds, formatted by hand. No service
runs: every port in the config is 1, so the live page and "today so far" show their
"not running" states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.unit.dashboards import world

APP = str(world.ROOT / "dashboards" / "app.py")


def _clear() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def with_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    var = tmp_path / "var"
    world.build(var, with_stopped=True)
    monkeypatch.setenv("ATTUNE_CONFIG", str(world.write_config(var, tmp_path / "cfg.yaml")))
    _clear()
    yield var
    _clear()


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    var = tmp_path / "var"
    var.mkdir()
    monkeypatch.setenv("ATTUNE_CONFIG", str(world.write_config(var, tmp_path / "cfg.yaml")))
    _clear()
    yield var
    _clear()


def run(page: str | None = None, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Everything the page wrote as text (markdown, captions, alerts, metrics, tables)."""
    parts: list[str] = []
    for kind in (
        "title",
        "subheader",
        "markdown",
        "caption",
        "info",
        "warning",
        "error",
        "success",
    ):
        parts.extend(str(e.value) for e in getattr(at, kind))
    parts.extend(f"{m.label} {m.value}" for m in at.metric)
    parts.extend(df.value.to_string() for df in at.dataframe)
    return "\n".join(parts)


# With data --------------------------------------------------------------------------------


def test_experiments_lists_each_experiment_with_its_verdict_and_lift(with_data: Path) -> None:
    at = run()
    assert [t.value for t in at.title] == ["Experiments"]
    shown = texts(at)
    for exp_id in ("ranking_v1", "rankers_il", "banner_v2"):
        assert f"#### {exp_id}" in shown
    # badges: ship in green, stop in red, keep running in blue
    assert ":green-badge[:material/gavel: ship]" in shown
    assert ":red-badge[:material/gavel: stop]" in shown
    assert ":blue-badge[:material/gavel: keep running]" in shown
    # ranking_v1's ctr: rel_lift 0.0617 -> +6.2%, rel_ci [0.0198, 0.1037] -> [+2.0%, +10.4%]
    assert "**Lift (ctr):** +6.2% [+2.0%, +10.4%]" in shown
    # rankers_il: preference 0.5349 for model_v2, ci [0.4963, 0.5735]
    assert "**Preference:** model_v2 preferred 53.5% [49.6%, 57.4%]" in shown
    # users: 6000 + 6050 for ranking_v1; 900 interleaved users
    assert "Users 12,050" in shown and "Users 900" in shown
    assert "Days 5" in shown


def test_experiment_page_shows_verdict_metrics_interval_guardrails_segments(
    with_data: Path,
) -> None:
    at = run("app_pages/experiment.py", experiment="ranking_v1")
    shown = texts(at)
    assert "Experiment ranking_v1" in shown
    assert "**Verdict: ship** — treatment +6.2% ctr (always-valid 95% CI +0.5%..+11.9%)" in shown
    assert not at.warning  # the split is healthy: chi² 0.21, p 0.649
    assert "Sample ratio test: chi² 0.21, p 0.649" in shown
    metrics = at.dataframe[0].value
    ctr = metrics[metrics["metric"] == "ctr"].iloc[0]
    # control 0.081 -> 8.10%, value 0.086 -> 8.60%, chance 0.998 -> 99.8%, p 0.004, p adj 0.012
    assert (ctr["control"], ctr["value"]) == ("8.10%", "8.60%")
    assert (ctr["rel. lift"], ctr["rel. 95% CI"]) == ("+6.2%", "[+2.0%, +10.4%]")
    assert (ctr["chance to win"], ctr["p"], ctr["p (adjusted)"]) == ("99.8%", "0.004", "0.012")
    # always-valid p 0.021, its relative interval rel_cs [0.005, 0.119]
    assert (ctr["always-valid p"], ctr["always-valid 95% CI"]) == ("0.021", "[+0.5%, +11.9%]")
    dwell = metrics[metrics["metric"] == "dwell_s"].iloc[0]
    assert (dwell["control"], dwell["value"]) == ("41.2 s", "42.0 s")
    # the primary metric first, then the secondary ones by name
    assert list(metrics["metric"]) == ["ctr", "click_rate", "dwell_s", "purchase_rate"]
    details = at.dataframe[1].value
    ctr_abs = details[details["metric"] == "ctr"].iloc[0]
    # abs lift 0.005 -> +0.50 pp, abs_ci [0.0016, 0.0084], cs [0.0004, 0.0096]
    assert ctr_abs["abs. lift"] == "+0.50 pp"
    assert ctr_abs["abs. 95% CI"] == "[+0.16 pp, +0.84 pp]"
    assert ctr_abs["always-valid CI (abs.)"] == "[+0.04 pp, +0.96 pp]"
    # the confidence sequence over time, for the primary metric first
    assert at.selectbox(key="history_metric").value == "ctr"
    assert "Relative lift over time" in shown
    guardrails = at.dataframe[2].value
    assert list(guardrails["guardrail"]) == ["dismiss_rate", "api_latency_p99_ms", "error_rate"]
    # dismiss_rate 0.012 -> 0.0124: +3.3%, allowed 5.0%; latency 48 -> 51 ms: +6.2%
    assert list(guardrails["change"]) == ["+3.3%", "+6.2%", "+0.0%"]
    assert list(guardrails["allowed increase"]) == ["5.0%", "10.0%", "10.0%"]
    segments = at.dataframe[3].value
    assert list(segments["segment"]) == ["active", "new", "loyal"]
    assert list(segments["rel. lift"]) == ["+7.1%", "+3.2%", "+7.2%"]
    # today so far: Redis is not reachable, so the report's counts (as of 09:30)
    assert "as of 2026-12-06T09:30:00Z" in shown
    today = at.dataframe[-1].value
    # treatment: 104 clicks / 1180 impressions = 8.8%
    assert today[today["variant"] == "treatment"].iloc[0]["click rate"] == "8.8%"


def test_a_sample_ratio_mismatch_and_a_breached_guardrail_are_shown_first(
    with_data: Path,
) -> None:
    at = run("app_pages/experiment.py", experiment="banner_v2")
    assert len(at.warning) == 1
    assert at.warning[0].value.startswith("Sample ratio mismatch")
    assert (
        "6,000 control vs 5,200 treatment users where the split plans 50.0% / 50.0% "
        "(chi² 57.1, p = 4.2e-14; flagged below 0.001)"
    ) in at.warning[0].value
    assert "Guardrail breached: dismiss_rate (treatment: +9.0%, allowed +5%)" in at.error[0].value
    assert "**Verdict: stop**" in at.error[1].value


def test_interleaving_experiment_shows_preference_and_wins(with_data: Path) -> None:
    at = run("app_pages/experiment.py", experiment="rankers_il")
    shown = texts(at)
    assert "Experiment rankers_il" in shown
    assert "Interleaving" in [s.value for s in at.subheader]
    assert "Metrics" not in [s.value for s in at.subheader]  # no A/B metric for this type
    assert "Preference for model_v2 53.5%" in shown
    assert "p-value 0.076" in shown
    assert "Preference over time" in shown  # the preference's history, not a lift's
    wins = next(d.value for d in at.dataframe if "ranker" in d.value.columns)
    # 300 and 345 wins of 645 decided impressions: 46.5% and 53.5%
    assert list(wins["wins"]) == ["300", "345", "2,055"]
    assert list(wins["share of decided"]) == ["46.5%", "53.5%", ""]


def test_experiment_picker_changes_the_experiment(with_data: Path) -> None:
    at = run("app_pages/experiment.py")
    assert at.title[0].value == "Experiment ranking_v1"  # the first one by default
    at.sidebar.selectbox[1].select("rankers_il").run()
    assert at.title[0].value == "Experiment rankers_il"
    assert at.query_params["experiment"] == "rankers_il"


def test_models_page_shows_versions_served_and_promotions(with_data: Path) -> None:
    at = run("app_pages/models.py")
    shown = texts(at)
    assert [s.value for s in at.subheader] == ["Served now", "Versions", "Promotions"]
    versions = at.dataframe[0].value
    served = versions[versions["served"] == "served"]
    assert sorted(zip(served["model"], served["version"], strict=True)) == [
        ("ranking", 2),
        ("retrieval", 1),
    ]
    ranking_v1 = versions[(versions["model"] == "ranking") & (versions["version"] == 1)]
    assert ranking_v1.iloc[0]["ndcg"] == "0.1208"
    assert ranking_v1.iloc[0]["baseline"] == "recent-popularity 0.1181"
    promotions = at.dataframe[1].value
    assert list(promotions["promoted"]) == ["refused", "promoted"]  # newest first
    assert "v1 0.1208" in list(promotions["served before"])
    # the model server does not run (port 1)
    assert "model server: not running" in shown and "attune serve models" in shown


def test_live_page_says_what_is_not_running_and_how_to_start_it(with_data: Path) -> None:
    at = run("app_pages/live.py")
    shown = texts(at)
    metrics = {m.label: (m.value, m.delta) for m in at.metric}
    for label in ("Events / s (collector)", "API p99", "Freshness (online batch)"):
        assert metrics[label] == ("–", "not running"), label
    services = at.dataframe[0].value
    assert set(services["state"]) == {"not running"}
    for command in (
        "attune serve collector",
        "attune serve api",
        "attune serve models",
        "attune speed start",
        "attune stack up",
    ):
        assert command in shown


def test_quality_page_shows_the_failed_check_and_the_drift(with_data: Path) -> None:
    at = run("app_pages/quality.py")
    shown = texts(at)
    assert at.selectbox(key="run").value.isoformat() == "2026-12-05"  # the newest run
    checks = at.dataframe[0].value
    # the replaced first write of 2026-12-05 is gone: 5 checks, the volume one failed, first
    assert len(checks) == 5
    assert checks.iloc[0]["check"] == "volume" and checks.iloc[0]["result"] == "FAILED"
    assert "1 check(s) failed on 2026-12-05" in shown
    statuses = at.dataframe[1].value
    assert dict(zip(statuses["status"], statuses["users"], strict=True))["comparable"] == "480"
    features = at.dataframe[2].value
    recent = features[features["feature"] == "recent_items"].iloc[0]
    # 480 of 492 compared users equal
    assert (recent["users compared"], recent["equal"]) == (492, 480)
    assert recent["share equal"] == pytest.approx(480 / 492)
    at.selectbox(key="run").select(at.selectbox(key="run").options[1]).run()
    assert "Every check passed on 2026-12-04." in texts(at)


# Without data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "what", "command"),
    [
        (None, "no experiment report in", "attune experiments report"),
        ("app_pages/experiment.py", "no experiment report in", "attune experiments report"),
        ("app_pages/models.py", "no model repository at", "attune models train"),
        ("app_pages/quality.py", "no table at", "attune batch run --date YYYY-MM-DD"),
    ],
)
def test_an_empty_var_shows_no_data_yet_and_the_command(
    empty: Path, page: str | None, what: str, command: str
) -> None:
    at = run(page)
    assert at.info, "expected a 'no data yet' state"
    message = at.info[0].value
    assert what in message and command in message
    assert "no data yet" in message or "no model yet" in message


def test_live_page_on_an_empty_var(empty: Path) -> None:
    at = run("app_pages/live.py")
    assert [s.value for s in at.subheader] == ["Services", "Experiments today", "Online store"]
    assert "attune stack up" in texts(at)


def test_a_broken_report_file_says_how_to_rewrite_it(empty: Path) -> None:
    folder = empty / "reports" / "experiments"
    folder.mkdir(parents=True)
    (folder / "latest.json").write_text("{not json")
    at = run()
    assert "cannot be read" in at.info[0].value
    assert "re-run `attune experiments report`" in at.info[0].value


def test_a_broken_config_is_shown_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dashboard:\n  cache_ttl: 5\n")
    monkeypatch.setenv("ATTUNE_CONFIG", str(bad))
    _clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "dashboard.cache_ttl: unknown key" in at.error[0].value
    _clear()


# With services answering -------------------------------------------------------------------


class _FakeServers:
    """In-process HTTP servers standing in for the collector's and the API's /metrics (each
    answers the next exposition of its list: before, then after) and the model server's
    status API."""

    def __init__(self, api: Sequence[str] | None = None) -> None:
        import http.server
        import threading

        collector = [
            'attune_collector_events_total{type="click",source="web",outcome="accepted"} 500\n',
            'attune_collector_events_total{type="click",source="web",outcome="accepted"} 600\n',
        ]
        api = list(api or (_API_BEFORE, _API_AFTER))
        status = {
            "/v1/models/ranking": {
                "model_version_status": [{"version": "2", "state": "AVAILABLE"}]
            },
            "/v1/models/retrieval": {
                "model_version_status": [{"version": "1", "state": "AVAILABLE"}]
            },
        }
        self.servers = []
        for answers in (collector, api, status):

            class Handler(http.server.BaseHTTPRequestHandler):
                calls = 0
                bodies = answers

                def do_GET(self) -> None:
                    if isinstance(self.bodies, dict):
                        body = json.dumps(self.bodies.get(self.path, {})).encode()
                    else:
                        body = self.bodies[min(type(self).calls, 1)].encode()
                        type(self).calls += 1
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: object) -> None:
                    pass

            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)

    def ports(self) -> list[int]:
        return [s.server_address[1] for s in self.servers]

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


def _histogram(counts: tuple[int, int, int]) -> str:
    le = ("0.005", "0.01", "0.025")
    lines = [
        f'attune_api_request_seconds_bucket{{endpoint="recommendations",le="{b}"}} {n}'
        for b, n in zip(le, counts, strict=True)
    ]
    lines.append(
        f'attune_api_request_seconds_bucket{{endpoint="recommendations",le="+Inf"}} {counts[-1]}'
    )
    lines.append(f'attune_api_request_seconds_count{{endpoint="recommendations"}} {counts[-1]}')
    lines.append('attune_api_request_seconds_sum{endpoint="recommendations"} 0.1')
    lines.append(
        f'attune_api_requests_total{{endpoint="recommendations",status="200"}} {counts[-1]}'
    )
    return "\n".join(lines) + "\n"


_API_BEFORE = _histogram((10, 10, 10))
_API_AFTER = _histogram((10, 13, 14))


def _point_config_at(fake: _FakeServers, config: Path) -> None:
    import yaml

    collector, api, models = fake.ports()
    cfg = yaml.safe_load(config.read_text())
    cfg["collector"]["port"], cfg["api"]["port"] = collector, api
    cfg["serving"]["rest_port"] = models
    cfg["dashboard"] = {"rate_window_s": 0.2}
    config.write_text(yaml.safe_dump(cfg))
    _clear()


@pytest.fixture
def services(with_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fake = _FakeServers()
    _point_config_at(fake, tmp_path / "cfg.yaml")
    yield
    fake.close()


def test_live_page_with_the_services_answering(services: None) -> None:
    at = run("app_pages/live.py")
    metrics = {m.label: (m.value, m.delta) for m in at.metric}
    events, delta = metrics["Events / s (collector)"]
    # 100 events accepted between two scrapes about 0.2 s apart: a few hundred per second
    assert not delta and 100 < float(events.replace(",", "")) <= 500
    # the window's 4 requests: p99 rank 3.96 in (0.01, 0.025] -> 0.01 + 0.015 * 0.96 = 24 ms
    assert metrics["API p99"][0] == "24 ms"
    services = at.dataframe[0].value.set_index("service")
    assert services.loc["collector", "state"] == "running"
    assert services.loc["personalization API", "state"] == "running"
    assert services.loc["model server", "detail"] == "retrieval v1 available; ranking v2 available"


def test_models_page_with_the_model_server_answering(services: None) -> None:
    at = run("app_pages/models.py")
    assert [s.value for s in at.success] == [
        "model server: serving v2",
        "model server: serving v1",
    ]
    assert not at.warning


def test_an_experiment_whose_analysis_failed_says_so(empty: Path) -> None:
    """The shape the spark report gives an experiment whose analysis raised: no numbers."""
    report = {
        "report_date": "2026-12-05",
        "generated_at": "2026-12-06T02:00:00Z",
        "operational_guardrails": "measured live from the API's Prometheus metrics",
        "experiments": [
            {
                "id": "broken",
                "hypothesis": "",
                "type": "ab",
                "layer": "",
                "status": "running",
                "verdict": "running",
                "reason": "analysis failed: ValueError: no exposures",
                "error": "ValueError: no exposures",
                "days": 0,
                "variants": [],
                "srm": None,
                "metrics": [],
                "guardrails": [],
                "history": [],
                "segments": [],
                "interleaving": None,
                "today": None,
                "notes": ["not declared in the experiments file"],
            }
        ],
    }
    world.write_reports(empty / "reports" / "experiments", report)
    at = run("app_pages/experiment.py")
    shown = texts(at)
    assert "The analysis of this experiment failed: ValueError: no exposures" in shown
    assert "Note: not declared in the experiments file" in shown
    assert "No metric has been analysed yet for this experiment." in shown
    assert "API latency p99 and error rate: measured live" in shown
    at = run()
    assert "#### broken" in texts(at)


# Live guardrails -----------------------------------------------------------------------------

# ranking_v1 as the API counts it since it started; the "none/default" series (requests outside
# any experiment) must not count for it.
_CONTROL = {"0.01": 60, "0.025": 95, "0.05": 100, "0.1": 100}  # cumulative, 100 requests
_TREATMENT = {"0.01": 100, "0.025": 180, "0.05": 190, "0.1": 200}  # 200 requests
_LIVE_VARIANTS = world.variant_metrics(
    {
        ("ranking_v1", "control"): (_CONTROL, 97, 2, 1),
        ("ranking_v1", "treatment"): (_TREATMENT, 196, 3, 1),
        ("none", "default"): ({"0.01": 0, "0.025": 0, "0.05": 0, "0.1": 0}, 0, 0, 40),
    }
)


@pytest.fixture
def live_report(with_data: Path) -> Path:
    """ranking_v1's operational guardrails as the nightly report writes them: measured live."""
    report = world.live_guardrails_report(world.fixture_report())
    world.write_reports(with_data / "reports" / "experiments", report)
    return with_data


@pytest.fixture
def live_api(live_report: Path, tmp_path: Path) -> Iterator[None]:
    fake = _FakeServers(api=[_LIVE_VARIANTS, _LIVE_VARIANTS])
    _point_config_at(fake, tmp_path / "cfg.yaml")
    yield
    fake.close()


def test_live_guardrails_filled_from_the_apis_metrics(live_api: None) -> None:
    at = run("app_pages/experiment.py", experiment="ranking_v1")
    shown = texts(at)
    # above the numbers: the breach, and that the report's verdict (ship) did not see it
    live_error = at.error[0].value
    assert live_error.startswith(
        "Live guardrail breached: api_latency_p99_ms (treatment: +100.0%, allowed +10%)"
    )
    assert "The verdict in the report (ship) does not include it" in live_error
    assert "**Verdict: ship**" in at.success[0].value
    guardrails = at.dataframe[2].value.set_index("guardrail")
    # control p99: rank 0.99 * 100 = 99 in (0.025, 0.05] holding ranks 95..100:
    #   0.025 + 0.025 * (99 - 95) / 5 = 0.045 s = 45.0 ms
    # treatment: rank 198 in (0.05, 0.1] holding ranks 190..200:
    #   0.05 + 0.05 * (198 - 190) / 10 = 0.09 s = 90.0 ms; 90 / 45 - 1 = +100.0% > 10%
    latency = guardrails.loc["api_latency_p99_ms"]
    assert (latency["control"], latency["value"], latency["change"]) == (
        "45.0 ms",
        "90.0 ms",
        "+100.0%",
    )
    # errors / all outcomes: control 1 / (97 + 2 + 1) = 1.00%, treatment 1 / 200 = 0.50%:
    # 0.5 / 1 - 1 = -50.0%, within the allowed +10%
    errors = guardrails.loc["error_rate"]
    assert (errors["control"], errors["value"], errors["change"]) == ("1.00%", "0.50%", "-50.0%")
    assert list(guardrails["breached"]) == [False, True, False]
    for name in ("api_latency_p99_ms", "error_rate"):
        assert guardrails.loc[name, "measured"].startswith("live, since the API started (scraped ")
    assert guardrails.loc["dismiss_rate", "measured"] == "nightly report"
    assert "requests so far: control 100, treatment 200" in shown


def test_live_guardrails_when_the_api_is_not_running(live_report: Path) -> None:
    at = run("app_pages/experiment.py", experiment="ranking_v1")
    shown = texts(at)
    assert not at.error  # nothing breached: the live values are unknown
    guardrails = at.dataframe[2].value.set_index("guardrail")
    for name in ("api_latency_p99_ms", "error_rate"):
        row = guardrails.loc[name]
        assert (row["control"], row["value"], row["change"]) == ("–", "–", "–")
        assert row["measured"] == "live: the API is not running"
    assert "API latency p99 and error rate: measured live" in shown
    # the config's API port is 1: nothing listens there
    assert (
        "The live guardrails need the API, which does not answer at http://127.0.0.1:1 "
        "(connection refused): start it with `attune serve api`."
    ) in shown


def test_a_bandit_allocated_experiment_warns_above_the_numbers_and_has_no_srm(
    with_data: Path,
) -> None:
    from attune.experiments.verdict import BANDIT_WARNING

    report = world.fixture_report()
    exp = next(e for e in report["experiments"] if e["id"] == "ranking_v1")
    exp["srm"] = None  # what analyse() writes for allocation.bandit
    exp["warnings"] = [BANDIT_WARNING]
    world.write_reports(with_data / "reports" / "experiments", report)
    at = run("app_pages/experiment.py", experiment="ranking_v1")
    assert [w.value for w in at.warning] == [BANDIT_WARNING]
    assert "Sample ratio test" not in texts(at)

"""``attune experiments report`` without Spark: per-user sums as of a day, segments,
interleaving tallies, statuses, the report's JSON, table rows and text. Expected values are
worked out by hand in the comments."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from attune.experiments.spec import parse_experiments
from attune.experiments.state import Allocation, RunningState
from spark import experiments as report
from spark.experiments import (
    LIVE_NOTE,
    RESULT_COLUMNS,
    UNDECLARED_NOTE,
    ExperimentInput,
    TeamRow,
    UserDays,
    build_report,
    declared_plan,
    experiment_status,
    format_results,
    interleaving_result,
    report_inputs,
    result_rows,
    segment_breakdown,
    undeclared_plan,
)

D1, D2, D3 = date(2013, 3, 1), date(2013, 3, 2), date(2013, 3, 3)


def row(
    variant: str, user: str, day: date, exposures: int, clicks: int, **kw: Any
) -> dict[str, Any]:
    base = dict(carts=0, purchases=0, revenue=0.0, dwell_s=0.0, dismissals=0, pre_events=0,
                segment=None, device=None)  # fmt: skip
    base.update(kw)
    return dict(variant=variant, user=user, exposure_date=day, exposures=exposures,
                clicks=clicks, **base)  # fmt: skip


def test_user_days_sum_each_users_rows_up_to_a_day() -> None:
    days = UserDays.from_rows(
        [
            row("control", "u1", D1, 2, 1, pre_events=4, segment="a", device="mobile"),
            row("control", "u1", D2, 1, 1, pre_events=4, segment="a", device="mobile"),
            row("control", "u2", D2, 3, 0),
            row("treatment", "u3", D1, 1, 1, pre_events=2),
            row("treatment", "u1", D2, 1, 0),  # u1 was also shown the treatment
        ]
    )
    assert days.days == [D1, D2]
    first = days.as_of(D1)
    # 03-01: u1 (control: 2 exposures, 1 click) and u3 (treatment: 1, 1)
    assert first.users() == {"control": 1, "treatment": 1}
    data = first.variant_data()
    assert data["control"].exposures.tolist() == [2.0] and data["control"].clicks.tolist() == [1.0]
    assert data["control"].pre_period is not None and data["control"].pre_period.tolist() == [4.0]
    second = days.as_of(D2).variant_data(cuped=False)
    # 03-02: u1 control 2 + 1 = 3 exposures, 1 + 1 = 2 clicks; u2 3, 0; u3 1, 1; u1 treatment 1, 0
    assert second["control"].exposures.tolist() == [3.0, 3.0]
    assert second["control"].clicks.tolist() == [2.0, 0.0]
    assert second["treatment"].exposures.tolist() == [1.0, 1.0]
    assert second["treatment"].pre_period is None
    assert report._users_in_several_variants(days, D1) == 0
    assert report._users_in_several_variants(days, D2) == 1  # u1


SEGMENTED = [
    # control: ctr in a = (1 + 0) / (2 + 2) = 0.25, in b = (1 + 0) / 4 = 0.25
    row("control", "c1", D1, 2, 1, segment="a", device="tv", dismissals=1),
    row("control", "c2", D1, 2, 0, segment="a", device="tv"),
    row("control", "c3", D2, 2, 1, segment="b", device="tv"),
    row("control", "c4", D2, 2, 0, segment="b", device="tv"),
    # treatment: in a (1 + 1) / 4 = 0.5 (lift 0.5 / 0.25 - 1 = +100 %), in b 1 / 4 = 0.25 (0 %)
    row("treatment", "t1", D1, 2, 1, segment="a", device="tv", dismissals=1),
    row("treatment", "t2", D1, 2, 1, segment="a", device="tv"),
    row("treatment", "t3", D2, 2, 1, segment="b", device="tv"),
    row("treatment", "t4", D2, 2, 0, segment="b", device="tv", dismissals=1),
]


def test_segment_breakdown() -> None:
    totals = UserDays.from_rows(SEGMENTED).as_of(D2)
    out = segment_breakdown(totals, "control", ["treatment"], "ctr", 0.05)
    by = {r["segment"]: r for r in out}
    assert set(by) == {"a", "b"} and by["a"]["dimension"] == "segment"
    assert (by["a"]["users"], by["a"]["control_users"]) == (2, 2)
    assert (by["a"]["control"], by["a"]["value"]) == (0.25, 0.5)
    assert by["a"]["rel_lift"] == pytest.approx(1.0)
    assert by["b"]["rel_lift"] == pytest.approx(0.0)
    assert by["a"]["rel_ci"][0] < 1.0 < by["a"]["rel_ci"][1]
    # without segments: by device; one device, tv: ctr (1 + 0 + 1 + 0) / 8 = 0.25 against
    # (1 + 1 + 1 + 0) / 8 = 0.375
    plain = UserDays.from_rows([{**r, "segment": None} for r in SEGMENTED]).as_of(D2)
    [tv] = segment_breakdown(plain, "control", ["treatment"], "ctr", 0.05)
    assert (tv["dimension"], tv["segment"], tv["control"], tv["value"]) == (
        "device",
        "tv",
        0.25,
        0.375,
    )
    # one user on a side: no comparison, the values still shown
    one = UserDays.from_rows(SEGMENTED[:1] + SEGMENTED[4:6]).as_of(D1)
    [a] = segment_breakdown(one, "control", ["treatment"], "ctr", 0.05)
    assert (a["control"], a["value"], a["rel_lift"], a["rel_ci"]) == (0.5, 0.5, None, None)


def test_interleaving_tallies_impressions_per_user() -> None:
    rows = [
        TeamRow("u1", D1, {"a": 1, "b": 0}),  # a wins
        TeamRow("u1", D1, {"a": 0, "b": 2}),  # b wins
        TeamRow("u1", D2, {"a": 1, "b": 1}),  # tie
        TeamRow("u2", D2, {"a": 0, "b": 1}),  # b wins
        TeamRow("u2", D2, {"a": 0, "b": 0}),  # undecided
        TeamRow("u3", D3, {"a": 5}),  # after the date
    ]
    r = interleaving_result(rows, ("a", "b"), D2, 0.05)
    assert r is not None
    assert (r.impressions, r.users, r.wins, r.ties, r.undecided) == (5, 2, {"a": 1, "b": 2}, 1, 1)
    # preferences for b: u1 1 of 2 decided = 0.5, u2 1 of 1 = 1.0; mean 0.75
    assert r.test.preference == pytest.approx(0.75) and r.test.users == 2
    assert interleaving_result(rows, ("a", "b"), date(2013, 2, 28), 0.05) is None


DECLS = parse_experiments(
    {
        "experiments": [
            {
                "id": "e1",
                "hypothesis": "treatment raises ctr",
                "layer": "recs",
                "variants": {"control": {"weight": 1}, "treatment": {"weight": 1}},
                "secondary_metrics": ["click_rate"],
                "guardrails": [
                    {"metric": "dismiss_rate", "max_relative_increase": 0.05},
                    {"metric": "error_rate", "max_relative_increase": 0.1},
                ],
            },
            {
                "id": "il",
                "hypothesis": "b ranks better",
                "type": "interleaving",
                "layer": "il",
                "variants": {"a": {}, "b": {}},
            },
            {"id": "later", "hypothesis": "not yet", "layer": "l", "variants": {"x": {}, "y": {}}},
        ]
    }
)


def _state(status: str, weights: dict[str, float] | None = None) -> RunningState:
    return RunningState(
        experiment="e1",
        status=status,  # type: ignore[arg-type]
        started_at=datetime(2013, 2, 1, tzinfo=UTC),
        allocation=Allocation("recs", 1.0, (0.0, 1.0), weights or {"control": 1, "treatment": 1}),
    )


def test_status_from_the_recorded_state_else_from_the_data() -> None:
    e1 = DECLS.get("e1")
    running = ExperimentInput("e1", e1, state=_state("running"), state_known=True)
    assert experiment_status(running, D2, []) == "running"
    stopped = ExperimentInput("e1", e1, state=_state("stopped"), state_known=True)
    assert experiment_status(stopped, D2, [D1, D2]) == "stopped"
    assert experiment_status(ExperimentInput("e1", e1, state_known=True), D2, [D2]) == "draft"
    unknown = ExperimentInput("e1", e1)  # Redis unreadable: traffic on the date = running
    assert experiment_status(unknown, D2, [D1, D2]) == "running"
    assert experiment_status(unknown, D3, [D1, D2]) == "stopped"
    assert experiment_status(unknown, D3, []) == "draft"


def test_plans() -> None:
    e1 = DECLS.get("e1")
    assert e1 is not None
    assert dict(declared_plan(e1, None, 0.05).weights) == {"control": 1.0, "treatment": 1.0}
    # the weights recorded at the start are those users were assigned by
    recorded = declared_plan(e1, _state("running", {"treatment": 3, "control": 1}), 0.05)
    assert list(recorded.weights.items()) == [("control", 1.0), ("treatment", 3.0)]
    plan = undeclared_plan("old", ["B", "A"], 0.1)
    assert (plan.control, list(plan.weights), plan.primary_metric) == ("A", ["A", "B"], "ctr")
    assert undeclared_plan("old", ["treatment", "control"], 0.1).control == "control"


def test_inputs_declared_first_then_undeclared() -> None:
    users = {"zz": UserDays.from_rows(SEGMENTED), "e1": UserDays.from_rows(SEGMENTED)}
    inputs = report_inputs(DECLS, users, {"il": []}, {"e1": _state("running")}, True)
    assert [i.experiment for i in inputs] == ["e1", "il", "later", "zz"]
    assert inputs[0].state is not None and inputs[0].state_known
    assert inputs[3].decl is None and not inputs[3].state_known


def _doc(**kw: Any) -> dict[str, Any]:
    inputs = [
        ExperimentInput(
            "e1",
            DECLS.get("e1"),
            UserDays.from_rows(SEGMENTED),
            state=_state("running"),
            state_known=True,
        ),
        ExperimentInput(
            "il",
            DECLS.get("il"),
            UserDays.from_rows([row("interleaved", "u1", D2, 2, 1)]),
            teams=[TeamRow("u1", D2, {"a": 0, "b": 1})],
        ),
        ExperimentInput("later", DECLS.get("later"), state_known=True),
        ExperimentInput("old", None, UserDays.from_rows([row("A", "u9", D1, 1, 0)])),
    ]
    return build_report(inputs, D2, 0.05, "2013-03-03T06:00:00.000Z", cuped=False, **kw)


def test_report_json() -> None:
    doc = _doc()
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc  # plain JSON, no NaN
    assert (doc["report_date"], doc["generated_at"]) == ("2013-03-02", "2013-03-03T06:00:00.000Z")
    assert doc["operational_guardrails"] == LIVE_NOTE
    e1, il, later, old = doc["experiments"]

    assert (e1["id"], e1["type"], e1["layer"], e1["status"], e1["declared"]) == (
        "e1",
        "ab",
        "recs",
        "running",
        True,
    )
    # first exposures on 03-01: day 2 on 03-02
    assert (e1["first_exposure"], e1["days"], e1["today"]) == ("2013-03-01", 2, None)
    # 4 users a side, 2 exposures each
    assert [(v["name"], v["users"], v["exposures"], v["is_control"]) for v in e1["variants"]] == [
        ("control", 4, 8, True),
        ("treatment", 4, 8, False),
    ]
    metrics = {m["metric"]: m for m in e1["metrics"]}
    # ctr: control (1+0+1+0) / 8 = 0.25, treatment (1+1+1+0) / 8 = 0.375: +50 %
    ctr = metrics["ctr"]
    assert (ctr["role"], ctr["variant"], ctr["control"], ctr["value"]) == (
        "primary",
        "treatment",
        0.25,
        0.375,
    )
    assert ctr["rel_lift"] == pytest.approx(0.5) and ctr["cuped"] is False
    # click_rate: users with a click, control 2 of 4, treatment 3 of 4: +50 %
    cr = metrics["click_rate"]
    assert (cr["role"], cr["control"], cr["value"]) == ("secondary", 0.5, 0.75)
    assert cr["rel_lift"] == pytest.approx(0.5)
    guard = {g["metric"]: g for g in e1["guardrails"]}
    # dismiss_rate: control 1 / 8 (c1), treatment 2 / 8 (t1, t4): measured by the batch
    assert guard["dismiss_rate"]["measured"] == "batch"
    assert (guard["dismiss_rate"]["control"], guard["dismiss_rate"]["value"]) == (0.125, 0.25)
    # error_rate: from the API's live metrics, not part of the verdict
    assert guard["error_rate"]["measured"] == "live" and guard["error_rate"]["breached"] is None
    assert guard["error_rate"]["note"] == LIVE_NOTE
    # one look per day with exposures: 03-01 (2 users a side) and 03-02 (4)
    looks = [(h["date"], h["users"], h["control_users"]) for h in e1["history"]
             if h["metric"] == "ctr"]  # fmt: skip
    assert looks == [("2013-03-01", 2, 2), ("2013-03-02", 4, 4)]
    # segment a: control 0.25, treatment 0.5; b: 0.25 and 0.25
    seg = {s["segment"]: (s["control"], s["value"]) for s in e1["segments"]}
    assert seg == {"a": (0.25, 0.5), "b": (0.25, 0.25)}
    assert e1["verdict"] in ("running", "ship", "no_difference", "stop") and e1["reason"]
    assert e1["notes"] == []

    assert il["type"] == "interleaving" and il["interleaving"]["wins"] == {"a": 0, "b": 1}
    assert [(v["name"], v["users"]) for v in il["variants"]] == [("interleaved", 1)]
    # the recorded state was not readable for il (state_known False): data on 03-02 = running
    assert il["status"] == "running" and il["verdict"] == "running"

    assert (later["status"], later["verdict"], later["days"]) == ("draft", "running", 0)
    assert later["reason"].startswith("waiting for data")

    assert (old["declared"], old["status"], old["notes"]) == (False, "stopped", [UNDECLARED_NOTE])


def test_a_failed_analysis_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kw: Any) -> Any:
        raise ValueError("no variance")

    monkeypatch.setattr(report, "analyse", boom)
    doc = _doc()
    e1 = doc["experiments"][0]
    assert e1["error"] == "ValueError: no variance" and e1["status"] == "running"
    assert e1["reason"] == "analysis failed: ValueError: no variance" and e1["metrics"] == []
    assert doc["experiments"][1]["interleaving"] is not None  # the others are still there
    # its row in the table: the verdict and reason, no metric
    [row_e1] = [r for r in result_rows(doc) if r[1] == "e1"]
    assert (row_e1[5], row_e1[8]) == ("running", None)


def test_a_look_that_cannot_be_analysed_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real = report.analyse

    def thin_first_day(*args: Any, **kw: Any) -> Any:
        if kw["as_of"] == "2013-03-01":
            raise ValueError("every look needs a positive standard error")
        return real(*args, **kw)

    monkeypatch.setattr(report, "analyse", thin_first_day)
    e1 = _doc()["experiments"][0]
    # only the look of 03-02 is left; the report says why
    assert [h["date"] for h in e1["history"] if h["metric"] == "ctr"] == ["2013-03-02"]
    assert e1["notes"] == ["no look on 2013-03-01: the data of those days was too thin"]
    assert e1["metrics"]


def test_result_rows_and_text() -> None:
    doc = _doc()
    rows = result_rows(doc)
    names = [n for n, _ in RESULT_COLUMNS]
    assert all(len(r) == len(names) for r in rows)
    by = [dict(zip(names, r, strict=True)) for r in rows]
    e1 = [r for r in by if r["experiment"] == "e1"]
    # 2 variants, ctr and click_rate of the treatment, 2 guardrails
    assert [(r["role"], r["metric"], r["variant"]) for r in e1] == [
        ("variant", "users", "control"),
        ("variant", "users", "treatment"),
        ("primary", "ctr", "treatment"),
        ("secondary", "click_rate", "treatment"),
        ("guardrail", "dismiss_rate", "treatment"),
        ("guardrail", "error_rate", "treatment"),
    ]
    assert (e1[0]["users"], e1[0]["exposures"], e1[0]["control"]) == (4, 8, 4.0)  # 8 * 1/2
    assert (e1[2]["control"], e1[2]["value"]) == (0.25, 0.375)
    assert e1[5]["measured"] == "live" and e1[5]["breached"] is None
    assert all(r["report_date"] == D2 and r["verdict"] == e1[0]["verdict"] for r in e1)
    [pref] = [r for r in by if r["role"] == "interleaving"]
    assert (pref["experiment"], pref["variant"], pref["value"], pref["control"]) == (
        "il",
        "b",
        1.0,
        0.5,
    )
    # a declared experiment without data: its variants' rows, no users, and its verdict
    later = [(r["variant"], r["users"], r["verdict"]) for r in by if r["experiment"] == "later"]
    assert later == [("x", 0, "running"), ("y", 0, "running")]

    text = format_results(doc).splitlines()
    assert text[0] == "experiments on 2013-03-02"
    # the verdicts come first, one line per experiment in report order
    assert [line.split()[1] for line in text[2:6]] == ["e1", "il", "later", "old"]
    assert "(undeclared)" in text[5]
    assert any(line.strip().startswith("ctr (primary)") for line in text)
    assert any("guardrail error_rate (treatment): measured live" in line for line in text)
    empty = build_report([], D2, 0.05, "x")
    assert format_results(empty) == "experiments on 2013-03-02: none declared, none in the data"

"""Experiments end to end on a real (tiny) lake: hand-made events through the silver and gold
stages (attribution, ``gold/experiment_users``, ``gold/experiment_teams``), then
``attune experiments report``: its JSON, ``gold/experiment_results`` and the exit codes.
Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from attune.experiments.state import Allocation, RunningState
from attune.keys import Keys
from spark.experiments import cmd_report
from spark.job import run_batch
from spark.tables import Lake
from tests.integration.spark.conftest import redis_client
from tests.unit.spark.fixtures import at, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

D1, D2, D3 = date(2013, 3, 1), date(2013, 3, 2), date(2013, 3, 3)

DECLARATIONS = """
experiments:
  - id: exp1
    hypothesis: the treatment's lists get more clicks
    layer: recs
    variants: {control: {weight: 1}, treatment: {weight: 1, ranking: false}}
    primary_metric: ctr
    secondary_metrics: [click_rate]
    guardrails:
      - {metric: dismiss_rate, max_relative_increase: 0.05}
      - {metric: api_latency_p99_ms, max_relative_increase: 0.10}
  - id: il
    hypothesis: ranker b is better
    type: interleaving
    layer: il
    variants: {a: {}, b: {}}
"""


def _events() -> list[Any]:
    def shown(eid: str, user: str, ts: datetime, items: list[Any], rec: str, **kw: Any) -> Any:
        return ev(eid, "impression", user, ts, items, recommendation_id=rec, **kw)

    def act(eid: str, etype: str, user: str, ts: datetime, item: str, rec: str, **kw: Any) -> Any:
        return ev(eid, etype, user, ts, [item], recommendation_id=rec, **kw)

    # (at most 3 events per user and clock minute: the test world's bot limit)
    return [
        # 03-01, before any exposure: c1 2 events, c2 1, t1 3 (the CUPED covariate); the
        # impression of no experiment is the system's, not counted
        ev("p1", "item_view", "c1", at(1, 10), ["i1"]),
        ev("p2", "item_view", "c1", at(1, 10, 1), ["i2"]),
        ev("p3", "item_view", "c2", at(1, 10), ["i1"]),
        ev("p4", "item_view", "t1", at(1, 10), ["i1"]),
        ev("p5", "page_view", "t1", at(1, 10, 1), context={"page": "/"}),
        ev("p6", "item_view", "t1", at(1, 10, 2), ["i3"]),
        shown("p7", "c1", at(1, 11), ["i1"], "none:default:r0"),
        # 03-02: c1 control (mobile): a click at +5 min, another at +45 min (outside the
        # 30-minute window)
        shown("a1", "c1", at(2, 9), ["i1", "i2"], "exp1:control:r1", context={"device": "mobile"}),
        act("a2", "rec_click", "c1", at(2, 9, 5), "i1", "exp1:control:r1"),
        act("a3", "click", "c1", at(2, 9, 45), "i2", "exp1:control:r1"),
        # c2 control: no click, a dismissal
        shown("a4", "c2", at(2, 9), ["i1"], "exp1:control:r2"),
        act("a5", "dismiss", "c2", at(2, 9, 10), "i1", "exp1:control:r2"),
        # t1 treatment (desktop): click, cart, purchase of 12.5
        shown("b1", "t1", at(2, 10), ["i1", "i2"], "exp1:treatment:r3",
              context={"device": "desktop"}),
        act("b2", "rec_click", "t1", at(2, 10, 1), "i1", "exp1:treatment:r3"),
        act("b3", "add_to_cart", "t1", at(2, 10, 2), "i1", "exp1:treatment:r3"),
        ev("b4", "purchase", "t1", at(2, 10, 3), [{"item_id": "i1", "price": 12.5}],
           recommendation_id="exp1:treatment:r3", order_id="o1", revenue=12.5),
        # t2 treatment: click, 30 s dwell, not_interested
        shown("b5", "t2", at(2, 10), ["i3"], "exp1:treatment:r4"),
        act("b6", "rec_click", "t2", at(2, 10, 10), "i3", "exp1:treatment:r4"),
        act("b7", "not_interested", "t2", at(2, 10, 11), "i3", "exp1:treatment:r4"),
        act("b8", "dwell", "t2", at(2, 10, 12), "i3", "exp1:treatment:r4", dwell_ms=30_000),
        # 03-03: c1 again (a dismissal), c3 new (a click at +29:59, inside)
        shown("c1", "c1", at(3, 9), ["i3"], "exp1:control:r5"),
        act("c2", "dismiss", "c1", at(3, 9, 1), "i3", "exp1:control:r5"),
        shown("c3", "c3", at(3, 11), ["i2"], "exp1:control:r6"),
        act("c4", "rec_click", "c3", at(3, 11, 29, 59), "i2", "exp1:control:r6"),
        # t3 new: a click at +31 min (outside); t1 again: a click at +20 min
        shown("d1", "t3", at(3, 11), ["i4"], "exp1:treatment:r7"),
        act("d2", "rec_click", "t3", at(3, 11, 31), "i4", "exp1:treatment:r7"),
        shown("d3", "t1", at(3, 12), ["i2"], "exp1:treatment:r8"),
        act("d4", "rec_click", "t1", at(3, 12, 20), "i2", "exp1:treatment:r8"),
        # an experiment nobody declared
        shown("x1", "u9", at(3, 13), ["i1"], "legacy:A:r9"),
        # interleaving: u7's list merges a and b; the click on i2 credits b
        shown("i1", "u7", at(3, 14),
              [{"item_id": "i1", "team": "a"}, {"item_id": "i2", "team": "b"}],
              "il:interleaved:r10"),
        act("i2", "rec_click", "u7", at(3, 14, 5), "i2", "il:interleaved:r10"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(world: AttuneConfig, tmp_path_factory: Any) -> AttuneConfig:
    var = tmp_path_factory.mktemp("experiments-var")
    decl = Path(var) / "experiments.yaml"
    decl.write_text(DECLARATIONS)
    return world.model_copy(
        update={
            "paths": world.paths.model_copy(update={"var_dir": var}),
            "spark": world.spark.model_copy(
                update={"jars_dir": world.paths.resolve(world.spark.jars_dir)}
            ),
            "experiments": world.experiments.model_copy(update={"file": decl}),
        }
    )


def _start(cfg: AttuneConfig, experiment: str) -> None:
    """Record ``experiment`` as running, as ``attune experiments start`` does."""
    state = RunningState(
        experiment=experiment,
        status="running",
        started_at=datetime(2013, 3, 1, tzinfo=UTC),
        allocation=Allocation("recs", 1.0, (0.0, 1.0), {"control": 1.0, "treatment": 1.0}),
    )
    client = redis_client(cfg)
    try:
        client.hset(
            Keys.from_config(cfg).experiments_state, experiment, json.dumps(state.to_json())
        )
    finally:
        client.close()


def test_attribution_and_report(setup: AttuneConfig, spark: SparkSession, capsys: Any) -> None:
    from pyspark.testing import assertDataFrameEqual

    cfg, lake = setup, Lake.from_config(setup)

    def report(**kw: Any) -> int:
        return cmd_report(cfg, argparse.Namespace(**{"date": None, "json": False, **kw}))

    assert report(date="2013-03-03") == 1  # nothing built yet
    assert "run the nightly batch first: `attune batch run --date 2013-03-03`" in (
        capsys.readouterr().err
    )

    write_bronze(spark, lake.bronze, _events())
    run_batch(cfg, D3, ["silver", "gold"], since=D1, spark=spark, say=lambda _: None)

    users = spark.read.format("delta").load(lake.gold_experiment_users)
    assertDataFrameEqual(
        users.selectExpr(
            "experiment", "variant", "user", "string(exposure_date) AS day",
            "string(first_exposure) AS first", "exposures", "clicks", "carts", "purchases",
            "revenue", "dwell_s", "dismissals", "pre_events", "segment", "device",
        ),
        [
            # c1: 03-02 r1: a2 (+5 min) counts, a3 (+45 min) does not; 03-03 r5: c2 dismissal;
            # before: p1 + p2 (p7 is an impression)
            ("exp1", "control", "c1", "2013-03-02", "2013-03-02 09:00:00", 1, 1, 0, 0, 0.0,
                0.0, 0, 2, None, "mobile"),
            ("exp1", "control", "c1", "2013-03-03", "2013-03-02 09:00:00", 1, 0, 0, 0, 0.0,
                0.0, 1, 2, None, "mobile"),
            # c2: a5 dismissal; p3 before
            ("exp1", "control", "c2", "2013-03-02", "2013-03-02 09:00:00", 1, 0, 0, 0, 0.0,
                0.0, 1, 1, None, None),
            # c3: c4 at +29:59 counts
            ("exp1", "control", "c3", "2013-03-03", "2013-03-03 11:00:00", 1, 1, 0, 0, 0.0,
                0.0, 0, 0, None, None),
            # t1: b2 click, b3 cart, b4 purchase of 12.5; 03-03 r8: d4 click; p4-p6 before
            ("exp1", "treatment", "t1", "2013-03-02", "2013-03-02 10:00:00", 1, 1, 1, 1,
                12.5, 0.0, 0, 3, None, "desktop"),
            ("exp1", "treatment", "t1", "2013-03-03", "2013-03-02 10:00:00", 1, 1, 0, 0, 0.0,
                0.0, 0, 3, None, "desktop"),
            # t2: b6 click, b7 not_interested, b8 dwell 30 s
            ("exp1", "treatment", "t2", "2013-03-02", "2013-03-02 10:00:00", 1, 1, 0, 0, 0.0,
                30.0, 1, 0, None, None),
            # t3: d2 at +31 min does not count
            ("exp1", "treatment", "t3", "2013-03-03", "2013-03-03 11:00:00", 1, 0, 0, 0, 0.0,
                0.0, 0, 0, None, None),
            ("il", "interleaved", "u7", "2013-03-03", "2013-03-03 14:00:00", 1, 1, 0, 0, 0.0,
                0.0, 0, 0, None, None),
            ("legacy", "A", "u9", "2013-03-03", "2013-03-03 13:00:00", 1, 0, 0, 0, 0.0, 0.0,
                0, 0, None, None),
        ],
    )  # fmt: skip
    teams = spark.read.format("delta").load(lake.gold_experiment_teams).collect()
    assert [(r["user"], r["teams"], dict(r["team_clicks"]), r["clicks"]) for r in teams] == [
        ("u7", ["a", "b"], {"a": 0, "b": 1}, 1)
    ]

    _start(cfg, "exp1")
    assert report(date="2013-03-03") == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "experiments on 2013-03-03"
    folder = cfg.paths.resolve(cfg.experiments.reports_dir)
    doc = json.loads((folder / "2013-03-03.json").read_text())
    assert json.loads((folder / "latest.json").read_text()) == doc
    exp1, il, legacy = doc["experiments"]

    assert (exp1["id"], exp1["status"], exp1["declared"], exp1["days"]) == (
        "exp1",
        "running",
        True,
        2,
    )
    # control c1 (2 exposures), c2 (1), c3 (1); treatment t1 (2), t2 (1), t3 (1)
    assert [(v["name"], v["users"], v["exposures"]) for v in exp1["variants"]] == [
        ("control", 3, 4),
        ("treatment", 3, 4),
    ]
    assert exp1["srm"]["p"] == pytest.approx(1.0)  # 3 and 3 at weights 1:1
    m = {x["metric"]: x for x in exp1["metrics"]}
    # ctr: control (1 + 0 + 1) / 4 = 0.5, treatment (2 + 1 + 0) / 4 = 0.75 (raw values;
    # the lift is CUPED-adjusted with pre_events 2, 1, 0 and 3, 0, 0)
    assert (m["ctr"]["control"], m["ctr"]["value"], m["ctr"]["cuped"]) == (0.5, 0.75, True)
    # click_rate: 2 of 3 users on both sides (c1, c3; t1, t2)
    assert m["click_rate"]["control"] == pytest.approx(2 / 3)
    assert m["click_rate"]["value"] == pytest.approx(2 / 3)
    g = {x["metric"]: x for x in exp1["guardrails"]}
    # dismiss_rate: control (1 + 1) / 4 = 0.5 (c1, c2), treatment 1 / 4 = 0.25 (t2)
    assert (g["dismiss_rate"]["control"], g["dismiss_rate"]["value"]) == (0.5, 0.25)
    assert g["dismiss_rate"]["measured"] == "batch" and g["dismiss_rate"]["breached"] is False
    assert g["api_latency_p99_ms"]["measured"] == "live"
    assert g["api_latency_p99_ms"]["breached"] is None
    # a look per day with exposures: 03-02 (c1, c2 / t1, t2), 03-03 (3 and 3)
    assert [(h["date"], h["users"], h["control_users"]) for h in exp1["history"]
            if h["metric"] == "ctr"] == [("2013-03-02", 2, 2), ("2013-03-03", 3, 3)]  # fmt: skip
    # no segment snapshot of 03-01 (the day before the first exposures): by device; the
    # unknown devices: control c2, c3 (1 click / 2 exposures), treatment t2, t3 (1 / 2)
    seg = {s["segment"]: s for s in exp1["segments"]}
    assert {s["dimension"] for s in exp1["segments"]} == {"device"}
    assert (seg["mobile"]["control_users"], seg["mobile"]["users"]) == (1, 0)
    assert (seg["desktop"]["control_users"], seg["desktop"]["users"]) == (0, 1)
    assert (seg["unknown"]["control"], seg["unknown"]["value"]) == (0.5, 0.5)
    assert exp1["verdict"] == "running"  # 3 users an arm are far from the planned sample

    assert il["type"] == "interleaving" and il["interleaving"]["wins"] == {"a": 0, "b": 1}
    assert (il["interleaving"]["impressions"], il["interleaving"]["users"]) == (1, 1)
    # not started in Redis: draft, although it had traffic (the report says so)
    assert il["status"] == "draft"
    assert any("although its recorded status is draft" in n for n in il["notes"])
    assert (legacy["declared"], legacy["status"], legacy["verdict"]) == (
        False,
        "running",
        "running",
    )

    results = spark.read.format("delta").load(lake.gold_experiment_results)
    rows = results.where("experiment = 'exp1' AND metric = 'ctr'").collect()
    assert [
        (r["report_date"], r["role"], r["variant"], r["control"], r["value"]) for r in rows
    ] == [(D3, "primary", "treatment", 0.5, 0.75)]
    n = results.count()
    # a re-run of the date (here: the default, the latest built) replaces its rows
    assert report(json=True) == 0
    assert json.loads(capsys.readouterr().out)["report_date"] == "2013-03-03"
    assert spark.read.format("delta").load(lake.gold_experiment_results).count() == n

    assert report(date="2013-03-04") == 1
    assert "gold has not been built for 2013-03-04 yet" in capsys.readouterr().err

"""``attune experiments report`` on a real (tiny) lake: gold's experiment metrics computed by the
gold stage's own function from hand-made events, then the report's JSON and Delta table."""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from spark.experiments import cmd_report
from spark.gold import TRAINING_SETS_DDL, experiment_metrics
from spark.tables import Lake, write_table
from tests.unit.spark.fixtures import at, bronze_frame, ev

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

D4, D5 = date(2013, 3, 4), date(2013, 3, 5)

EVENTS = [
    # exp1: A on 03-04 (bob: shown 2 items, clicks one) and 03-05 (carol: shown 1);
    # B on 03-04 only (dave: shown 1, buys it for 15)
    ev("a1", "impression", "bob", at(4, 9), ["i1", "i2"], recommendation_id="exp1:A:r1"),
    ev("a2", "rec_click", "bob", at(4, 9, 1), ["i2"], recommendation_id="exp1:A:r1"),
    ev("a3", "impression", "carol", at(5, 9), ["i3"], recommendation_id="exp1:A:r2"),
    ev("b1", "impression", "dave", at(4, 10), ["i4"], recommendation_id="exp1:B:r3"),
    ev(
        "b2",
        "purchase",
        "dave",
        at(4, 10, 5),
        [{"item_id": "i4", "price": 15.0}],
        order_id="o1",
        revenue=15.0,
        recommendation_id="exp1:B:r3",
    ),
    # exp2 ran on 03-03 only; "legacy-id" names no experiment
    ev("x1", "impression", "erin", at(3, 9), ["i1"], recommendation_id="exp2:X:r4"),
    ev("n1", "impression", "erin", at(5, 9), ["i1"], recommendation_id="legacy-id"),
]


@pytest.fixture(scope="module")
def setup(world: AttuneConfig, tmp_path_factory: Any) -> AttuneConfig:
    var = tmp_path_factory.mktemp("experiments-var")
    return world.model_copy(
        update={
            "paths": world.paths.model_copy(update={"var_dir": var}),
            "spark": world.spark.model_copy(
                update={"jars_dir": world.paths.resolve(world.spark.jars_dir)}
            ),
        }
    )


def _built(spark: SparkSession, lake: Lake, day: date) -> None:
    """The gold stage's record of a run over ``day`` (``gold/training_sets``)."""
    row = (day, 1, 1, 1, 1, 1, 0, 0, 0, None, None)
    write_table(
        spark.createDataFrame([row], TRAINING_SETS_DDL),
        lake.gold_training_sets,
        replace_where=f"as_of_date = DATE'{day}'",
    )


def test_report(setup: AttuneConfig, spark: SparkSession, capsys: Any) -> None:
    cfg, lake = setup, Lake.from_config(setup)

    def report(**kw: Any) -> int:
        return cmd_report(cfg, argparse.Namespace(**{"date": None, "json": False, **kw}))

    assert report(date="2013-03-05") == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("run the nightly batch first: `attune batch run --date 2013-03-05`")
    )

    metrics = experiment_metrics(bronze_frame(spark, EVENTS), cfg.batch.recommendation_id_pattern)
    write_table(metrics, lake.gold_experiment_metrics, partition_by="event_date")
    _built(spark, lake, D4)
    assert report(date="2013-03-05") == 1  # metrics, but gold has not run for 03-05
    assert "gold has not been built for 2013-03-05 yet" in capsys.readouterr().err

    _built(spark, lake, D5)
    assert report(date="2013-03-05") == 0
    text = capsys.readouterr().out
    assert "exp1 (since 2013-03-04, day 2)" in text and "exp2" not in text

    path = cfg.paths.resolve("reports/experiments") / "2013-03-05.json"
    doc = json.loads(path.read_text())
    [exp1] = doc["experiments"]
    a, b = exp1["variants"]
    # A on 03-05: carol's impression of 1 item, no click
    assert (a["day"]["impressions"], a["day"]["items_shown"], a["day"]["clicks"]) == (1, 1, 0)
    assert a["day"]["ctr"] == 0.0
    # A since 03-04: 2 impressions (a1, a3), 1 click (a2): CTR 0.5; bob + carol = 2 user-days
    assert (a["cumulative"]["impressions"], a["cumulative"]["clicks"]) == (2, 1)
    assert a["cumulative"]["ctr"] == 0.5 and a["cumulative"]["user_days"] == 2
    # B: nothing on 03-05; since 03-04 one impression and one purchase of 15
    assert b["day"]["impressions"] == 0 and b["day"]["ctr"] is None
    assert (b["cumulative"]["purchases"], b["cumulative"]["revenue"]) == (1, 15.0)
    assert b["cumulative"]["conversion_rate"] == 1.0

    table = spark.read.format("delta").load(lake.gold_experiment_report)
    rows = {
        (r["variant"], r["scope"]): (r["impressions"], r["clicks"], r["ctr"])
        for r in table.collect()
    }
    assert rows == {
        ("A", "day"): (1, 0, 0.0),
        ("A", "cumulative"): (2, 1, 0.5),
        ("B", "day"): (0, 0, None),
        ("B", "cumulative"): (1, 0, 0.0),
    }
    # a re-run (here: the default date, the latest built, 03-05) replaces its rows
    assert report(json=True) == 0
    assert json.loads(capsys.readouterr().out)["report_date"] == "2013-03-05"
    assert table.count() == 4

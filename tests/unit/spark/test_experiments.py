"""The daily per-variant totals of ``gold/experiment_metrics`` (the notebooks' first look)
without Spark, and the CLI's wiring of ``attune experiments report`` (the report itself:
test_experiment_report.py)."""

from __future__ import annotations

from datetime import date

from attune.cli import build_parser
from spark.experiments import (
    DailyMetrics,
    Totals,
    experiment_report,
    format_report,
    total,
)

D4, D5, D6 = date(2013, 3, 4), date(2013, 3, 5), date(2013, 3, 6)

ROWS = [
    DailyMetrics(D4, "exp1", "A", impressions=10, items_shown=30, recommendations=10,
                 clicks=2, add_to_carts=1, purchases=1, revenue=20.0, users=8),
    DailyMetrics(D5, "exp1", "A", impressions=5, items_shown=15, recommendations=5,
                 clicks=1, users=5),
    DailyMetrics(D4, "exp1", "B", impressions=8, items_shown=8, recommendations=8,
                 clicks=4, users=7),  # B had no traffic on 03-05
    DailyMetrics(date(2013, 3, 3), "exp2", "C", impressions=3, users=3),  # ended before 03-05
    DailyMetrics(D5, "none", "none", impressions=9, users=9),  # ids naming no experiment
    DailyMetrics(D6, "exp1", "A", impressions=100, users=50),  # after the report date
]  # fmt: skip


def test_totals_sum_counts_and_compute_rates_from_the_sums() -> None:
    t = total([ROWS[0], ROWS[1]])
    # 10 + 5 impressions, 2 + 1 clicks: CTR 3 / 15 = 0.2; 1 purchase / 15 impressions;
    # users 8 + 5 = 13 user-days over 2 days
    assert t == Totals(days=2, impressions=15, items_shown=45, recommendations=15, clicks=3,
                       add_to_carts=1, purchases=1, revenue=20.0, user_days=13)  # fmt: skip
    assert t.ctr == 0.2 and t.conversion_rate == 1 / 15
    # clicks 2 + 4 over 10 + 8 impressions = 6 / 18 = 1/3 (the mean of the daily CTRs 0.2 and
    # 0.5 would be 0.35)
    assert total([ROWS[0], ROWS[2]]).ctr == 6 / 18
    empty = total([])
    assert empty == Totals() and empty.ctr is None and empty.conversion_rate is None
    assert isinstance(empty.revenue, float)  # the Delta column is a DOUBLE


def test_report_of_the_experiments_running_on_the_date() -> None:
    [exp1] = experiment_report(ROWS, D5)  # exp2 did not run on 03-05; "none" is no experiment
    assert (exp1.experiment, exp1.start_date) == ("exp1", D4)
    a, b = exp1.variants
    assert a.variant == "A"
    assert (a.day.days, a.day.impressions, a.day.clicks, a.day.ctr) == (1, 5, 1, 0.2)
    # since 03-04: 15 impressions, 3 clicks; 03-06's 100 impressions are after the date
    assert (a.cumulative.days, a.cumulative.impressions, a.cumulative.clicks) == (2, 15, 3)
    assert a.cumulative.revenue == 20.0 and a.cumulative.user_days == 13
    assert b.variant == "B"
    assert b.day == Totals() and b.day.ctr is None  # no traffic on the day: zeros
    assert (b.cumulative.impressions, b.cumulative.clicks, b.cumulative.ctr) == (8, 4, 0.5)
    assert experiment_report(ROWS, date(2013, 3, 7)) == []  # nothing on 03-07


def test_counts_as_text() -> None:
    results = experiment_report(ROWS, D5)
    text = format_report(results, D5)
    assert "exp1 (since 2013-03-04, day 2)" in text
    lines = text.splitlines()
    day_a = next(line for line in lines if line.strip().startswith("A "))
    # A on 03-05: 5 impressions, 1 click, CTR 20.00%, conversion 0 / 5 = 0.00%
    assert day_a.split() == ["A", "5", "1", "20.00%", "0", "0", "0.00%", "0.00", "5"]
    day_b = next(line for line in lines if line.strip().startswith("B "))
    assert day_b.split() == ["B", "0", "0", "-", "0", "0", "-", "0.00", "0"]
    assert format_report([], D5) == "experiments on 2013-03-05: none had traffic that day"


def test_cli_wires_experiments_report() -> None:
    args = build_parser().parse_args(["experiments", "report", "--date", "2013-03-05"])
    assert (args.date, args.json) == ("2013-03-05", False)
    assert build_parser().parse_args(["experiments", "report", "--json"]).date is None

"""A small lake for the notebooks: hand-made events through the real nightly batch.

The events (below) go to bronze the way the speed layer writes them
(:func:`tests.unit.spark.fixtures.write_bronze`), the catalog to its Kafka topic, and
``attune batch run --date 2013-03-05 --from 2013-03-01 --stage silver --stage gold``
(:func:`spark.job.run_batch`) builds silver and gold from them, experiment metrics included.
The config the notebooks get is written to a YAML file, as a person would hand one to them.

What the data holds, by construction (the tests check the notebooks show it):

* item views with a harmonic long tail: item ``i<j>`` (j = 1..20) is viewed by the users
  ``u00 .. u<30 // j - 1>``, so i1 by 30 users, i2 by 15, i3 by 10, ..., i16..i20 by 1
  (101 views), and user ``u00`` views all 20 items while ``u29`` views only i1;
* an experiment ``recs`` over 4 days (2013-03-02..05): every day users u00..u39 see one
  recommendation each, even users from variant ``control`` and odd users from ``ranked``
  (20 impressions per variant per day, 80 over the 4 days); the first CONTROL_CLICKS[d]
  control users and RANKED_CLICKS[d] ranked users of day d click on it:
  control 3 + 5 + 4 + 4 = 16 clicks (CTR 16 / 80 = 0.2), ranked 6 + 7 + 5 + 6 = 24 (0.3);
* a few ratings and purchases, so several event types show.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig, write_config
from tests.integration.spark.conftest import (
    create_topic,
    delete_topic,
    isolated_config,
    publish,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from attune.events import StoredEvent

RUN_DATE = date(2013, 3, 5)
SINCE = date(2013, 3, 1)
DAYS = [date(2013, 3, d) for d in (2, 3, 4, 5)]
ITEMS = 20
VIEWERS = 30
USERS = 40
CONTROL_CLICKS = {DAYS[0]: 3, DAYS[1]: 5, DAYS[2]: 4, DAYS[3]: 4}
RANKED_CLICKS = {DAYS[0]: 6, DAYS[1]: 7, DAYS[2]: 5, DAYS[3]: 6}
GENRES = ["Drama", "Comedy", "Action", "Horror", "Animation"]


def _at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def small_world_events() -> list[StoredEvent]:
    """The events described in the module docstring."""
    from tests.unit.spark.fixtures import ev

    events = []
    # item views: item j by users 0 .. 30 // j - 1, spread over the 4 days, one per minute
    for j in range(1, ITEMS + 1):
        for u in range(VIEWERS // j):
            day = DAYS[(u + j) % len(DAYS)]
            events.append(
                ev(f"v{j:02d}-{u:02d}", "item_view", f"u{u:02d}", _at(day, 8, 2 * j), [f"i{j}"])
            )
    # the experiment: one impression per user and day, clicks by the first users of a variant
    for day in DAYS:
        clicks = {"control": CONTROL_CLICKS[day], "ranked": RANKED_CLICKS[day]}
        for u in range(USERS):
            variant = "control" if u % 2 == 0 else "ranked"
            rec = f"recs:{variant}:{day:%d}-{u:02d}"
            shown: list[dict[str, Any]] = [{"item_id": f"i{u % 5 + 1}", "position": 0},
                     {"item_id": f"i{u % 5 + 6}", "position": 1}]  # fmt: skip
            events.append(
                ev(f"m{day:%d}-{u:02d}", "impression", f"u{u:02d}", _at(day, 14, u), shown,
                   recommendation_id=rec)
            )  # fmt: skip
            if u // 2 < clicks[variant]:  # the variant's first users (u // 2 = 0, 1, ...)
                events.append(
                    ev(f"c{day:%d}-{u:02d}", "rec_click", f"u{u:02d}", _at(day, 14, u, 30),
                       [shown[0]["item_id"]], recommendation_id=rec)
                )  # fmt: skip
    # ratings and purchases on the last day
    for u in range(0, VIEWERS, 3):
        events.append(
            ev(f"r{u:02d}", "rating", f"u{u:02d}", _at(DAYS[-1], 18, u), ["i2"], rating=u % 10)
        )
    for u in range(0, VIEWERS, 5):
        events.append(
            ev(f"p{u:02d}", "purchase", f"u{u:02d}", _at(DAYS[-1], 19, u),
               [{"item_id": "i1", "price": 9.0}], order_id=f"o{u:02d}", revenue=9.0)
        )  # fmt: skip
    return events


def catalog() -> list[tuple[str, dict[str, Any] | None]]:
    return [
        (
            f"i{j}",
            {
                "item_id": f"i{j}",
                "title": f"Film {j}",
                "year": 1990 + j,
                "genres": [GENRES[j % len(GENRES)]],
            },
        )
        for j in range(1, ITEMS + 1)
    ]


@dataclass(frozen=True)
class SmallLake:
    cfg: AttuneConfig
    config_file: Path
    """The config as YAML, for the notebook's ``CONFIG`` parameter."""


@pytest.fixture(scope="package")
def small_lake(
    cfg: AttuneConfig, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SmallLake]:
    """Bronze, silver and gold of :func:`small_world_events` in a lake of its own."""
    from spark.job import run_batch
    from spark.tables import Lake
    from tests.conftest import require_stack
    from tests.unit.spark.fixtures import write_bronze

    require_stack(cfg)
    run = uuid.uuid4().hex[:10]
    root = tmp_path_factory.mktemp("notebook-lake")
    world = isolated_config(cfg, root, run)
    # the default bot limits: no user here comes near them (isolated_config lowers them)
    world = world.model_copy(
        update={"batch": world.batch.model_copy(update={"bots": cfg.batch.bots})}
    )
    topic = world.kafka.topic("catalog").name
    create_topic(world, topic)
    try:
        publish(world, catalog())
        write_bronze(spark, Lake.from_config(world).bronze, small_world_events())
        run_batch(world, RUN_DATE, ["silver", "gold"], since=SINCE, spark=spark)
        yield SmallLake(world, write_config(world, root / "attune.yaml"))
    finally:
        delete_topic(world, topic)

"""The nightly run end to end: real Kafka (catalog topic), Redis, Spark and Delta.

One small world of hand-made events (below) goes through every stage for the logical date
2013-03-05; the expected tables are worked out by hand in the comments. Later tests build on the
earlier runs (re-run, then late data + erasure, then maintenance), so they run in file order.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from attune.keys import Keys
from attune.online_store import OnlineStore
from attune.secrets import Pseudonymizer, profile_key, pseudonym_key
from spark.erasure import ErasureRequest, record_requests
from spark.job import run_batch
from spark.quality import DataQualityError
from spark.tables import Lake
from tests.integration.spark.conftest import publish, redis_client
from tests.unit.spark.fixtures import NO_PERSONALIZATION, at, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# a few Spark runs each; generous timeouts for a loaded 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

DAY = date(2013, 3, 5)
SINCE = date(2013, 3, 1)


def _events(alice: str, anon: str) -> list[Any]:
    return [
        ev("e00", "item_view", "dave", at(20, month=2), ["i2"]),  # before --from: bronze only
        ev("e01", "item_view", alice, at(1, 10), ["i1"], session_id="sa"),
        ev("e02", "page_view", None, at(3, 9), anonymous=anon, context={"page": "/"}),
        ev("e03", "item_view", None, at(3, 9, 1), ["i2"], anonymous=anon),
        ev("e04", "identify", alice, at(3, 9, 5), anonymous=anon),
        ev("e05", "add_to_cart", alice, at(3, 9, 6), ["i2"]),
        ev(
            "e06",
            "purchase",
            alice,
            at(3, 9, 7),
            [{"item_id": "i2", "price": 20.0}],
            order_id="o1",
            revenue=20.0,
        ),
        ev("e07", "item_view", "bob", at(3, 11), ["i1"], session_id="sb"),
        ev("e08", "item_view", "bob", at(3, 11, 1), ["i2"], session_id="sb"),
        ev(
            "e08", "item_view", "bob", at(3, 11, 1), ["i2"], session_id="sb", received=at(3, 11, 40)
        ),
        ev("e09", "item_view", "bob", at(3, 11, 2), ["i3"], session_id="sb"),
        *[ev(f"b{s}", "item_view", "bot-1", at(3, 12, 0, s), ["i1"]) for s in range(4)],
        ev(
            "e10",
            "item_view",
            "carol",
            at(4, 10),
            ["i1"],
            session_id="sc",
            context={"device": "mobile", "placement": "home"},
        ),
        ev("e11", "item_view", "carol", at(4, 10, 1), ["i2"], session_id="sc"),
        ev("e12", "profile_update", "carol", at(4, 10, 2), traits={"city": "Lyon"}),
        ev("e13", "profile_update", "carol", at(4, 10, 3), traits={"city": "Paris", "plan": "pro"}),
        ev("e20", "item_view", "erin", at(4, 10), ["i1"]),
        ev(
            "e14",
            "impression",
            "bob",
            at(5, 9),
            [{"item_id": "i3", "position": 0}, {"item_id": "i4", "position": 1}],
            recommendation_id="exp1:A:r1",
        ),
        ev("e15", "rec_click", "bob", at(5, 9, 1), ["i4"], recommendation_id="exp1:A:r1"),
        ev("e16", "impression", "carol", at(5, 9), ["i3"], recommendation_id="exp1:B:r2"),
        ev(
            "e17",
            "purchase",
            "carol",
            at(5, 9, 5),
            [{"item_id": "i3", "price": 15.0}],
            order_id="o2",
            revenue=15.0,
            recommendation_id="exp1:B:r2",
        ),
        ev("e18", "rating", "dave", at(5, 9), ["i1"], rating=8.0),
        ev("e21", "consent_update", "erin", at(5, 9), consent=NO_PERSONALIZATION),
    ]


CATALOG: list[tuple[str, dict[str, Any] | None]] = [
    ("i1", {"item_id": "i1", "title": "Heat", "year": 1995, "genres": ["Crime", "Drama"]}),
    ("i2", {"item_id": "i2", "title": "Up", "year": 2009, "genres": ["Animation"]}),
    ("i3", {"item_id": "i3", "title": "Alien", "year": 1979, "genres": ["Horror", "Sci-Fi"]}),
    ("i4", {"item_id": "i4", "title": "Old title"}),
    ("i4", {"item_id": "i4", "title": "Aliens", "year": 1986, "genres": ["Sci-Fi"], "price": 9.99}),
    ("i9", {"item_id": "i9", "title": "Withdrawn", "genres": ["Drama"]}),
    ("i9", None),
]


class World:
    def __init__(self, cfg: AttuneConfig, spark: SparkSession) -> None:
        self.cfg = cfg
        self.spark = spark
        self.lake = Lake.from_config(cfg)
        pseudonymize = Pseudonymizer(pseudonym_key(cfg))
        self.alice, self.anon = pseudonymize("alice"), pseudonymize("anon-1")

    def run(self, stages: list[str] | None = None, cfg: AttuneConfig | None = None) -> Any:
        return run_batch(cfg or self.cfg, DAY, stages, since=SINCE, spark=self.spark)

    def table(self, name: str) -> Any:
        return self.spark.read.format("delta").load(getattr(self.lake, name))

    def snapshot(self) -> dict[str, list[Any]]:
        """Every batch table's rows (sorted), and the batch views in Redis."""
        from delta.tables import DeltaTable

        out: dict[str, list[Any]] = {}
        for name, path in self.lake.tables().items():
            if name in ("bronze", "quarantine", "quality_drift"):
                continue  # drift compares with Redis, which the first run itself corrected
            if not DeltaTable.isDeltaTable(self.spark, path):
                continue
            df = self.spark.read.format("delta").load(path)
            # a re-run writes new versions of the same content: compare the content
            df = df.drop(*[c for c in df.columns if c.endswith("_version")])
            out[name] = sorted(map(repr, df.collect()))
        client = redis_client(self.cfg)
        try:
            prefix = self.cfg.speed.online_store.key_prefix
            for key in sorted(client.scan_iter(match=f"{prefix}:*", count=1000)):
                k = key.decode()
                if k.endswith((":recs", ":similar", ":bought_with", ":popular")):
                    out[k] = client.zrange(key, 0, -1, withscores=True)
                elif k.endswith((":batch", ":views")):
                    out[k] = sorted(client.hgetall(key).items())
        finally:
            client.close()
        return out


@pytest.fixture(scope="module")
def first_run(world: AttuneConfig, spark: SparkSession) -> World:
    cooc = world.batch.cooccurrence.model_copy(update={"user_knn": True})
    batch = world.batch.model_copy(update={"cooccurrence": cooc})
    w = World(world.model_copy(update={"batch": batch}), spark)
    publish(world, CATALOG)
    write_bronze(spark, w.lake.bronze, _events(w.alice, w.anon))
    w.report = w.run(["silver", "gold", "views"])  # type: ignore[attr-defined]
    return w


def test_first_run_writes_every_stage(first_run: World) -> None:
    from pyspark.sql import Row
    from pyspark.testing import assertDataFrameEqual

    w = first_run
    a, n = w.alice, w.anon
    # silver: everything from 03-01 on, minus e08's retry and bot-1's 4 events in one minute
    # (limit 3); e00 (02-20) is before --from
    assertDataFrameEqual(
        w.table("silver_events").select("event_id"),
        [(f"e{i:02d}",) for i in [*range(1, 19), 20, 21]],
    )
    assertDataFrameEqual(
        w.table("silver_bot_days"),
        [Row(user="bot-1", event_date=at(3).date(), events=4, peak_per_minute=4,
             reason="4 events in one minute > 3")],
    )  # fmt: skip
    # items: i4's update wins, i9 was deleted by its tombstone
    assertDataFrameEqual(
        w.table("silver_items"),
        [
            Row(item_id="i1", title="Heat", year=1995, genres=["Crime", "Drama"], price=None,
                tags=[]),
            Row(item_id="i2", title="Up", year=2009, genres=["Animation"], price=None, tags=[]),
            Row(item_id="i3", title="Alien", year=1979, genres=["Horror", "Sci-Fi"], price=None,
                tags=[]),
            Row(item_id="i4", title="Aliens", year=1986, genres=["Sci-Fi"], price=9.99, tags=[]),
        ],
    )  # fmt: skip
    from spark.silver import decrypt_traits

    users = w.table("silver_users")
    assertDataFrameEqual(
        users.select("user", "is_anonymous", "anonymous_ids", "events", "purchases"),
        [
            (a, False, [n], 4, 1),  # e01, e04, e05, e06
            (n, True, [], 2, 0),  # e02, e03 (before logging in)
            ("bob", False, [], 5, 0),  # e07, e08, e09, e14, e15
            ("carol", False, [], 6, 1),  # e10-e13, e16, e17
            ("dave", False, [], 1, 0),  # e18 (e00 is not in silver)
            ("erin", False, [], 2, 0),  # e20, e21
        ],
    )
    traits = {r["user"]: r["traits"] for r in decrypt_traits(users, profile_key(w.cfg)).collect()}
    assert traits["carol"] == {"city": "Paris", "plan": "pro"}  # e13 overrides e12's city

    # training examples: 15 interactions with items; erin's e20 precedes her withdrawal (e21)
    assertDataFrameEqual(
        w.table("gold_training_examples").select(
            "user_id", "item_id", "event_type", "user_event_index", "position", "segment"
        ),
        [
            (a, "i1", "item_view", 1, None, None),
            (a, "i2", "add_to_cart", 2, None, None),
            (a, "i2", "purchase", 3, None, None),
            (n, "i2", "item_view", 1, None, None),
            ("bob", "i1", "item_view", 1, None, None),
            ("bob", "i2", "item_view", 2, None, None),
            ("bob", "i3", "item_view", 3, None, None),
            ("bob", "i3", "impression", 4, 0, None),
            ("bob", "i4", "impression", 5, 1, None),
            ("bob", "i4", "rec_click", 6, None, None),
            ("carol", "i1", "item_view", 1, None, None),
            ("carol", "i2", "item_view", 2, None, None),
            ("carol", "i3", "impression", 3, None, None),  # shown without a position
            ("carol", "i3", "purchase", 4, None, None),
            ("dave", "i1", "rating", 1, None, None),
        ],
    )
    # sessions with 2+ items: sb {i1, i2, i3}, sc {i1, i2}: only i1-i2 is seen twice;
    # support i1 2, i2 2 -> cosine 2 / 2 = 1; no user bought two items.
    # kind user (engaged items per user, 2+): alice {i1, i2}, bob {i1, i2, i3, i4}, carol
    # {i1, i2, i3}; support i1 3, i2 3, i3 2, i4 1; pairs seen by 2+ users: i1-i2 3, i1-i3 2,
    # i2-i3 2; score n_ab / (sqrt(n_a n_b) + 200): 3 / (3 + 200), 2 / (sqrt(6) + 200);
    # i3's tie between i1 and i2 goes to the smaller id
    s12, s13 = 3 / 203, 2 / (6**0.5 + 200)
    assertDataFrameEqual(
        w.table("gold_item_cooccurrence").select(
            "kind", "item_id", "rank", "other_item_id", "count", "score"
        ),
        [
            ("session", "i1", 1, "i2", 2, 1.0),
            ("session", "i2", 1, "i1", 2, 1.0),
            ("user", "i1", 1, "i2", 3, s12),
            ("user", "i1", 2, "i3", 2, s13),
            ("user", "i2", 1, "i1", 3, s12),
            ("user", "i2", 2, "i3", 2, s13),
            ("user", "i3", 1, "i1", 2, s13),
            ("user", "i3", 2, "i2", 2, s13),
        ],
    )
    # every user was first seen within 7 days of 03-05 and nobody bought twice: all "new";
    # erin withdrew consent after her only interaction: no segment, no features
    assertDataFrameEqual(
        w.table("gold_user_segments").select("user", "segment"),
        [(a, "new"), (n, "new"), ("bob", "new"), ("carol", "new"), ("dave", "new")],
    )
    assert sorted(r[0] for r in w.table("gold_user_features").select("user").collect()) == sorted(
        [a, n, "bob", "carol", "dave"]
    )
    d5 = DAY
    assertDataFrameEqual(
        w.table("gold_experiment_metrics").drop("items_shown", "recommendations"),
        [
            Row(event_date=d5, experiment="exp1", variant="A", impressions=1, clicks=1,
                add_to_carts=0, purchases=0, revenue=0.0, users=1, ctr=1.0, conversion_rate=0.0),
            Row(event_date=d5, experiment="exp1", variant="B", impressions=1, clicks=0,
                add_to_carts=0, purchases=1, revenue=15.0, users=1, ctr=0.0, conversion_rate=1.0),
        ],
    )  # fmt: skip
    # the training set records what it read and what it was written as
    ts = w.table("gold_training_sets").collect()
    te_version = int(
        w.spark.sql(f"DESCRIBE HISTORY delta.`{w.lake.gold_training_examples}`").first()["version"]
    )
    assert [(r["as_of_date"], r["rows"], r["training_examples_version"]) for r in ts] == [
        (DAY, 15, te_version)
    ]
    silver_v = ts[0]["silver_events_version"]
    assert (
        w.spark.read.format("delta")
        .option("versionAsOf", silver_v)
        .load(w.lake.silver_events)
        .count()
        == 20
    )

    # views: P(anon) has seen i2 -> neighbour i1; dave has seen i1 -> i2; the others have seen
    # both neighbours
    client = redis_client(w.cfg)
    keys = Keys.from_config(w.cfg)
    try:
        assert client.zrange(keys.user_recs(n), 0, -1, withscores=True) == [(b"i1", 1.0)]
        assert client.zrange(keys.user_recs("dave"), 0, -1, withscores=True) == [(b"i2", 1.0)]
        assert not client.exists(keys.user_recs("bob"))
        assert client.hgetall(keys.user_batch("dave")) == {
            b"as_of": b"2013-03-05",
            b"segment": b"new",
        }
        assert client.zrange(keys.item_similar("i1"), 0, -1) == [b"i2"]
        # a zset orders equal scores by member: read best first, i2 comes before i1
        assert client.zrevrange(keys.item_knn("i3"), 0, -1, withscores=True) == [
            (b"i2", pytest.approx(s13)),
            (b"i1", pytest.approx(s13)),
        ]
        # popular for "new" in the 30 days: engagements i1 (e01, e07, e10), i2 (e03, e05, e06,
        # e08, e11), i3 (e09, e17), i4 (e15); erin (e20) has no segment any more
        popular = client.zrevrange(keys.segment_popular("new"), 0, -1, withscores=True)
        assert popular == [(b"i2", 5.0), (b"i1", 3.0), (b"i3", 2.0), (b"i4", 1.0)]
        # the correction applied the late window (03-03..03-05) through the write script
        store = OnlineStore.from_config(w.cfg)
        assert client.zrevrange(store.keys.user_key("bob", "recent"), 0, -1) == [
            b"i4", b"i3", b"i2", b"i1"
        ]  # fmt: skip
    finally:
        client.close()
    report = w.report.as_dict()["stages"]  # type: ignore[attr-defined]
    assert report["views"]["drift"]["status:missing"]["users"] == 5  # Redis was empty


def test_rerun_gives_the_same_tables_and_views(first_run: World) -> None:
    before = first_run.snapshot()
    first_run.run(["silver", "gold", "views"])
    after = first_run.snapshot()
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} changed on re-run"


@pytest.fixture(scope="module")
def late_and_erased(first_run: World) -> World:
    """A late event arrives and alice asks to be erased; then the date is run again."""
    w = first_run
    late = ev("e30", "item_view", "dave", at(4, 15), ["i3"], received=at(5, 20))
    write_bronze(w.spark, w.lake.bronze, [late], first_offset=100)
    requested = datetime(2013, 3, 6, tzinfo=UTC)
    record_requests(w.spark, w.lake, [ErasureRequest("req-1", w.alice, "user", requested)])
    w.report = w.run(["silver", "gold", "views"])  # type: ignore[attr-defined]
    return w


def test_late_event_is_merged_into_its_own_date(late_and_erased: World) -> None:
    from pyspark.sql import functions as F

    w = late_and_erased
    on_the_4th = w.table("silver_events").where(F.col("event_date") == F.lit(date(2013, 3, 4)))
    assert sorted(r[0] for r in on_the_4th.select("event_id").collect()) == [
        "e10", "e11", "e12", "e13", "e20", "e30"
    ]  # fmt: skip
    # dave's history now has the late view of i3 before his rating of i1
    dave = w.table("gold_training_examples").where("user_id = 'dave'").orderBy("user_event_index")
    assert [(r["item_id"], r["event_type"]) for r in dave.collect()] == [
        ("i3", "item_view"),
        ("i1", "rating"),
    ]


def test_erasure_leaves_no_row_of_the_user_anywhere(late_and_erased: World) -> None:
    from pyspark.sql import functions as F

    w = late_and_erased
    gone = [w.alice, w.anon]  # anon-1 is linked to alice by her identify event (e04)
    user_columns = {
        "bronze": ["user_id", "anonymous_id"],
        "silver_events": ["user_id", "anonymous_id"],
        "silver_users": ["user"],
        "silver_bot_days": ["user"],
        "gold_user_features": ["user"],
        "gold_user_segments": ["user"],
        "gold_training_examples": ["user_id"],
    }
    for name, columns in user_columns.items():
        df = w.table(name)
        hit = F.lit(False)
        for c in columns:
            hit = hit | F.col(c).isin(gone)
        assert df.where(hit).count() == 0, f"{name} still has rows of the erased user"
    assert w.table("silver_users").where(F.array_contains("anonymous_ids", w.anon)).count() == 0
    # what was erased where, per pseudonym: alice e01, e04, e05, e06; anon-1 e02, e03, e04
    log = {
        (r["pseudonym"], r["table_name"]): r["rows_deleted"]
        for r in w.table("erasure_log").collect()
    }
    assert log[(w.alice, "bronze")] == 4 and log[(w.anon, "bronze")] == 3
    assert log[(w.alice, "silver_events")] == 4 and log[(w.anon, "silver_events")] == 3
    assert log[(w.alice, "gold_training_examples")] == 3  # e01, e05, e06
    requests = {(r["pseudonym"], r["id_kind"]) for r in w.table("erasure_requests").collect()}
    assert requests == {(w.alice, "user"), (w.anon, "linked")}
    client = redis_client(w.cfg)
    store = OnlineStore.from_config(w.cfg)
    try:
        for p in gone:
            assert client.exists(*store.keys.user_keys(p)) == 0
            assert list(client.scan_iter(match=store.keys.user_glob(p))) == []
    finally:
        client.close()


def test_maintenance_applies_retention_and_makes_deletions_physical(
    late_and_erased: World,
) -> None:
    from pyspark.sql import functions as F

    w = late_and_erased
    b = w.cfg.batch
    # 10 days before 03-05 is 02-23: e00 (02-20) is past retention
    cfg = w.cfg.model_copy(
        update={
            "batch": b.model_copy(
                update={
                    "maintenance": b.maintenance.model_copy(
                        update={"event_retention": timedelta(days=10)}
                    )
                }
            )
        }
    )
    report = w.run(["maintenance"], cfg=cfg).as_dict()["stages"]["maintenance"]
    assert report["retention"]["deleted"] == {"bronze": 1}
    assert w.table("bronze").where(F.col("event_id") == "e00").count() == 0
    # VACUUM (retention 0 h here) removed the files of older versions: no parquet file left
    # under the lake holds a row of the erased user, not even for time travel
    for name in ("bronze", "silver_events", "gold_training_examples"):
        files = w.spark.read.option("recursiveFileLookup", "true").parquet(getattr(w.lake, name))
        leftover = files.where(F.col("user_id").isin(w.alice, w.anon))
        assert leftover.count() == 0, f"{name} files still hold the erased user's rows"


def test_failed_quality_check_stops_the_run(
    world: AttuneConfig, spark: SparkSession, tmp_path: Any
) -> None:
    from pyspark.sql import functions as F

    cfg = world.model_copy(
        update={"lake": world.lake.model_copy(update={"root": str(tmp_path / "lake")})}
    )
    lake = Lake.from_config(cfg)
    # 10 events on 03-05, 3 of them repeated: 13 rows, 3 / 13 = 23.08 % > 5 %
    events = [ev(f"q{i}", "item_view", "u", at(5, 10, i), ["i1"]) for i in range(10)]
    repeats = [e.model_copy(update={"received_at": at(5, 18)}) for e in events[:3]]
    write_bronze(spark, lake.bronze, events + repeats)
    with pytest.raises(DataQualityError) as err:
        run_batch(cfg, DAY, spark=spark)
    message = str(err.value)
    assert "'duplicate_rate' failed on " + lake.bronze in message
    assert "3 of 13 rows = 23.08%, above the limit of 5.00% by 18.08% points" in message
    from delta.tables import DeltaTable

    assert not DeltaTable.isDeltaTable(spark, lake.silver_events)  # stopped before silver
    report = spark.read.format("delta").load(lake.quality_report)
    failed = report.where(~F.col("passed")).select("check", "table_name").collect()
    assert [tuple(r) for r in failed] == [("duplicate_rate", lake.bronze)]

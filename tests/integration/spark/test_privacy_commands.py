"""``attune privacy apply | vacuum | verify`` on a real (tiny) lake: Spark, Delta and Redis.

The lake holds bronze (hand-made events, written as the stream writes them) and two gold
tables with user rows, cut down to the columns the erasure reads; the other erasable tables do
not exist and are skipped. The world's VACUUM retention is 0, so an erasure can be vacuumed at
once. The tests build on each other (apply, then vacuum, then verify), in file order.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attune.config import AttuneConfig
from attune.keys import Keys
from attune.secrets import Pseudonymizer, pseudonym_key
from spark.erasure import ErasureRequest, record_requests
from spark.privacy import LEFTOVER, cmd_apply, cmd_vacuum, cmd_verify
from spark.tables import Lake, table_version
from tests.integration.spark.conftest import redis_client
from tests.unit.spark.fixtures import at, ev, write_bronze

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REQUESTED = datetime(2013, 3, 2, tzinfo=UTC)


class Lakeside:
    def __init__(self, cfg: AttuneConfig, spark: SparkSession) -> None:
        self.cfg, self.spark, self.lake = cfg, spark, Lake.from_config(cfg)
        pseudonymize = Pseudonymizer(pseudonym_key(cfg))
        self.alice, self.anon = pseudonymize("alice"), pseudonymize("anon-1")

    def table(self, name: str) -> Any:
        return self.spark.read.format("delta").load(getattr(self.lake, name))

    def ids(self, name: str, column: str = "event_id") -> list[str]:
        return sorted(r[0] for r in self.table(name).select(column).collect())


@pytest.fixture(scope="module")
def side(world: AttuneConfig, spark: SparkSession, tmp_path_factory: Any) -> Lakeside:
    # reports under a var dir of this test (the jars stay the stack's)
    var = tmp_path_factory.mktemp("privacy-var")
    cfg = world.model_copy(
        update={
            "paths": world.paths.model_copy(update={"var_dir": var}),
            "spark": world.spark.model_copy(
                update={"jars_dir": world.paths.resolve(world.spark.jars_dir)}
            ),
        }
    )
    s = Lakeside(cfg, spark)
    a, n = s.alice, s.anon
    write_bronze(
        spark,
        s.lake.bronze,
        [
            ev("e1", "item_view", None, at(1, 9), ["i1"], anonymous=n),  # before logging in
            ev("e2", "identify", a, at(1, 10), anonymous=n),  # links anon-1 to alice
            ev("e3", "item_view", a, at(1, 11), ["i2"]),
            ev("e4", "item_view", "bob", at(1, 12), ["i1"]),
            # alice comes back after her request (03-02): new data, kept
            ev("e5", "item_view", a, at(3, 9), ["i3"]),
        ],
    )
    spark.createDataFrame(
        [(a, "i2", at(1, 11), at(1).date()), ("bob", "i1", at(1, 12), at(1).date())],
        "user_id STRING, item_id STRING, timestamp TIMESTAMP, event_date DATE",
    ).write.format("delta").save(s.lake.gold_training_examples)
    spark.createDataFrame(
        [(a, int(at(1, 10).timestamp() * 1000)), ("bob", int(at(1, 12).timestamp() * 1000))],
        "user STRING, first_ms BIGINT",
    ).write.format("delta").save(s.lake.gold_user_features)
    record_requests(spark, s.lake, [ErasureRequest("req-1", a, "user", REQUESTED)])
    return s


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_apply_erases_everywhere_now_and_is_idempotent(
    side: Lakeside, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_client(side.cfg)
    keys = Keys.from_config(side.cfg)
    client.set(keys.user_key(side.anon, "consent"), b"{}")  # the linked id's Redis key
    try:
        code = cmd_apply(side.cfg, argparse.Namespace(date="2013-03-02", json=True))
        assert code == 0
        result = _json(capsys)
        # alice's request, plus anon-1 found linked to her by e2
        assert result["as_of"] == "2013-03-02" and result["requests"] == 2
        assert result["redis_keys"] == 1 and not client.exists(keys.user_key(side.anon, "consent"))
    finally:
        client.close()
    # bronze: e1 (anon), e2 (both), e3 (alice) gone; bob's e4 and alice's later e5 stay
    assert side.ids("bronze") == ["e4", "e5"]
    assert side.ids("gold_training_examples", "user_id") == ["bob"]
    assert side.ids("gold_user_features", "user") == ["bob"]
    requests = {(r["pseudonym"], r["id_kind"]) for r in side.table("erasure_requests").collect()}
    assert requests == {(side.alice, "user"), (side.anon, "linked")}

    bronze_version = table_version(side.spark, side.lake.bronze)
    assert cmd_apply(side.cfg, argparse.Namespace(date="2013-03-02", json=False)) == 0
    out = capsys.readouterr().out
    assert "2 pseudonym(s) applied, 0 row(s) deleted" in out
    # nothing matched the second time: no new commit on bronze
    assert table_version(side.spark, side.lake.bronze) == bronze_version


def test_vacuum_when_due_makes_the_erasure_physical(
    side: Lakeside, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyspark.sql import functions as F

    assert cmd_vacuum(side.cfg, argparse.Namespace(json=True)) == 0
    report = _json(capsys)
    # retention 0: the three tables the erasure deleted from are due at once
    assert sorted(report["vacuumed"]) == ["bronze", "gold_training_examples", "gold_user_features"]
    assert report["tables"]["bronze"]["reason"].startswith("1 row-deleting commit(s)")
    for name in ("bronze", "gold_training_examples"):
        files = side.spark.read.option("recursiveFileLookup", "true").parquet(
            getattr(side.lake, name)
        )
        gone = F.col("user_id").isin(side.alice, side.anon)
        if name == "bronze":
            gone = (gone | F.col("anonymous_id").isin(side.anon)) & (F.col("event_id") != "e5")
        assert files.where(gone).count() == 0, f"{name}'s files still hold erased rows"
    # the VACUUM covered the erasure: nothing due any more
    assert cmd_vacuum(side.cfg, argparse.Namespace(json=False)) == 0
    assert "nothing due (3 table(s) checked)" in capsys.readouterr().out


def test_verify_passes_then_names_what_was_left(
    side: Lakeside, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis_client(side.cfg)
    keys = Keys.from_config(side.cfg)
    try:
        # alice came back (e5, after her request): the speed layer keeps her new features
        client.zadd(keys.user_key(side.alice, "recent"), {"i3": 1.0})
        assert cmd_verify(side.cfg, argparse.Namespace(json=True)) == 0
        report = _json(capsys)
        assert report["ok"] and report["requests_applied"] == 1 and report["pseudonyms"] == 2
        assert report["tables"]["bronze"] == {"exists": True, "rows_left": 0, "requests": []}
        assert report["tables"]["silver_events"] == {"exists": False}
        assert report["redis"]["came_back_users"] == 1 and report["redis"]["keys_left"] == 0
        assert Path(report["report"]).parent == side.cfg.paths.resolve("reports/privacy")
        # every store, with its state and the time by which it is clean
        stores = {r["store"]: r for r in report["stores"]}
        assert [n for n in stores if n.startswith("delta/")] == [
            f"delta/{n}" for n in LEFTOVER if not n.startswith("gold_experiment_")
        ]
        assert stores["delta/bronze"]["state"] == "clean"  # applied and vacuumed (retention 0)
        assert stores["delta/silver_events"]["reason"] == "no table"
        assert stores["experiments/gold_experiment_users"]["state"] == "clean"
        assert stores["redis/user keys"]["state"] == "clean"
        # apply marked alice and anon-1 erased for privacy.erased_model_block (30 d)
        marker = stores["redis/erased markers"]
        assert marker["state"] == "pending" and marker["blocking"] is False
        until = datetime.fromisoformat(marker["clean_by"])
        block = side.cfg.privacy.erased_model_block
        assert block - timedelta(minutes=10) < until - datetime.now(UTC) <= block
        assert stores["models/repository"]["reason"] == "no published model"
        # requested in 2013: long past any retention (no such topic in this world either)
        assert stores["kafka/events"]["state"] == "clean"
        assert stores["kafka/dead_letter"]["state"] == "clean"
        assert stores["files/logs"]["state"] == "clean"
        assert report["all_clean_by"] == marker["clean_by"] and report["warnings"] == []

        # a writer that ignores erasures puts back one of anon-1's old events and a Redis key
        write_bronze(
            side.spark,
            side.lake.bronze,
            [ev("e1", "item_view", None, at(1, 9), ["i1"], anonymous=side.anon)],
            first_offset=100,
        )
        client.set(keys.user_key(side.anon, "consent"), b"{}")
        assert cmd_verify(side.cfg, argparse.Namespace(json=False)) == 1
        captured = capsys.readouterr()
        assert "  delta/bronze" in captured.out and "redis/erased markers" in captured.out
        last = captured.err.strip().splitlines()[-1]
        assert last.startswith(
            "attune privacy verify: FAILED: bronze holds 1 row(s) of 1 erased request(s) "
            "(req-1); Redis holds 1 key(s) of 1 erased pseudonym(s) (request(s) req-1)."
        )
        assert "Run `attune privacy apply`" in last
        assert side.alice not in captured.out + captured.err  # no pseudonym in the output
        written = sorted(side.cfg.paths.resolve("reports/privacy").glob("verify-*.json"))
        assert json.loads(written[-1].read_text())["ok"] is False
    finally:
        client.delete(keys.user_key(side.alice, "recent"), keys.user_key(side.anon, "consent"))
        client.close()
